"""Wall time and peak RSS of ``cad segment`` on one hippocampus case, on CPU (a benchmark, not a test).

Each repetition is a fresh ``cad segment`` process (what a user or the Slicer module pays, imports included); the
in-process timings from the sidecar split out preprocessing, network and post-processing.

    .venv/bin/python benchmarks/segment_cpu.py [--case PATH] [--model hippocampus-unet] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASE = REPO / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_015.nii.gz"


def run_once(case: Path, model: str, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "seg.nii.gz"
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        command = [sys.executable, "-m", "cadcore", "segment", str(case), "-m", model, "-o", str(output),
                   "--device", "cpu"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if completed.returncode != 0:
            raise SystemExit(f"cad segment failed: {completed.stderr.strip()}")
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        sidecar = json.loads(Path(f"{output}.json").read_text())
        return {"wall_s": wall, "peak_rss_mib": max(peak_kib, before) / 1024, "timings": sidecar["timings"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=Path, default=DEFAULT_CASE)
    parser.add_argument("--model", default="hippocampus-unet")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the child (default: cad's)")
    parser.add_argument("--json", type=Path, default=None, help="write the raw numbers here")
    args = parser.parse_args()
    runs = [run_once(args.case, args.model, args.threads) for _ in range(args.repeats)]
    walls = [r["wall_s"] for r in runs]
    network = [r["timings"]["network_s"] for r in runs]
    summary = {
        "case": str(args.case.relative_to(REPO) if args.case.is_relative_to(REPO) else args.case),
        "model": args.model,
        "repeats": args.repeats,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_min": round(min(walls), 3),
        "in_process_total_s_median": round(statistics.median(r["timings"]["total_s"] for r in runs), 3),
        "network_s_median": round(statistics.median(network), 3),
        "peak_rss_mib": round(max(r["peak_rss_mib"] for r in runs), 1),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
