"""``brain-mask`` (MindGrab) on head CT: does the mask hold the brainstem and leave the skull out?

For each CT: ``cad segment -m brain-mask`` in a fresh process, then the fraction of the OpenKBP brainstem contour
inside the mask (when a label file is given) and the share of bone (> 300 HU) that the mask includes, with the
mask's volume. ``--png-dir``: also the overlay PNG and the mask of each case there.

    .venv/bin/python benchmarks/brain_mask_ct.py ../shared/data/slicer_testing_ct_head_dicom \\
        ../shared/data/openkbp_headneck_ct/imagesTr/train_pt_1.nii.gz [...] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
BONE_HU = 300.0


def read(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cts", type=Path, nargs="+", help="CT volumes or DICOM folders")
    parser.add_argument("--png-dir", type=Path, help="write cad segment's overlay PNG per case here")
    args = parser.parse_args()
    print("case | seconds | mask mL | brainstem voxels | brainstem inside mask | bone voxels | bone inside mask "
          "| mask voxels that are bone")
    for ct in args.cts:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "mask.nii.gz"
            command = [sys.executable, "-m", "cadcore", "segment", str(ct), "-m", "brain-mask", "-o", str(out)]
            if args.png_dir:
                args.png_dir.mkdir(parents=True, exist_ok=True)
                command += ["--png", str(args.png_dir / f"{ct.name.split('.')[0]}_brain_mask.png")]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO / "CADExtension")})
            seconds = time.perf_counter() - started
            if done.returncode:
                raise SystemExit(f"cad segment failed on {ct}: {done.stderr.strip()}")
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0
            if args.png_dir:
                sitk.WriteImage(sitk.ReadImage(str(out)), str(args.png_dir / f"{ct.name.split('.')[0]}_mask.nii.gz"))
        image = read(ct)
        hu = sitk.GetArrayFromImage(image).astype(np.float32)
        if hu.min() >= 0:  # stored values without a rescale intercept (Slicer's CTHead series): HU + 1024
            hu -= 1024.0
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        bone = hu > BONE_HU
        label = ct.parent.parent / "labelsTr" / ct.name
        if label.is_file():
            brainstem = sitk.GetArrayFromImage(sitk.ReadImage(str(label))) == 1
            stem = f"{brainstem.sum()} | {(mask & brainstem).sum() / max(1, brainstem.sum()):.3f}"
        else:
            stem = "- | -"
        print(f"{ct.name} | {seconds:.1f} | {mask.sum() * voxel_ml:.0f} | {stem} | {bone.sum()} | "
              f"{(mask & bone).sum() / max(1, bone.sum()):.4f} | {(mask & bone).sum() / max(1, mask.sum()):.4f}",
              flush=True)


if __name__ == "__main__":
    main()
