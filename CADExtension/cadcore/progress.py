"""Progress for long jobs: one tqdm bar on stderr whose ``NN%|`` the Slicer module parses line by line.

Stages get fixed shares of the bar so the percentage moves smoothly and never goes backwards.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class StagedProgress:
    """A 0–100 bar split into named stages with fixed weights."""

    def __init__(self, stages: dict[str, float], enabled: bool = True) -> None:
        total = sum(stages.values())
        self.starts: dict[str, float] = {}
        position = 0.0
        for name, weight in stages.items():
            self.starts[name] = position
            position += 100.0 * weight / total
        self.widths = {name: 100.0 * weight / total for name, weight in stages.items()}
        self.bar = tqdm(total=100, file=sys.stderr, disable=not enabled, mininterval=0.2,
                        bar_format="{l_bar}{bar}| {elapsed}<{remaining}")
        self.value = 0.0

    def update(self, stage: str, fraction: float = 0.0) -> None:
        """Move to ``fraction`` (0–1) of ``stage``."""
        self.bar.set_description(stage)
        target = self.starts[stage] + self.widths[stage] * max(0.0, min(1.0, fraction))
        if target > self.value:
            self.bar.update(target - self.value)
            self.value = target

    def close(self) -> None:
        if self.value < 100:
            self.bar.update(100 - self.value)
        self.bar.close()
