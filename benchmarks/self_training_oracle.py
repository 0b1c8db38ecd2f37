"""Self-training's ceiling (a script, not a test): how much *could* the unlabelled cases give?

``benchmarks/self_training.py`` compares a labelled-only model (25 % of the hippocampus training cases labelled) with
a self-trained student. This script adds the arm that bounds any semi-supervised method on that split, the
**oracle**: a model trained exactly as the student is (same training list, epochs, architecture, seed, validation
cases) but whose "unlabelled" cases carry their true labels instead of pseudo-labels. Self-training cannot beat
perfect pseudo-labels, so ``oracle − labelled-only`` is the most the protocol can show, and ``(self-trained −
labelled-only) / (oracle − labelled-only)`` is the share of it self-training recovered.

It also scores the shipped ``hippocampus-unet`` (all 166 non-evaluation cases labelled, its own training) on
the same 42 evaluation cases, and gives paired bootstrap 95 % intervals (10,000 resamples of the evaluation cases)
for every difference, so a delta can be told from case-sampling noise.

It reuses the self-training run's split and evaluation reports (run ``benchmarks/self_training.py`` first with the
same ``--work``, fraction, validation cases and seed), trains only the oracle (~30 min on one CPU thread at the
default 44 epochs x 158 cases) and evaluates it and the shipped model:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/self_training_oracle.py \\
        --work runs/self_training --json benchmarks/results/self_training_oracle.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from self_training import (  # noqa: E402
    CARD,
    cad,
    labelled_entry,
    paired_delta,
    protocol_arguments,
    split,
    summary,
    training_settings,
)

SHIPPED = CARD.parent


def write_oracle_dataset(data: Path, work: Path, ids: dict[str, list[str]]) -> Path:
    """The student's training list (labelled + "unlabelled" cases), every case with its true label."""
    entry = labelled_entry(data)
    path = work / "oracle_data" / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "name": "MSD Task04 hippocampus: the self-training student's cases with true labels (oracle)",
        "labels": json.loads((data / "dataset.json").read_text())["labels"], "modality": {"0": "MRI"},
        "licence": "CC-BY-SA 4.0", "training": [entry(c) for c in ids["labelled_train"] + ids["unlabelled"]],
        "validation": [entry(c) for c in ids["labelled_val"]],
    }, indent=1) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    protocol_arguments(parser, "self_training_oracle.json")
    args = parser.parse_args()
    args.data = args.data.resolve()  # the dataset.json files written under --work name absolute paths

    reports_needed = {name: args.work / f"evaluate_{name}.json" for name in ("labelled_only", "self_trained")}
    missing = [str(p) for p in reports_needed.values() if not p.exists()]
    if missing:
        raise SystemExit(f"run benchmarks/self_training.py with --work {args.work} first (missing {missing[0]})")
    started = time.time()
    ids = split(args.data, args.seed, args.labelled_fraction, args.val_cases)
    dataset = write_oracle_dataset(args.data, args.work, ids)
    config = json.loads(CARD.read_text())["training"]["config"]
    oracle = args.work / "oracle"
    cad("train", "--data", str(dataset), "-o", str(oracle), "--id", "hippocampus-oracle",
        *training_settings(config, args), "--epochs", str(args.student_epochs),
        *(["--resume"] if (oracle / "training").exists() else []))
    training_s = round(time.time() - started)
    evaluation = args.work / "evaluation" / "dataset.json"
    for name, package in (("oracle", oracle), ("shipped", SHIPPED)):
        cad("evaluate", "-m", str(package), "--data", str(evaluation), "--split", "all",
            "-o", str(args.work / f"evaluate_{name}.json"), "--device", args.device, "--force")
    reports = {name: json.loads((args.work / f"evaluate_{name}.json").read_text())
               for name in ("labelled_only", "self_trained", "oracle", "shipped")}
    for name, report in reports.items():
        if len(report["cases"]) != len(ids["evaluation"]):
            raise SystemExit(f"{name}: {len(report['cases'])} evaluation cases, expected {len(ids['evaluation'])}")
    base = reports["labelled_only"]
    gains = {name: paired_delta(reports[name], base) for name in ("self_trained", "oracle", "shipped")}
    headroom = gains["oracle"]["points"]
    recovered = round(gains["self_trained"]["points"] / headroom, 2) if headroom > 0 else None
    n_train = len(ids["labelled_train"]) + len(ids["unlabelled"])
    result = {
        "benchmark": "self-training's ceiling: labelled-only vs self-trained vs oracle (true labels), hippocampus",
        "protocol": "\n\n".join(__doc__.split("\n\n")[1:3]).strip(),
        "split": {k: len(v) for k, v in ids.items()} | {"labelled_fraction": args.labelled_fraction,
                                                        "seed": args.seed},
        "mean_dice": {name: summary(r)["mean_dice"] for name, r in reports.items()},
        "per_label": {name: {k: v["dice_mean"] for k, v in summary(r)["per_label"].items()}
                      for name, r in reports.items()},
        "gain_over_labelled_only": gains,
        "share_of_oracle_gain_recovered": recovered,
        "oracle_training": {"epochs": args.student_epochs, "n_train": n_train, "seconds": training_s},
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(["python", "benchmarks/self_training_oracle.py", *sys.argv[1:]]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for name in ("labelled_only", "self_trained", "oracle", "shipped"):
        gain = gains.get(name)
        extra = f"  {gain['points']:+.2f} points, 95 % CI {gain['ci95']}" if gain else ""
        print(f"{name:<14} mean Dice {result['mean_dice'][name]:.4f}{extra}")
    print(f"self-training recovered {result['share_of_oracle_gain_recovered']} of the oracle's gain; "
          f"results in {args.json}")


if __name__ == "__main__":
    main()
