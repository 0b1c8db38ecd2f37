"""What a training run leaves beside its package: the CSV log, the curves PNG, the total wall time.

Kept apart from :mod:`.segmentation` so the training loop stays readable, and so other trainers (self-training,
cascades) can write the same files.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def total_training_seconds(history: list[dict[str, Any]]) -> float:
    """Wall time over every run of a resumed training (each run's clock restarts at 0)."""
    total, previous = 0.0, 0.0
    for row in history:
        seconds = float(row.get("seconds", 0.0))
        total += seconds - previous if seconds >= previous else seconds
        previous = seconds
    return total


def write_log(output: Path, history: list[dict[str, Any]]) -> None:
    fields: list[str] = []
    for row in history:
        fields += [k for k in row if k not in fields]
    with open(output / "training_log.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def plot_curves(output: Path, history: list[dict[str, Any]], label_values: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r["epoch"] for r in history], [r["loss"] for r in history])
    ax_loss.set(title="training loss (Dice + CE)", xlabel="epoch")
    for value in label_values:
        points = [(r["epoch"], r[f"dice_{value}"]) for r in history if f"dice_{value}" in r]
        if points:
            ax_dice.plot(*zip(*points), marker="o", label=f"label {value}")
    ax_dice.set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
    ax_dice.legend()
    fig.tight_layout()
    fig.savefig(output / "training_curves.png", dpi=100)
    plt.close(fig)
