"""One process or two under ``torchrun``: does data-parallel training reach the same Dice? (a script, not a test)

Protocol (MSD Task04 hippocampus, ``../shared/data/msd_task04_hippocampus``):

* evaluation: the 42 validation cases of the shipped ``hippocampus-unet`` (never trained on here), scored by
  ``cad evaluate --split all`` on their own grids;
* of the other 166 cases a seeded shuffle picks ``--train-cases`` (default 40) to train and 8 to validate (the
  dataset.json ``validation`` list: each run keeps its best epoch on them);
* hippocampus-unet's architecture and settings (card ``training.config``), except the batch: the SAME EFFECTIVE
  BATCH of 4 patches per optimiser step, as ``cad train --batch-size 4`` in one process and as
  ``torchrun --nproc_per_node 2 -m cadcore train --batch-size 2`` (2 patches per rank, gradients averaged by DDP);
  same epochs, learning rate and schedule, so both take the same number of steps;
* the noise: the one-process run again with another seed (``--seed 1``). Two processes cannot reproduce one
  process bit for bit (each rank draws its own augmentations and patches), so "the same Dice" means: the 1-vs-2
  process difference is no larger than the seed-to-seed difference of one process (floor 1 Dice point).

Cost: about 0.25 s per patch on this project's 2 CPU cores, so the default (40 cases x 30 epochs = 1,200 patches
per run, three runs, evaluation included) takes about 15-20 minutes on quiet cores:

    nice -n 5 .venv/bin/python benchmarks/ddp_equivalence.py --json benchmarks/results/ddp_equivalence.json

``--threads 1`` gives every process one thread (use it when another job shares the cores: two-thread OpenMP
processes on oversubscribed cores ran 5-10x slower here). Wall times are recorded but are not the point.

Smoke run: ``--train-cases 8 --epochs 2 --max-eval 4 --work runs/ddp_smoke --json runs/ddp_smoke.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "msd_task04_hippocampus"
CARD = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-unet" / "model.json"
LABELS = REPO / "benchmarks" / "configs" / "hippocampus_labels.json"
EFFECTIVE_BATCH = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], threads: int, log: Path) -> float:
    """Run one command with ``threads`` intra-op threads per process; return its wall time; stop on failure."""
    print("$ " + " ".join(command), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    clock = time.time()
    with open(log, "w") as handle:
        result = subprocess.run(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"failed (exit {result.returncode}): {' '.join(command)}; see {log}")
    return round(time.time() - clock, 1)


def write_datasets(data: Path, work: Path, n_train: int, n_val: int, seed: int, max_eval: int | None) -> dict:
    spec = json.loads((data / "dataset.json").read_text())
    ids = sorted(Path(e["image"]).name[: -len(".nii.gz")] for e in spec["training"])
    evaluation = sorted(json.loads(CARD.read_text())["training"]["split"]["val"])[:max_eval]
    pool = [i for i in ids if i not in set(evaluation)]
    random.Random(seed).shuffle(pool)
    train, val = sorted(pool[:n_train]), sorted(pool[n_train:n_train + n_val])

    def entry(case: str) -> dict[str, str]:
        return {"image": str(data / "imagesTr" / f"{case}.nii.gz"), "label": str(data / "labelsTr" / f"{case}.nii.gz")}

    work.mkdir(parents=True, exist_ok=True)
    (work / "train.json").write_text(json.dumps({
        "name": f"MSD Task04 hippocampus, {n_train} training + {n_val} validation cases", "labels": spec["labels"],
        "training": [entry(c) for c in train], "validation": [entry(c) for c in val]}, indent=1) + "\n")
    (work / "evaluation.json").write_text(json.dumps({
        "name": "hippocampus-unet's validation cases (evaluation only)", "labels": spec["labels"],
        "training": [entry(c) for c in evaluation]}, indent=1) + "\n")
    return {"train": train, "val": val, "evaluation": evaluation}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "ddp_equivalence")
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "ddp_equivalence.json")
    parser.add_argument("--train-cases", type=int, default=40)
    parser.add_argument("--val-cases", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--val-every", type=int, default=3)
    parser.add_argument("--max-eval", type=int, default=None, help="smoke runs: fewer evaluation cases")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per process (default: the cores shared among the processes)")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data}: hippocampus data not found (../shared/data)")

    started, load_start = time.time(), round(os.getloadavg()[0], 1)
    ids = write_datasets(args.data, args.work, args.train_cases, args.val_cases, 0, args.max_eval)
    config = json.loads(CARD.read_text())["training"]["config"]
    common = ["train", "--data", str(args.work / "train.json"), "--epochs", str(args.epochs),
              "--patch-size", ",".join(map(str, config["patch_size"])),
              "--filters", ",".join(map(str, config["filters"])), "--lr", str(config["learning_rate"]),
              "--mirror-axes", ",".join(map(str, config["mirror_axes"])), "--modality", config["modality"],
              "--val-every", str(args.val_every), "--device", "cpu", "--labels", str(LABELS), "--force"]
    cad = [sys.executable, "-m", "cadcore"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
                "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "cadcore"]
    runs = {  # name: (launcher, processes, per-process batch, seed)
        "one_process": (cad, 1, EFFECTIVE_BATCH, 0),
        "two_processes": (torchrun, 2, EFFECTIVE_BATCH // 2, 0),
        "one_process_seed1": (cad, 1, EFFECTIVE_BATCH, 1),
    }
    cores = os.cpu_count() or 2
    results: dict[str, Any] = {}
    for name, (launcher, processes, batch, seed) in runs.items():
        package = args.work / name
        train_s = run([*launcher, *common, "-o", str(package), "--id", f"hippocampus-{name}",
                       "--batch-size", str(batch), "--seed", str(seed)],
                      args.threads or max(1, cores // processes), args.work / f"{name}.log")
        report = args.work / f"evaluate_{name}.json"
        run([*cad, "evaluate", "-m", str(package), "--data", str(args.work / "evaluation.json"), "--split", "all",
             "-o", str(report), "--device", "cpu", "--force"], args.threads or cores,
            args.work / f"evaluate_{name}.log")
        summary = json.loads((package / "training_summary.json").read_text())
        evaluation = json.loads(report.read_text())
        results[name] = {"processes": processes, "batch_per_process": batch, "seed": seed, "train_s": train_s,
                         "validation_dice_best": round(summary["best_mean_dice"], 4),
                         "best_epoch": summary["best_epoch"], "world_size": summary.get("world_size", 1),
                         "evaluation_mean_dice": round(evaluation["mean_dice"], 4),
                         "evaluation_per_label": {v["name"]: round(v["dice_mean"], 4)
                                                  for v in evaluation["per_label"].values()}}
    one, two, other_seed = (results[k]["evaluation_mean_dice"]
                            for k in ("one_process", "two_processes", "one_process_seed1"))
    difference, noise = round(100 * (two - one), 2), round(100 * abs(other_seed - one), 2)
    result = {
        "benchmark": "DDP: 1 process vs torchrun 2 processes at the same effective batch, MSD Task04 hippocampus",
        "protocol": "\n\n".join(__doc__.split("\n\n")[1:3]).strip(),
        "split": {k: len(v) for k, v in ids.items()}, "ids": ids,
        "settings": {"epochs": args.epochs, "val_every": args.val_every, "effective_batch": EFFECTIVE_BATCH,
                     **{k: config[k] for k in ("patch_size", "filters", "learning_rate")}},
        "runs": results,
        "two_minus_one_dice_points": difference, "seed_noise_dice_points": noise,
        "within_noise": abs(difference) <= max(noise, 1.0),
        "hardware": f"{platform.processor() or platform.machine()}, {cores} CPUs (gloo, CPU)",
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
        "total_s": round(time.time() - started),
        "command": " ".join(["python", "benchmarks/ddp_equivalence.py", *sys.argv[1:]]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in results.items():
        print(f"{name:<18} validation {row['validation_dice_best']:.4f}  evaluation {row['evaluation_mean_dice']:.4f}"
              f"  ({row['train_s']:.0f} s)")
    print(f"2 - 1 processes: {difference:+.2f} Dice points; seed noise {noise:.2f}; within noise: "
          f"{result['within_noise']}; results in {args.json}")


if __name__ == "__main__":
    main()
