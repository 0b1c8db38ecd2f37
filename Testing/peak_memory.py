"""This process's peak resident memory, for tests that run the engine in a child process and bound its memory."""

from __future__ import annotations

import resource
from pathlib import Path

TESTING = str(Path(__file__).resolve().parent)  # put on a child's PYTHONPATH so its script can import this module


def peak_kib() -> int:
    """VmHWM: this process image's own peak. ``ru_maxrss`` also counts the forking parent's (pytest's) memory,
    which would hide the child's growth behind it; it is the fallback where /proc is absent."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
