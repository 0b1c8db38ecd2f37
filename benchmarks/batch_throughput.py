"""Cohort throughput: ``cad batch`` against a loop of ``cad segment`` processes, same cases, same outputs.

    .venv/bin/python benchmarks/batch_throughput.py --json runs/bench/batch_throughput.json [--cases 40]
        [--model hippocampus-unet] [--data ../shared/data/msd_task04_hippocampus/imagesTr] [--no-workers-2]

The first ``--cases`` images of the MSD hippocampus set (sorted by name) are copied into ``runs/bench/batch/inputs``
(copied, not linked: ``cad batch`` never follows links). Three timed runs, each a fresh process tree, wall clock:

* ``loop``: one ``cad segment CASE -m MODEL -o loop/<id>.nii.gz`` process per case (what a shell loop does: every
  case pays the interpreter, torch's import and the model's loading);
* ``batch_1``: one ``cad batch inputs -m MODEL -o batch_1`` (model loaded once, the next case read during the
  network);
* ``batch_2``: the same with ``--workers 2`` (two processes, each with ``cpu_count // 2`` torch threads).

Every batch output must equal the loop's output voxel for voxel (the script fails otherwise); the JSON holds the
seconds, cases per second, the speed-ups and the machine. Goal (issue 20): ``batch_1`` at least 3x the loop on a
2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "msd_task04_hippocampus" / "imagesTr"
WORK = REPO / "runs" / "bench" / "batch"


def cad(*args: str) -> list[str]:
    return [sys.executable, "-m", "cadcore", *args]


def environment() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO / "CADExtension"), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def timed(commands: list[list[str]]) -> float:
    """Run the commands one after another (each must exit 0: every case of the cohort must succeed); wall seconds."""
    started = time.perf_counter()
    for command in commands:
        result = subprocess.run(command, env=environment(), capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def same_labels(first: Path, second: Path) -> bool:
    import numpy as np
    import SimpleITK as sitk

    a, b = sitk.ReadImage(str(first)), sitk.ReadImage(str(second))
    return (a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection()
            and bool(np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--model", default="hippocampus-unet")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-workers-2", dest="workers_2", action="store_false")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"data not found: {args.data}")
    sources = sorted(args.data.glob("*.nii.gz"))[: args.cases]
    shutil.rmtree(args.work, ignore_errors=True)
    inputs = args.work / "inputs"
    inputs.mkdir(parents=True)
    for source in sources:
        shutil.copy2(source, inputs / source.name)
    ids = [source.name[: -len(".nii.gz")] for source in sources]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None  # other work on the machine skews the timings
    (args.work / "loop").mkdir()

    timings = {"loop": timed([cad("segment", str(inputs / f"{case}.nii.gz"), "-m", args.model, "-o",
                                  str(args.work / "loop" / f"{case}.nii.gz")) for case in ids])}
    runs = ["batch_1", *(["batch_2"] if args.workers_2 else [])]
    for run in runs:
        workers = run.split("_")[1]
        timings[run] = timed([cad("batch", str(inputs), "-m", args.model, "-o", str(args.work / run),
                                  "--workers", workers)])
    equal = {run: all(same_labels(args.work / "loop" / f"{case}.nii.gz", args.work / run / f"{case}.nii.gz")
                      for case in ids) for run in runs}
    report = {
        "cases": len(ids), "model": args.model,
        "seconds": {name: round(value, 2) for name, value in timings.items()},
        "cases_per_second": {name: round(len(ids) / value, 3) for name, value in timings.items()},
        "speedup_vs_loop": {run: round(timings["loop"] / timings[run], 2) for run in runs},
        "outputs_equal_to_loop": equal,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_at_start": load},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if not all(equal.values()):
        raise SystemExit("a batch output differs from cad segment's")


if __name__ == "__main__":
    main()
