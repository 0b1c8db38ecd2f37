"""Two whole-head hippocampus answers side by side (issue 17): ``hippocampus-whole-head`` (hippodeep; left and right)
against ``brain-structures``' ``Hippocampus`` label (brainchop MeshNet, both sides in one label), on the same scans.

Both run through the engine as ``cad segment`` runs them (``segment_image``); the table gives each one's volume in
mL (left + right for hippodeep), their Dice, and hippodeep's eTIV with its warnings (thick-slice scans are not what
it was made for). Neither is ground truth: agreement between two independently trained methods is what is measured.

    PYTHONPATH=CADExtension .venv/bin/python benchmarks/hippocampus_agreement.py \\
        --json benchmarks/results/hippocampus_agreement.json IMAGE [IMAGE ...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

DEFAULT_IMAGES = [
    "../shared/weights/hippodeep/example_brain_t1.nii.gz",
    "../shared/data/tcia_brain_tumor_progression_pgbm001/34907-T1prereg-43695",  # a DICOM series (T1 pre-contrast)
    "../shared/data/tcia_brain_tumor_progression/native/PGBM-001_19911119_t1post.nii.gz",
    "../shared/data/slicer_sampledata/BaselineVolume.nrrd",
]


def hippocampus_masks(path: Path) -> dict:
    from cadcore.evaluation.metrics import dice
    from cadcore.io.images import read_volume
    from cadcore.registry import find_model_or_bundle
    from cadcore.segmentation.predict import segment_image

    image = read_volume(path)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    row: dict = {"image": str(path), "spacing_mm": [round(v, 3) for v in image.GetSpacing()]}
    started = time.perf_counter()
    hippodeep = segment_image(image, find_model_or_bundle("hippocampus-whole-head"), "cpu")
    row["hippodeep_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    structures_package = find_model_or_bundle("brain-structures")
    structures = segment_image(image, structures_package, "cpu")
    row["brain_structures_s"] = round(time.perf_counter() - started, 1)
    value = next(int(label["value"]) for label in structures_package.labels if label["name"] == "Hippocampus")
    hippodeep_labels = sitk.GetArrayFromImage(hippodeep.labels)
    a = hippodeep_labels > 0
    b = sitk.GetArrayFromImage(structures.labels) == value
    row.update({
        "hippodeep_left_ml": round(float((hippodeep_labels == 1).sum()) * voxel_ml, 3),
        "hippodeep_right_ml": round(float((hippodeep_labels == 2).sum()) * voxel_ml, 3),
        "hippodeep_total_ml": round(float(a.sum()) * voxel_ml, 3),
        "brain_structures_ml": round(float(b.sum()) * voxel_ml, 3),
        "dice": round(dice(a, b), 4),
        "etiv_ml": (hippodeep.measures or {}).get("etiv_ml"),
        "warnings": hippodeep.warnings,
    })
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    images = args.images or [Path(p) for p in DEFAULT_IMAGES if Path(p).exists()]
    rows = [hippocampus_masks(path) for path in images]
    for row in rows:
        print(f"{Path(row['image']).name:<40} hippodeep {row['hippodeep_total_ml']:6.2f} mL "
              f"(L {row['hippodeep_left_ml']:.2f} / R {row['hippodeep_right_ml']:.2f})  brain-structures "
              f"{row['brain_structures_ml']:6.2f} mL  Dice {row['dice']:.3f}  eTIV {row['etiv_ml']} mL"
              + (f"  [{len(row['warnings'])} warnings]" if row["warnings"] else ""))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
