"""Self-training benchmark (a script, not a test): does ``cad train --unlabelled`` beat labelled-only training when
only 25 % of the hippocampus training cases are labelled?

Protocol (MSD Task04 hippocampus, ``../shared/data/msd_task04_hippocampus``):

* evaluation set: the 42 validation cases of the shipped ``hippocampus-unet`` card (``training.split.val``); no model
  here ever trains or validates on them;
* of the other 166 cases, 25 % (seeded shuffle: 42) are labelled; ``--val-cases`` of them (default 8) are a fixed
  validation set (the dataset.json ``validation`` list: teacher and students select their best epoch on it), the
  rest train. The remaining 124 are passed as unlabelled, images only, in a list file;
* architecture and training settings are hippocampus-unet's (card ``training.config``): DynUNet 16-32-64-128, patch
  40x56x40, batch 2, AdamW 2e-3, cosine, mirror axis 0, seed 0, working spacing 1 mm;
* one ``cad train --unlabelled`` run. Its round-0 teacher *is* the labelled-only model (plain ``cad train`` on the
  labelled cases, same seed, epochs and architecture), so it is not trained twice (``--baseline separate`` does);
* both models are scored by ``cad evaluate --split all`` on a dataset.json of the 42 evaluation cases (Dice and HD95
  on the input grid, post-processing as in the card); the delta is in Dice points (100 x mean-Dice difference).

Equal compute per model: one epoch draws one patch per training case, so a student epoch (34 labelled + 124
pseudo-labelled cases) is 4.6 times a teacher epoch. The defaults (teacher 200 epochs, student 44) give both about
6,900 patches (3,450 optimiser steps), so a gain cannot come from the student simply training longer. The smoke
run below measured 0.23 s per patch (teacher epoch 7.7 s for 34 patches, student 0.22 s per patch, validation of
8 cases included) on this project's 2 CPU cores at load ~2.5; at that speed the full run takes about 50 minutes
(training ~47, pseudo-labelling and evaluation ~3), about 60 with other work on the machine; it scales with the
load (a teacher epoch took 154 s at load 8):

    nice -n 10 .venv/bin/python benchmarks/self_training.py --epochs 200 --student-epochs 44 --rounds 1 \\
        --work runs/self_training --json benchmarks/results/self_training.json

Smoke run (a few minutes; also prints the seconds per epoch and a projection of the full run):

    .venv/bin/python benchmarks/self_training.py --epochs 1 --student-epochs 1 --max-unlabelled 6 --max-eval 4 \\
        --work runs/self_training_smoke --json runs/self_training_smoke.json

Re-running with the same ``--work`` resumes (``cad train --resume``); evaluations are redone.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EPOCHS, STUDENT_EPOCHS = 200, 44  # equal patches per model (200 x 34 ~ 44 x 158), ~50-60 min on 2 CPU cores
DEFAULT_DATA = REPO.parent / "shared" / "data" / "msd_task04_hippocampus"
CARD = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-unet" / "model.json"
LABELS = REPO / "benchmarks" / "configs" / "hippocampus_labels.json"


def cad(*args: str) -> None:
    """Run the ``cad`` CLI of this checkout (progress bars go to the terminal); stop on failure."""
    command = [sys.executable, "-m", "cadcore", *args]
    print("$ cad " + " ".join(args), flush=True)
    if subprocess.run(command, cwd=REPO).returncode:
        raise SystemExit(f"failed: cad {' '.join(args)}")


def split(data: Path, seed: int, fraction: float, n_val: int) -> dict[str, list[str]]:
    """Evaluation = hippocampus-unet's validation ids; labelled (train + val) and unlabelled from the rest."""
    spec = json.loads((data / "dataset.json").read_text())
    ids = sorted(Path(e["image"]).name[: -len(".nii.gz")] for e in spec["training"])
    evaluation = sorted(json.loads(CARD.read_text())["training"]["split"]["val"])
    pool = [i for i in ids if i not in set(evaluation)]
    random.Random(seed).shuffle(pool)
    n_labelled = round(len(pool) * fraction)
    labelled, unlabelled = pool[:n_labelled], sorted(pool[n_labelled:])
    return {"evaluation": evaluation, "labelled_val": sorted(labelled[:n_val]),
            "labelled_train": sorted(labelled[n_val:]), "unlabelled": unlabelled}


def labelled_entry(data: Path):
    """case id -> its dataset.json entry (image and true label, absolute paths)."""
    return lambda case: {"image": str(data / "imagesTr" / f"{case}.nii.gz"),
                         "label": str(data / "labelsTr" / f"{case}.nii.gz")}


def protocol_arguments(parser: argparse.ArgumentParser, json_default: str) -> None:
    """The flags that fix the split and the training settings; the oracle must be given the same ones."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "self_training")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / json_default)
    parser.add_argument("--student-epochs", type=int, default=STUDENT_EPOCHS, help="each student (same patches)")
    parser.add_argument("--labelled-fraction", type=float, default=0.25)
    parser.add_argument("--val-cases", type=int, default=8, help="labelled cases kept for validation")
    parser.add_argument("--val-every", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="the split's shuffle and the training seed")
    parser.add_argument("--device", default="auto")


def write_inputs(data: Path, work: Path, ids: dict[str, list[str]]) -> dict[str, Path]:
    """The labelled dataset.json (explicit validation), the unlabelled list file, the evaluation dataset.json."""
    names = json.loads((data / "dataset.json").read_text())["labels"]
    entry = labelled_entry(data)
    work.mkdir(parents=True, exist_ok=True)
    paths = {"labelled": work / "labelled" / "dataset.json", "evaluation": work / "evaluation" / "dataset.json",
             "unlabelled": work / "unlabelled.txt"}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    paths["labelled"].write_text(json.dumps({
        "name": f"MSD Task04 hippocampus, {len(ids['labelled_train']) + len(ids['labelled_val'])} labelled cases",
        "labels": names, "modality": {"0": "MRI"}, "licence": "CC-BY-SA 4.0",
        "training": [entry(c) for c in ids["labelled_train"]], "validation": [entry(c) for c in ids["labelled_val"]],
    }, indent=1) + "\n")
    paths["evaluation"].write_text(json.dumps({
        "name": "MSD Task04 hippocampus, hippocampus-unet's 42 validation cases (evaluation only)", "labels": names,
        "training": [entry(c) for c in ids["evaluation"]]}, indent=1) + "\n")
    paths["unlabelled"].write_text("".join(f"{data / 'imagesTr' / c}.nii.gz\n" for c in ids["unlabelled"]))
    return paths


def training_settings(config: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """``cad train`` flags every model of this benchmark shares: hippocampus-unet's architecture and optimiser."""
    return ["--seed", str(args.seed), "--patch-size", ",".join(map(str, config["patch_size"])),
            "--filters", ",".join(map(str, config["filters"])), "--batch-size", str(config["batch_size"]),
            "--lr", str(config["learning_rate"]), "--mirror-axes", ",".join(map(str, config["mirror_axes"])),
            "--modality", config["modality"], "--val-every", str(args.val_every), "--device", args.device,
            "--labels", str(LABELS)]


def seconds_per_epoch(package: Path) -> dict[str, float]:
    """From a package's training_log.csv: seconds per epoch (last epoch of the last run, validation included)."""
    rows = list(csv.DictReader(open(package / "training_log.csv")))
    card = json.loads((package / "model.json").read_text())
    seconds = [float(r["seconds"]) for r in rows]
    per_epoch = seconds[0] if len(seconds) == 1 else max(seconds[-1] - seconds[-2], 0.0) or seconds[-1] / len(rows)
    return {"seconds_per_epoch": round(per_epoch, 1), "n_train": card["training"]["n_train"],
            "seconds_per_patch": round(per_epoch / max(1, card["training"]["n_train"]), 3)}


def summary(report: dict[str, Any]) -> dict[str, Any]:
    return {"mean_dice": report["mean_dice"], "n_cases": report["n_cases"],
            "per_label": {k: {"name": v["name"], "dice_mean": v["dice_mean"], "hd95_mean": v.get("hd95_mean")}
                          for k, v in report["per_label"].items()}}


def per_case_dice(report: dict[str, Any]) -> dict[str, float]:
    """Mean Dice over labels, per evaluation case."""
    return {c["id"]: float(np.mean([v for v in c["dice"].values()])) for c in report["cases"]}


def paired_delta(better: dict[str, Any], base: dict[str, Any], resamples: int = 10_000) -> dict[str, float]:
    """Mean Dice difference in points with a paired bootstrap 95 % interval over the evaluation cases."""
    a, b = per_case_dice(better), per_case_dice(base)
    if a.keys() != b.keys():
        raise SystemExit("the two reports score different evaluation cases")
    diff = 100 * np.array([a[k] - b[k] for k in sorted(a)])
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), (resamples, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"points": round(float(diff.mean()), 2), "ci95": [round(float(low), 2), round(float(high), 2)],
            "cases_better": int((diff > 0).sum()), "cases_worse": int((diff < 0).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    protocol_arguments(parser, "self_training.json")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="labelled-only model = teacher")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--student-init", choices=["scratch", "teacher"], default="scratch")
    parser.add_argument("--student-augmentation", type=float, default=1.0)
    parser.add_argument("--baseline", choices=["teacher", "separate"], default="teacher",
                        help="labelled-only model: the round-0 teacher, or a separate identical cad train run")
    parser.add_argument("--max-unlabelled", type=int, default=None, help="smoke runs: fewer unlabelled volumes")
    parser.add_argument("--max-eval", type=int, default=None, help="smoke runs: fewer evaluation cases")
    args = parser.parse_args()
    args.data = args.data.resolve()  # the dataset.json files written under --work name absolute paths

    started, load_start = time.time(), round(os.getloadavg()[0], 1)
    ids = split(args.data, args.seed, args.labelled_fraction, args.val_cases)
    ids["unlabelled"] = ids["unlabelled"][: args.max_unlabelled]
    ids["evaluation"] = ids["evaluation"][: args.max_eval]
    paths = write_inputs(args.data, args.work, ids)
    config = json.loads(CARD.read_text())["training"]["config"]
    common = [*training_settings(config, args), "--epochs", str(args.epochs)]
    self_trained = args.work / "self-trained"
    resume = ["--resume"] if (self_trained / "self_training").exists() else []
    timings: dict[str, float] = {}
    clock = time.time()
    cad("train", "--data", str(paths["labelled"]), "-o", str(self_trained), "--id", "hippocampus-self-trained",
        "--unlabelled", str(paths["unlabelled"]), "--rounds", str(args.rounds), "--confidence", str(args.confidence),
        "--student-epochs", str(args.student_epochs), "--student-init", args.student_init,
        "--student-augmentation", str(args.student_augmentation), *common, *resume)
    timings["self_training_s"] = round(time.time() - clock)
    baseline = self_trained / "self_training" / "round_0"
    if args.baseline == "separate":
        baseline = args.work / "labelled-only"
        clock = time.time()
        cad("train", "--data", str(paths["labelled"]), "-o", str(baseline), "--id", "hippocampus-labelled-only",
            *common, *(["--resume"] if (baseline / "training").exists() else []))
        timings["labelled_only_s"] = round(time.time() - clock)
    reports, evaluations = {}, {}
    for name, package in (("labelled_only", baseline), ("self_trained", self_trained)):
        clock = time.time()
        report_path = args.work / f"evaluate_{name}.json"
        cad("evaluate", "-m", str(package), "--data", str(paths["evaluation"]), "--split", "all",
            "-o", str(report_path), "--device", args.device, "--force")
        timings[f"evaluate_{name}_s"] = round(time.time() - clock)
        evaluations[name] = json.loads(report_path.read_text())
        reports[name] = summary(evaluations[name])
    card = json.loads((self_trained / "model.json").read_text())
    rounds = card["training"]["self_training"]["per_round"]
    speed = {"teacher": seconds_per_epoch(self_trained / "self_training" / "round_0"),
             "student": seconds_per_epoch(self_trained / "self_training" / f"round_{args.rounds}")}
    full = {k: len(v) for k, v in split(args.data, args.seed, 0.25, 8).items()}
    projected = {  # training seconds of the default run, at this run's seconds per patch (validation included)
        "teacher_s": round(EPOCHS * speed["teacher"]["seconds_per_patch"] * full["labelled_train"]),
        "student_s": round(STUDENT_EPOCHS * speed["student"]["seconds_per_patch"]
                           * (full["labelled_train"] + full["unlabelled"])),
    }
    delta = round(100 * (reports["self_trained"]["mean_dice"] - reports["labelled_only"]["mean_dice"]), 2)
    result = {
        "benchmark": "self-training (cad train --unlabelled) vs labelled-only, MSD Task04 hippocampus",
        "protocol": "\n\n".join(__doc__.split("\n\n")[1:4]).strip(),
        "split": {"n_evaluation": len(ids["evaluation"]), "n_labelled_train": len(ids["labelled_train"]),
                  "n_labelled_val": len(ids["labelled_val"]), "n_unlabelled": len(ids["unlabelled"]),
                  "seed": args.seed, "labelled_fraction": args.labelled_fraction, "ids": ids},
        "settings": {k: getattr(args, k) for k in ("epochs", "student_epochs", "student_init", "student_augmentation",
                                                    "rounds", "confidence", "val_every", "baseline",
                                                    "max_unlabelled", "max_eval")},
        "architecture": {k: config[k] for k in ("patch_size", "filters", "batch_size", "learning_rate",
                                                "mirror_axes")},
        "labelled_only": reports["labelled_only"], "self_trained": reports["self_trained"],
        "delta_dice_points": delta,
        "delta_paired_bootstrap": paired_delta(evaluations["self_trained"], evaluations["labelled_only"]),
        "per_label_delta_dice_points": {k: round(100 * (v["dice_mean"] -
                                                        reports["labelled_only"]["per_label"][k]["dice_mean"]), 2)
                                        for k, v in reports["self_trained"]["per_label"].items()},
        "rounds": rounds,
        "speed": speed, "timings": {**timings, "total_s": round(time.time() - started)},
        "projected_default_run_training_s": projected,
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
        "command": " ".join(["python", "benchmarks/self_training.py", *sys.argv[1:]]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'model':<16} {'mean Dice':>9} " + " ".join(f"{v['name'][:22]:>22}"
                                                     for v in reports["labelled_only"]["per_label"].values()))
    for name in ("labelled_only", "self_trained"):
        row = reports[name]
        print(f"{name:<16} {row['mean_dice']:>9.4f} " + " ".join(f"{v['dice_mean']:>22.4f}"
                                                                for v in row["per_label"].values()))
    print(f"delta: {delta:+.2f} Dice points on {len(ids['evaluation'])} evaluation cases "
          f"(goal: at least +2); validation Dice per round: {[r['validation_dice'] for r in rounds]}")
    print(f"seconds per epoch: teacher {speed['teacher']}, student {speed['student']}")
    print(f"training time of the default run ({EPOCHS} + {STUDENT_EPOCHS} epochs) at this speed: {projected}; "
          f"results in {args.json}")


if __name__ == "__main__":
    main()
