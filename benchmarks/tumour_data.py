"""The brain-tumour data set-up shared by the tumour benchmarks: a split by patient, and what to do about geometry.

Data: ``../shared/data/tcia_brain_tumor_progression`` (TCIA Brain-Tumor-Progression, CC BY 3.0: T1 post-contrast MR
with binary tumour masks; 11 patients, 23 scans; see ``SOURCES2.md`` section 8 and ``cases.csv``).

Geometry, and why each subset is used the way it is:

* ``native/`` (PGBM-001, -003, -006; 5 scans) was converted from the DICOM with its true geometry: slightly oblique
  axial stacks, 0.43 or 0.69 mm in-plane, 6.5 mm slices. Only these scans can be scored honestly on their own grid
  (Dice after the round trip to working space and back, HD95 in real millimetres) and timed on a realistic input
  (512 x 512 matrices included). So the EVALUATION patients are native ones: PGBM-001 and PGBM-003 (4 scans), and no
  scan of theirs is ever trained on.
* ``resampled256/`` (9 patients, 18 scans) lost its geometry: nearest-neighbour subsampled in-plane to 256 x 256, four
  all-zero slices appended, identity header (1 x 1 x 1 mm). Training on those headers would teach a network 1 mm
  voxels that are really about 0.86 x 0.86 x 6.5 mm, and ``cad segment`` would then resample every real scan wrongly.
  We therefore write corrected copies (under ``runs/tumour/data/``, never over the shared files): the padding slices
  are dropped (checked all-zero in image and mask) and the header gets a NOMINAL spacing of 0.86 x 0.86 x 6.5 mm,
  origin 0, identity (LPS) direction. Why 0.86 mm: every native scan has a 220 mm field of view along its longer
  in-plane axis (512 x 0.4297 = 320 x 0.6875 = 220 mm) and the uploader stretched that to 256 voxels; a 512-matrix
  source sampled at round(i * 511 / 255) is 0.861 mm exactly. Sources with a non-square matrix (260 or 280 x 320) were
  stretched more along I, so their true I spacing is about 0.70-0.75 mm: up to ~20 % anisotropy we cannot recover
  (the training augmentation scales by +-15 %). 6.5 mm slices hold for every native scan but are not verified here.
  The identity direction matches the native scans' near-axial LPS orientation up to their 4-15 degree tilt.
  No physical volume (mL) is ever computed from these copies.
* ``PGBM-006_19961210`` exists in both subsets (the resampled copy is an exact subsample of the native one): the
  resampled copy is used, so both PGBM-006 scans share one voxel space, and the native copy is left out.

The 9 resampled patients are split by a seeded permutation: ``--val-patients`` (default 2) for validation (checkpoint
choice) and the rest for training. Files written into the work folder (default ``runs/tumour/data``):
``train.json`` (``training`` + explicit ``validation``, as ``cad train`` reads it), ``eval.json`` (the evaluation
scans as a ``training`` list, for ``cad evaluate --split all``) and ``split.json`` (patients per role, the reasons).

    .venv/bin/python benchmarks/tumour_data.py [--work runs/tumour] [--seed 0] [--val-patients 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
from tumour_scans import NOMINAL_SPACING, corrected, slices_with_content  # noqa: E402  (one correction for all)

DATA = Path(os.environ.get("CAD_SHARED_DATA", REPO.parent / "shared" / "data")) / "tcia_brain_tumor_progression"
WORK = REPO / "runs" / "tumour"
CAD = REPO / ".venv" / "bin" / "cad"
EVAL_PATIENTS = ("PGBM-001", "PGBM-003")  # native geometry, never trained on
SPACING = "0.86,0.86,6.5"  # working spacing of the full-resolution networks: the training scans' own voxels
PATCH = "64,64,8"  # ~55 x 55 x 52 mm: most of a tumour ROI crop (box + 10 mm) in one window
LABELS = REPO / "benchmarks" / "configs" / "tumour_labels.json"  # name, colour, SNOMED CT terminology for the card
FILTERS = "16,32,64,128"  # the fine stage, the single stage and hippocampus-unet (so --init can load it) alike
LICENCE = ("CC BY 3.0 (TCIA Brain-Tumor-Progression, Schmainda KM, Prah M, 2018, doi:10.7937/K9/TCIA.2018.15quzvnb; "
           "Clark K et al., J Digit Imaging 26(6):1045-1057, 2013)")


@dataclass
class TumourData:
    train_json: Path
    eval_json: Path
    split: dict[str, Any]


def read_cases(data: Path = DATA) -> list[dict[str, str]]:
    with open(data / "cases.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def fixed_copy(row: dict[str, str], data: Path, folder: Path) -> tuple[Path, Path]:
    """The resampled256 scan with its padding slices dropped and the nominal spacing; written once."""
    import SimpleITK as sitk

    image_path, mask_path = folder / Path(row["image"]).name, folder / Path(row["mask"]).name
    if image_path.exists() and mask_path.exists():
        return image_path, mask_path
    image, mask = sitk.ReadImage(str(data / row["image"])), sitk.ReadImage(str(data / row["mask"]))
    keep = slices_with_content(image)
    if sitk.GetArrayViewFromImage(mask)[keep:].any():  # (K, J, I)
        raise SystemExit(f"{row['case']}: tumour voxels in the all-zero padding slices")
    for source, path in ((image, image_path), (mask, mask_path)):
        cropped = corrected(source, keep)
        tmp = path.with_name(f".{path.name}")
        sitk.WriteImage(cropped, str(tmp), True)
        tmp.replace(path)
    return image_path, mask_path


def split_patients(patients: list[str], seed: int, n_val: int) -> tuple[list[str], list[str]]:
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    return sorted(order[n_val:]), sorted(order[:n_val])


def build(work: Path = WORK, seed: int = 0, n_val: int = 2, max_eval: int | None = None,
          data: Path = DATA) -> TumourData:
    """Write the corrected copies and the dataset files (idempotent); return where they are and the split.

    ``max_eval`` keeps only the first evaluation scans (quick smoke runs), in ``eval_first<N>.json``."""
    folder = work / "data"
    copies = folder / "resampled256_nominal_geometry"
    copies.mkdir(parents=True, exist_ok=True)
    rows = read_cases(data)
    chosen: dict[str, list[dict[str, str]]] = {}  # patient -> entries
    for row in rows:
        patient = row["patient"]
        if patient in EVAL_PATIENTS:
            if row["subset"] != "native":
                continue
            image, mask = data / row["image"], data / row["mask"]
        elif row["subset"] == "resampled256":
            image, mask = fixed_copy(row, data, copies)
        else:
            continue  # the native copy of PGBM-006_19961210: its resampled copy is used instead
        entry = {"image": os.path.relpath(image, folder), "label": os.path.relpath(mask, folder)}
        chosen.setdefault(patient, []).append(entry)
    rest = sorted(p for p in chosen if p not in EVAL_PATIENTS)
    train_patients, val_patients = split_patients(rest, seed, n_val)
    common = {"name": "TCIA Brain-Tumor-Progression T1 post-contrast (split by patient)", "licence": LICENCE,
              "modality": {"0": "MR"}, "labels": {"0": "background", "1": "tumour"}}
    by = {role: [e for p in patients for e in chosen[p]] for role, patients in
          (("train", train_patients), ("val", val_patients), ("eval", list(EVAL_PATIENTS)))}
    write(folder / "train.json", {**common, "training": by["train"], "validation": by["val"]})
    eval_json = folder / ("eval.json" if max_eval is None else f"eval_first{max_eval}.json")
    by["eval"] = by["eval"][:max_eval]
    write(eval_json, {**common, "training": by["eval"]})
    split = {"seed": seed, "train_patients": train_patients, "val_patients": val_patients,
             "eval_patients": list(EVAL_PATIENTS), "n_scans": {k: len(v) for k, v in by.items()},
             "nominal_spacing_resampled256": list(NOMINAL_SPACING),
             "notes": ["evaluation: native scans (true geometry), patients never trained on",
                       "training/validation: resampled256 copies with padding slices dropped and a nominal header",
                       "PGBM-006_19961210: resampled copy used, native copy left out"]}
    write(folder / "split.json", {**split, "eval_scans": [Path(e["image"]).name for e in by["eval"]]})
    return TumourData(folder / "train.json", eval_json, split)


def write(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    tmp.replace(path)


def cad(args: list[str], threads: int, log: Path | None = None) -> float:
    """Run the ``cad`` CLI as its own process (as a user would); return its wall time. Output goes to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print("$ cad " + " ".join(args), flush=True)
    started = time.perf_counter()
    with open(log, "a") if log else open(os.devnull, "w") as out:
        result = subprocess.run([str(CAD), *args], env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if result.returncode:
        sys.exit(f"cad {args[0]} failed (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


def train_or_reuse(folder: Path, args: list[str], epochs: int, threads: int) -> dict[str, Any]:
    """``cad train`` into ``folder`` unless a finished package is there (folder names encode the settings);
    an interrupted one is resumed. Returns the card."""
    card_path = folder / "model.json"
    if card_path.exists():
        card = json.loads(card_path.read_text())
        if card["training"]["epochs"] >= epochs:
            print(f"reusing {folder}")
            return card
    flag = ["--resume"] if (folder / "training" / "last.pt").exists() or (folder / "cascade").exists() else []
    folder.parent.mkdir(parents=True, exist_ok=True)
    cad(["train", "-o", str(folder), *args, *flag], threads, folder.parent / f"{folder.name}.log")
    return json.loads(card_path.read_text())


def evaluate(model: Path, data: Path, report: Path, threads: int) -> dict[str, Any]:
    """``cad evaluate --split all`` on the evaluation scans; returns the report."""
    cad(["evaluate", "-m", str(model), "--data", str(data), "--split", "all", "-o", str(report), "--force"], threads)
    return json.loads(report.read_text())


def single_stage(work: Path, train_json: Path, patch: str, epochs: int, seed: int, val_every: int, threads: int,
                 init: str | None = None) -> Path:
    """The single-stage full-resolution network (scratch, or ``--init`` from a package); shared by the cascade and
    transfer benchmarks, so one training serves both when their settings agree."""
    name = f"{'single' if init is None else 'init-' + Path(init).name}-p{patch.replace(',', 'x')}-e{epochs}" \
           f"-v{val_every}-s{seed}"
    folder = work / name
    extra = ["--init", init] if init else []
    train_or_reuse(folder, ["--id", "brain-tumour-single" if init is None else f"brain-tumour-{Path(init).name}",
                            "--data", str(train_json), "--spacing", SPACING, "--patch-size", patch,
                            "--filters", FILTERS, "--epochs", str(epochs), "--seed", str(seed),
                            "--val-every", str(val_every), "--labels", str(LABELS), "--device", "cpu", *extra],
                   epochs, threads)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-patients", type=int, default=2)
    args = parser.parse_args()
    data = build(args.work, args.seed, args.val_patients)
    print(json.dumps(data.split, indent=2))
    print(f"training data: {data.train_json}\nevaluation data: {data.eval_json}")


if __name__ == "__main__":
    main()
