"""Progress for long jobs on stderr, in the ``NN%|`` form the Slicer module parses line by line.

Stages get fixed shares of the bar so the percentage moves smoothly and never goes backwards. On a terminal it is a
tqdm bar redrawn in place. Anywhere else (Slicer's pipe, a log file, CI) redraws would be a stream of ``\\r``
fragments, so it writes whole lines instead: one whenever the stage changes, and otherwise one per whole percent
gained but no more often than every ``mininterval`` seconds (so at most about a hundred lines per run). Each line
reads ``network:  45%| 00:12`` (stage, percent, elapsed), which ``CADExtensionLib.process.parseProgress`` reads.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class PlainLines:
    """The non-terminal stand-in for the tqdm bar: the methods StagedProgress calls (``set_description``,
    ``update``, ``close``, and ``emit`` after each move), whole lines only."""

    def __init__(self, stream: TextIO, enabled: bool = True, mininterval: float = 1.0) -> None:
        self.stream = stream
        self.enabled = enabled
        self.mininterval = mininterval
        self.started = time.monotonic()
        self.stage = ""
        self.value = 0.0
        self.printed: tuple[str, int] | None = None
        self.printed_at = float("-inf")

    def set_description(self, stage: str) -> None:
        self.stage = stage

    def update(self, amount: float) -> None:
        self.value = min(100.0, round(self.value + amount, 6))  # sums of stage shares must still reach 100

    def emit(self, force: bool = False) -> None:
        """One line for a new stage, or for a whole percent gained once ``mininterval`` has passed (or ``force``)."""
        now = time.monotonic()
        state = (self.stage, int(self.value))
        if not self.enabled or state == self.printed:
            return
        new_stage = self.printed is None or self.printed[0] != self.stage
        if not (force or new_stage) and now - self.printed_at < self.mininterval:
            return
        elapsed = int(now - self.started)
        prefix = f"{self.stage}: " if self.stage else ""
        self.stream.write(f"{prefix}{state[1]:3d}%| {elapsed // 60:02d}:{elapsed % 60:02d}\n")
        self.stream.flush()
        self.printed, self.printed_at = state, now

    def close(self) -> None:
        if self.value >= 100:
            self.emit(force=True)


class StagedProgress:
    """A 0–100 bar split into named stages with fixed weights; redrawn on a terminal, whole lines elsewhere."""

    def __init__(self, stages: dict[str, float], enabled: bool = True, stream: TextIO | None = None) -> None:
        total = sum(stages.values())
        self.starts: dict[str, float] = {}
        position = 0.0
        for name, weight in stages.items():
            self.starts[name] = position
            position += 100.0 * weight / total
        self.widths = {name: 100.0 * weight / total for name, weight in stages.items()}
        stream = stream if stream is not None else sys.stderr
        self.interactive = is_terminal(stream)
        self.bar: tqdm | PlainLines
        if self.interactive:
            self.bar = tqdm(total=100, file=stream, disable=not enabled, mininterval=0.2,
                            bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        else:
            self.bar = PlainLines(stream, enabled)
            self.bar.set_description(next(iter(stages)))
            self.bar.emit()  # the 0 % line: the job has started
        self.value = 0.0

    def update(self, stage: str, fraction: float = 0.0) -> None:
        """Move to ``fraction`` (0–1) of ``stage``."""
        self.bar.set_description(stage)
        target = self.starts[stage] + self.widths[stage] * max(0.0, min(1.0, fraction))
        if target > self.value:
            self.bar.update(target - self.value)
            self.value = target
        if isinstance(self.bar, PlainLines):
            self.bar.emit()  # after the move: a new stage is one line, already at its new percentage

    def close(self, completed: bool = True) -> None:
        """Finish the bar; at 100 % only when the job ``completed`` (a failed run must not look done to Slicer)."""
        if completed and self.value < 100:
            self.bar.update(100 - self.value)
            self.value = 100.0
        self.bar.close()
