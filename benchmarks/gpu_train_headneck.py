"""Train and score ``headneck-oar-ct`` (seven OpenKBP organs at risk on CT) end to end: convert, train, evaluate.

A script for a GPU machine (``--smoke`` runs the same path on a CPU in about a minute, at toy settings). Each stage
is skipped when its output is already there, and training resumes from its checkpoint, so the script can be run
again and again inside short device windows until it has finished (``cad train`` turns the SIGTERM sent at the end
of ``--train-minutes`` into a saved checkpoint and an exported best-so-far model)::

    PYTHONPATH=CADExtension python benchmarks/gpu_train_headneck.py ../shared/data/openkbp_headneck_ct \\
        --work /tmp/headneck --results benchmarks/results/headneck-oar-ct --train-minutes 8

1. ``tools/openkbp_dataset.py``: a dataset.json with each case's ``labels_present`` (absent organs are masked out of
   the loss: docs/partial_labels.md), split by patient (seed 0: 142 / 20 / 41 patients), and the SNOMED CT labels.
2. ``cad train --modality CT``: Hounsfield window -250..1250 clipped and scaled to [0, 1] (a fixed linear map: the
   same role as nnU-Net's clip to the foreground's 0.5-99.5 percentiles + z-score by the data set's global mean and
   standard deviation, which for CT is also one affine map for every case; the network's first normalisation layer
   absorbs the difference), the data's median spacing (about 3.9 x 3.9 x 2.5 mm), a 5-level DynUNet (32..320
   channels), no mirroring (a left-right flip would swap the parotids; ``--mirror-axes none``).
3. ``cad evaluate`` on the test patients (``test.json``, never trained or validated on): Dice and HD95 per organ
   over the cases where that organ was contoured, with the number of cases each was scored on.
4. ``RESULTS/summary.json`` and ``RESULTS/summary.md``: per-organ table, mean Dice over the organs, training time,
   the commands run, the split.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FULL = ["--modality", "CT", "--ct-window=-250,1250", "--patch-size", "128,128,96", "--filters", "32,64,128,256,320",
        "--batch-size", "2", "--epochs", "300", "--val-every", "10", "--mirror-axes", "none", "--lr", "0.002",
        "--seed", "0", "--id", "headneck-oar-ct"]
SMOKE = ["--modality", "CT", "--ct-window=-250,1250", "--spacing", "8,8,8", "--patch-size", "32,32,32",
         "--filters", "4,8,16", "--batch-size", "2", "--epochs", "2", "--val-every", "1", "--mirror-axes", "none",
         "--seed", "0", "--id", "headneck-oar-ct-smoke"]
DESCRIPTION = ("Seven head-and-neck organs at risk on CT (OpenKBP): brainstem, spinal cord, parotid glands, "
               "esophagus, larynx, mandible; trained with absent organs masked out of the loss")


def cad(*args: str, timeout_minutes: float | None = None) -> tuple[int, float]:
    """Run ``python -m cadcore ARGS`` with this checkout's engine; after ``timeout_minutes`` send SIGTERM (cad saves
    a checkpoint and still exports the best model). Returns (exit code, seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "CADExtension"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "cadcore", *args]
    print("$", " ".join(command), flush=True)
    started = time.time()
    process = subprocess.Popen(command, env=env)
    try:
        code = process.wait(timeout=None if timeout_minutes is None else timeout_minutes * 60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        code = process.wait()
        print(f"training stopped after {timeout_minutes} min; run again to resume", flush=True)
    return code, time.time() - started


def convert(source: Path, data: Path, smoke: bool) -> dict[str, Any]:
    if (data / "dataset.json").is_file():
        return json.loads((data / "split.json").read_text())
    sys.path.insert(0, str(REPO / "tools"))
    from openkbp_dataset import convert as convert_openkbp

    return convert_openkbp(source, data, seed=0, limit=4 if smoke else None)


def finished(model: Path) -> dict[str, Any] | None:
    """The training summary when every planned epoch ran (None: not started, or stopped early and resumable)."""
    path = model / "training_summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    return summary if summary["epoch"] >= summary["config"]["epochs"] else None


def table(report: dict[str, Any]) -> str:
    rows = ["| organ | cases scored | Dice mean | Dice median | HD95 mean (mm) |", "|---|---|---|---|---|"]
    for value, row in report["per_label"].items():
        shown = ["n/a" if row[key] is None else f"{row[key]:.3f}" for key in ("dice_mean", "dice_median", "hd95_mean")]
        rows.append(f"| {value} {row['name']} | {row.get('n_cases', report['n_cases'])} | {' | '.join(shown)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="../shared/data/openkbp_headneck_ct")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder: converted data set and the model")
    parser.add_argument("--results", type=Path, required=True, help="folder for summary.json/.md and the report")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--train-minutes", type=float, default=None, help="stop training (resumably) after this")
    parser.add_argument("--epochs", type=int, default=None, help="override the planned epochs (300; smoke 2)")
    parser.add_argument("--smoke", action="store_true", help="4 patients, 8 mm, 2 epochs: proves the path on a CPU")
    args = parser.parse_args(argv)
    data, model = args.work / "data", args.work / ("model-smoke" if args.smoke else "headneck-oar-ct")
    args.results.mkdir(parents=True, exist_ok=True)
    split = convert(args.source, data, args.smoke)
    settings = [*(SMOKE if args.smoke else FULL), *(["--epochs", str(args.epochs)] if args.epochs else [])]
    train_args = ["train", "--data", str(data / "dataset.json"), "-o", str(model), "--labels",
                  str(data / "labels.json"), "--device", args.device, "--description", DESCRIPTION, *settings]
    summary = finished(model)
    seconds = 0.0
    if summary is None:
        resume = ["--resume"] if (model / "training" / "last.pt").is_file() else []
        code, seconds = cad(*train_args, *resume, timeout_minutes=args.train_minutes)
        summary = finished(model)
        if summary is None:
            print(f"cad train exit {code}: training not finished (resume by running this again)", file=sys.stderr)
            return 0 if code in (0, 130, -signal.SIGTERM) or (model / "training" / "last.pt").is_file() else 1
    report_path = args.results / "test_report.json"
    eval_args = ["evaluate", "-m", str(model), "--data", str(data / "test.json"), "--split", "all", "-o",
                 str(report_path), "--device", args.device, "--force"]
    code, eval_seconds = cad(*eval_args)
    if code != 0:
        return code
    report = json.loads(report_path.read_text())
    means = [row["dice_mean"] for row in report["per_label"].values() if row["dice_mean"] is not None]
    result = {
        "model": report["model"], "smoke": args.smoke, "n_test_cases": report["n_cases"],
        "mean_dice_over_organs": report["mean_dice"], "organs_scored": len(means),
        "per_organ": report["per_label"], "epochs": summary["epoch"], "best_epoch": summary["best_epoch"],
        "best_validation_dice_working_space": summary["best_mean_dice"],
        "training_seconds_this_run": round(seconds), "evaluation_seconds": round(eval_seconds),
        "split": {"patients": {k: len(v) for k, v in split["patients"].items()}, "organ_cases": split["organ_cases"]},
        "commands": {"train": "python -m cadcore " + " ".join(train_args),
                     "evaluate": "python -m cadcore " + " ".join(eval_args)},
    }
    (args.results / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    text = (f"# {report['model']} on {report['n_cases']} unseen test patients\n\n{table(report)}\n\n"
            f"Mean Dice over the organs scored: {report['mean_dice']}; epochs {summary['epoch']} "
            f"(best {summary['best_epoch']}).\n")
    (args.results / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
