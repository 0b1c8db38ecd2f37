"""Agreement of ``cad segment -m hippocampus-whole-head`` with the reference ``hippodeep.py`` on the same volumes.

The reference is run as published, from a throwaway copy outside the repository (a temporary folder holding
``hippodeep.py`` and its ``torchparams/`` from ``../shared/weights/hippodeep``), with this project's Python (it needs
torch, nibabel and scipy; nothing of the engine is imported by it). Every volume is first written as NIfTI into that
folder (the reference reads NIfTI through nibabel; NRRD and DICOM inputs are converted with SimpleITK, geometry kept),
and both pipelines read that same file. Reported per volume: Dice of the left and right labels (the reference's soft
uint8 masks cut at 128 of 255, ours at the card's ``label_threshold`` 0.5, with the reference's values at every voxel
where they differ), hippodeep's soft volumes in mL and eTIV from both sides, wall time and peak RSS of each process.

    PYTHONPATH=CADExtension .venv/bin/python benchmarks/hippodeep_agreement.py \\
        --json benchmarks/results/hippodeep_agreement.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
VOLUMES = {  # name → whole-head T1 (or T1-like) volume under ../shared
    "example_brain_t1": SHARED / "weights/hippodeep/example_brain_t1.nii.gz",
    "BaselineVolume": DATA / "slicer_sampledata/BaselineVolume.nrrd",
    "PGBM-001_T1prereg": DATA / "tcia_brain_tumor_progression_pgbm001/34907-T1prereg-43695",
    **{f"{path.name.split('_t1post')[0]}_t1post": path
       for path in sorted((DATA / "tcia_brain_tumor_progression/native").glob("*_t1post.nii.gz"))},
}
# a child's own peak RSS: run it under a tiny Python parent whose RUSAGE_CHILDREN then holds that child alone
MEASURE = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
           "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
           "print(round(time.perf_counter() - t, 2), "
           "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024, rc)")


def measured(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of one process; a failure stops the benchmark with its command."""
    out = subprocess.run([sys.executable, "-c", MEASURE, *command], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    if out[2] != "0":
        raise SystemExit(f"failed (exit {out[2]}): {' '.join(command)}")
    return float(out[0]), int(out[1])


def as_nifti(source: Path, target: Path) -> None:
    """The volume as NIfTI (a DICOM folder read as its one series), geometry unchanged."""
    if source.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(source)))
        image = reader.Execute()
    else:
        image = sitk.ReadImage(str(source))
    sitk.WriteImage(image, str(target))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum() + b.sum())
    return round(2.0 * float((a & b).sum()) / total, 4) if total else 1.0


def compare(name: str, source: Path, work: Path, env: dict[str, str]) -> dict[str, object]:
    volume = work / f"{name}.nii.gz"
    as_nifti(source, volume)
    reference_s, reference_mib = measured([sys.executable, "hippodeep.py", volume.name], work, env)
    with (work / f"{name}_hippoLR_volumes.csv").open() as stream:
        row = next(csv.DictReader(stream))
    ours = work / f"{name}_cad.nii.gz"
    cad_s, cad_mib = measured([sys.executable, "-m", "cadcore", "segment", "-m", "hippocampus-whole-head",
                               str(volume), "-o", str(ours), "--force"], work, env)
    sidecar = json.loads(Path(f"{ours}.json").read_text())
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ours)))
    image = sitk.ReadImage(str(volume))
    if labels.shape != sitk.GetArrayFromImage(image).shape:
        raise SystemExit(f"{name}: labels not on the input grid")
    scores, differences = {}, {}
    for side, value in (("L", 1), ("R", 2)):
        soft = sitk.GetArrayFromImage(sitk.ReadImage(str(work / f"{name}_mask_{side}.nii.gz")))
        differ = (soft >= 128) != (labels == value)
        scores[side] = dice(soft >= 128, labels == value)
        # the reference stores its soft map as truncated uint8: 127 holds 127.0-127.99, either side of our 127.5
        differences[side] = sorted(int(v) for v in soft[differ])
    measures = sidecar["measures"]
    return {
        "volume": name, "source": str(source.relative_to(SHARED)), "size": list(image.GetSize()),
        "spacing_mm": [round(s, 4) for s in image.GetSpacing()],
        "dice_left": scores["L"], "dice_right": scores["R"],
        "reference_values_where_different": differences,
        "reference_left_ml": float(row["hippoL"]) / 1000, "cad_left_ml": measures["hippocampus_left_ml"],
        "reference_right_ml": float(row["hippoR"]) / 1000, "cad_right_ml": measures["hippocampus_right_ml"],
        "reference_etiv_ml": float(row["eTIV"]) / 1000, "cad_etiv_ml": measures["etiv_ml"],
        "reference_s": reference_s, "reference_peak_mib": reference_mib,
        "cad_s": cad_s, "cad_peak_mib": cad_mib, "cad_in_process_s": sidecar["timings"]["total_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHARED / "weights/hippodeep",
                        help="folder with hippodeep.py and torchparams/")
    parser.add_argument("--only", nargs="*", help="volume names to run (default: all that exist)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO / "CADExtension")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="hippodeep_reference_") as folder:
        work = Path(folder)
        shutil.copy(args.weights / "hippodeep.py", work)
        shutil.copytree(args.weights / "torchparams", work / "torchparams")
        for name, source in VOLUMES.items():
            if (args.only and name not in args.only) or not source.exists():
                continue
            started = time.perf_counter()
            rows.append(compare(name, source, work, env))
            print(json.dumps(rows[-1]), f"({time.perf_counter() - started:.1f} s)", flush=True)
    print("\n| volume | Dice L | Dice R | L mL ref / cad | R mL ref / cad | eTIV mL ref / cad | s ref / cad | "
          "MiB ref / cad |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['volume']} | {r['dice_left']:.4f} | {r['dice_right']:.4f} | "
              f"{r['reference_left_ml']:.3f} / {r['cad_left_ml']:.3f} | "
              f"{r['reference_right_ml']:.3f} / {r['cad_right_ml']:.3f} | "
              f"{r['reference_etiv_ml']:.0f} / {r['cad_etiv_ml']:.0f} | {r['reference_s']:.1f} / {r['cad_s']:.1f} | "
              f"{r['reference_peak_mib']} / {r['cad_peak_mib']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
