"""Transfer learning on brain tumours: Dice from scratch vs starting from ``hippocampus-unet`` (``cad train --init``).

Both runs train the single-stage full-resolution network of ``benchmarks/tumour_cascade.py`` (DynUNet 16-32-64-128,
0.86 x 0.86 x 6.5 mm, patch 64 x 64 x 8; the filters of ``hippocampus-unet``, so every layer but the output one and
the upsampling kernels loads, see below) on the same patients, for the same epochs, with the same seed; only the
starting weights differ (with
``--init`` the pretrained layers learn at ``--pretrained-lr-factor`` times the learning rate, the re-initialised output
layer at the full rate; the encoder can be frozen for ``--freeze-encoder-epochs``). Data and split:
``benchmarks/tumour_data.py``; both are scored with ``cad evaluate --split all`` on the native scans of PGBM-001 and
PGBM-003 (never trained on). The validation Dice curve of each run (from its ``training_log.csv``) is reported too:
transfer usually shows first in how fast the curve rises.

    nice -n 5 .venv/bin/python benchmarks/tumour_transfer.py --epochs 400 --val-every 40 --threads 1 \\
        --json benchmarks/results/tumour_transfer.json

Defaults are these settings: each training ~30 min on one of the project's 2 CPU cores (~3.5 s per epoch, ~40 s per
validation over 4 whole volumes, while another one-thread job used the other core), evaluation about a minute per
model. The network's strides follow the 6.5 mm slices (``strides_for``), which differ from hippocampus-unet's, so
with ``--init`` its upsampling kernels start fresh too (``init_report.json`` lists them).

The scratch run is the single-stage package of ``tumour_cascade.py`` when epochs, patch, seed agree (it is reused
from ``runs/tumour/``, not trained twice).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tumour_data import PATCH, REPO, WORK, build, evaluate, single_stage  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--val-every", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patch", default=PATCH)
    parser.add_argument("--init", default="hippocampus-unet", help="the package to start from")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--val-patients", type=int, default=2, help="patients for checkpoint choice")
    parser.add_argument("--max-eval-cases", type=int, default=None, help="only the first N evaluation scans (smoke)")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "tumour_transfer.json")
    return parser.parse_args()


def validation_curve(folder: Path) -> list[dict[str, float]]:
    with open(folder / "training_log.csv", newline="") as handle:
        return [{"epoch": int(row["epoch"]), "dice": round(float(row["dice_mean"]), 4)}
                for row in csv.DictReader(handle) if row.get("dice_mean")]


def main() -> None:
    args = parse()
    data = build(args.work, args.seed, args.val_patients, args.max_eval_cases)
    folders = {run: single_stage(args.work, data.train_json, args.patch, args.epochs, args.seed, args.val_every,
                                 args.threads, init)
               for run, init in (("scratch", None), ("init", args.init))}
    reports_dir = args.work / "eval"
    reports_dir.mkdir(parents=True, exist_ok=True)
    reports = {run: evaluate(folder, data.eval_json, reports_dir / f"{folder.name}.json", args.threads)
               for run, folder in folders.items()}
    cards = {run: json.loads((folder / "model.json").read_text()) for run, folder in folders.items()}
    init_report = json.loads((folders["init"] / "init_report.json").read_text())
    cases = [{"case": c["id"], "dice_scratch": c["dice"]["1"],
              "dice_init": next(d["dice"]["1"] for d in reports["init"]["cases"] if d["id"] == c["id"]),
              "hd95_scratch": c["hd95"]["1"],
              "hd95_init": next(d["hd95"]["1"] for d in reports["init"]["cases"] if d["id"] == c["id"])}
             for c in reports["scratch"]["cases"]]
    result: dict[str, Any] = {
        "benchmark": "tumour_transfer", "command": " ".join(sys.argv),
        "machine": {"platform": platform.platform(), "threads": args.threads},
        "split": data.split,
        "settings": {"epochs": args.epochs, "seed": args.seed, "patch": args.patch, "val_every": args.val_every,
                     "init": args.init, "init_config": cards["init"]["training"].get("init")},
        "init_report": {k: init_report[k] for k in ("parent", "parent_version", "loaded", "reinitialised")},
        "mean_dice": {run: reports[run]["mean_dice"] for run in reports},
        "dice_gain": round(reports["init"]["mean_dice"] - reports["scratch"]["mean_dice"], 5),
        "mean_hd95_mm": {run: reports[run]["per_label"]["1"]["hd95_mean"] for run in reports},
        "best_epoch": {run: card["training"]["best_epoch"] for run, card in cards.items()},
        "validation_curve": {run: validation_curve(folder) for run, folder in folders.items()},
        "training_seconds": {run: card["training"].get("seconds") for run, card in cards.items()},
        "cases": cases,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'case':<26} {'Dice scratch':>12} {'Dice init':>10}")
    for row in cases:
        print(f"{row['case']:<26} {row['dice_scratch']:>12.4f} {row['dice_init']:>10.4f}")
    print(f"{'mean':<26} {result['mean_dice']['scratch']:>12.4f} {result['mean_dice']['init']:>10.4f}"
          f"   (gain {result['dice_gain']:+.4f})")
    for run, curve in result["validation_curve"].items():
        print(f"validation Dice ({run}): " + ", ".join(f"e{p['epoch']} {p['dice']:.3f}" for p in curve))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
