"""Where a ``cad segment`` process spends its time before, during and after the work (issue 19, start-up).

For the hippocampus sample case it runs, in fresh processes, ``python -X importtime -m cadcore segment ...`` and
sums the import self-time per top-level package; and, as many times as ``--repeats``, the plain command for the
wall clock. Run on a quiet machine from the repository root:

    .venv/bin/python benchmarks/startup_breakdown.py --repeats 5 --json benchmarks/results/startup.json

Before/after between two revisions, interleaved: ``bash benchmarks/startup_compare.sh REV``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASE = REPO / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_015.nii.gz"


def segment_command(output: Path, *python_options: str) -> list[str]:
    return [sys.executable, *python_options, "-m", "cadcore", "segment", str(CASE), "-m", "hippocampus-unet",
            "-o", str(output), "--device", "cpu", "--force"]


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "CADExtension"), "OMP_NUM_THREADS": "2"}


def import_self_times(stderr: str) -> dict[str, float]:
    """Seconds of import self-time per top-level package, from ``-X importtime``'s lines."""
    totals: dict[str, float] = defaultdict(float)
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:"):].split("|", 2)
        totals[name.strip().split(".")[0]] += int(self_us) / 1e6
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "seg.nii.gz"
        walls = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(segment_command(output), check=True, capture_output=True, env=environment())
            walls.append(time.perf_counter() - start)
        traced = subprocess.run(segment_command(output, "-X", "importtime"), check=True, capture_output=True,
                                text=True, env=environment())
    imports = import_self_times(traced.stderr)
    heavy = {name: round(seconds, 3) for name, seconds in imports.items() if seconds >= 0.01}
    result = {"case": str(CASE.relative_to(REPO)), "walls_s": [round(w, 3) for w in walls],
              "median_wall_s": round(statistics.median(walls), 3),
              "import_self_time_s": {"total": round(sum(imports.values()), 3), **heavy},
              "monai_imported": "monai" in imports}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
