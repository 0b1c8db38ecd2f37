"""The compute device and the CPU thread count, for every command that runs a network."""

from __future__ import annotations

import os

import torch

from cadcore.errors import CadError


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` prefers CUDA, then Apple MPS, then CPU; an explicit device that is absent is a usage error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CadError("--device cuda requested but no CUDA GPU is available")
    if requested == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CadError("--device mps requested but Apple MPS is not available")
    if requested not in ("cpu", "cuda", "mps"):
        raise CadError(f"unknown device {requested!r} (use auto, cpu, cuda or mps)")
    return torch.device(requested)


def configure_cpu_threads() -> None:
    """Leave one core free for the UI (Slicer) when there are several, unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1) if (os.cpu_count() or 1) > 2 else (os.cpu_count() or 1))
