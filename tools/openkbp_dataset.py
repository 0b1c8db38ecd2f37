"""Turn the shared OpenKBP head-and-neck CT folder into a partly labelled ``cad train`` data set, split by patient.

Run from the repository root (the output must be a folder of your own, never inside ``../shared``)::

    PYTHONPATH=CADExtension .venv/bin/python tools/openkbp_dataset.py ../shared/data/openkbp_headneck_ct \\
        work/openkbp [--seed 0] [--val-fraction 0.1] [--test-fraction 0.2] [--limit N] [--force]

It writes four files and copies no image (entries are absolute paths to the source's ``imagesTr``/``labelsTr``):

* ``dataset.json``: ``training`` and ``validation`` entries, each with ``labels_present`` from ``cases.csv``
  (an organ that was not contoured clinically is unknown in that case, not background; see ``docs/partial_labels.md``);
* ``test.json``: the test patients, as a data set of their own (``cad evaluate --data test.json --split all``);
* ``labels.json``: value, name, colour and SNOMED CT terminology of the seven organs (``cad train --labels``);
* ``split.json``: the seed, the fractions and the patient ids of each split.

The split is by patient: OpenKBP's case ids are ``<challenge split>_pt_<N>`` and ``pt_<N>`` is the patient, so two
cases of one patient could never straddle training and test. Patients are shuffled with ``random.Random(seed)``
after sorting, so the split depends only on the seed and the set of patients.

Checked before anything is written, each refusal one line naming the file (exit 2): the folder layout; that
``dataset.json``'s label names are the seven organs of ``cases.csv``'s columns (by name, so a renumbered source is
caught); every ``cases.csv`` row (0/1 presence, its image and label files, no case listed twice) and every image
listed; each label's header on its image's grid; and, voxel by voxel, that a label map holds no organ that its
``cases.csv`` row calls absent.

SNOMED CT codes: from the AAPM TG-263 to SNOMED CT map of the HL7 mCODE implementation guide ("TG263 to SNOMEDCT
Codes and Qualifiers Mapping", ``fhir-mCODE-ig``): Brainstem 15926001 (Brainstem structure), SpinalCord 2748008
(Spinal cord structure), Parotid_L/R 45289007 (Parotid gland structure) with laterality 7771000 (Left) / 24028007
(Right), Esophagus 32849002 (Esophageal structure), Larynx 4596009 (Laryngeal structure), Bone_Mandible 91609006
(Bone structure of mandible); category 123037004 (Anatomical structure), as the shipped brain models use.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.datasets import check_pair_grid
from cadcore.io.writing import write_json

CATEGORY = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}
LEFT = {"scheme": "SCT", "code": "7771000", "meaning": "Left"}
RIGHT = {"scheme": "SCT", "code": "24028007", "meaning": "Right"}
# cases.csv column -> (the name the card shows, colour, SNOMED CT type code and meaning, laterality)
ORGANS: dict[str, tuple[str, list[float], str, str, dict[str, str] | None]] = {
    "brainstem": ("brainstem", [0.55, 0.35, 0.65], "15926001", "Brainstem", None),
    "spinalcord": ("spinal cord", [0.95, 0.85, 0.25], "2748008", "Spinal cord", None),
    "rightparotid": ("right parotid gland", [0.25, 0.6, 0.85], "45289007", "Parotid gland", RIGHT),
    "leftparotid": ("left parotid gland", [0.35, 0.75, 0.35], "45289007", "Parotid gland", LEFT),
    "esophagus": ("esophagus", [0.85, 0.45, 0.3], "32849002", "Esophagus", None),
    "larynx": ("larynx", [0.4, 0.8, 0.8], "4596009", "Larynx", None),
    "mandible": ("mandible", [0.92, 0.9, 0.82], "91609006", "Mandible", None),
}
PATIENT = re.compile(r"(?:.*_)?(pt_\d+)")
LICENCE = ("MIT (ababier/open-kbp, Copyright (c) 2021 Aaron Babier); the CT images and contours derive from TCIA "
           "collections (Creative Commons Attribution). Cite Babier et al., Med Phys 48(9):5549-5561 (2021), and TCIA "
           "(Clark et al., J Digit Imaging 26(6):1045-1057, 2013).")


def label_descriptions(values: dict[str, int]) -> list[dict[str, Any]]:
    """The ``cad train --labels`` file: each organ's value (as the source numbers it), name, colour, terminology."""
    entries = []
    for column, value in sorted(values.items(), key=lambda item: item[1]):
        name, color, code, meaning, side = ORGANS[column]
        terminology: dict[str, Any] = {"category": CATEGORY, "type": {"scheme": "SCT", "code": code,
                                                                      "meaning": meaning}}
        if side is not None:
            terminology["type_modifier"] = side
        entries.append({"value": value, "name": name, "color": color, "terminology": terminology})
    return entries


def organ_values(source: Path) -> dict[str, int]:
    """cases.csv column -> label value, matched by name against the source's dataset.json ``labels``."""
    spec_path = source / "dataset.json"
    try:
        labels = json.loads(spec_path.read_text())["labels"]
        by_name = {str(name).lower().replace(" ", ""): int(value) for value, name in labels.items() if int(value)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CadError(f"cannot read the label names ({exc})", spec_path) from exc
    missing = [column for column in ORGANS if column not in by_name]
    if missing or len(by_name) != len(ORGANS):
        raise CadError(f"labels {sorted(by_name)} are not the seven OpenKBP organs {list(ORGANS)}", spec_path)
    return {column: by_name[column] for column in ORGANS}


def read_cases(source: Path, values: dict[str, int]) -> list[dict[str, Any]]:
    """Every cases.csv row as {id, patient, image, label, labels_present}, checked against the folder."""
    table = source / "cases.csv"
    try:
        with open(table, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CadError(f"cannot read the case table ({exc})", table) from exc
    if not rows or "case" not in rows[0] or any(column not in rows[0] for column in ORGANS):
        raise CadError(f"expected columns 'case' and {', '.join(ORGANS)}", table)
    cases, seen = [], set()
    for number, row in enumerate(rows, start=2):
        cid = row["case"] or ""
        match = PATIENT.fullmatch(cid)
        if not match or cid in seen:
            raise CadError(f"line {number}: case id {cid!r} is {'listed twice' if match else 'not <split>_pt_<N>'}",
                           table)
        seen.add(cid)
        flags = [row[column] for column in ORGANS]
        if any(flag not in ("0", "1") for flag in flags):
            raise CadError(f"line {number} ({cid}): organ presence must be 0 or 1, got {flags}", table)
        image, label = source / "imagesTr" / f"{cid}.nii.gz", source / "labelsTr" / f"{cid}.nii.gz"
        for file in (image, label):
            if not file.is_file():
                raise CadError(f"line {number} ({cid}) names a missing file", file)
        present = sorted(values[column] for column, flag in zip(ORGANS, flags) if flag == "1")
        cases.append({"id": cid, "patient": match.group(1), "image": image.resolve(), "label": label.resolve(),
                      "labels_present": present})
    unlisted = sorted({p.name for p in (source / "imagesTr").glob("*.nii.gz")} - {f"{c['id']}.nii.gz" for c in cases})
    if unlisted:
        raise CadError(f"images not in cases.csv: {', '.join(unlisted[:3])}", source / "imagesTr")
    return cases


def split_patients(patients: list[str], seed: int, val_fraction: float, test_fraction: float
                   ) -> dict[str, list[str]]:
    """training / validation / test patient ids (at least one each), from a seeded shuffle of the sorted ids."""
    ordered = sorted(set(patients))
    if len(ordered) < 3:
        raise CadError(f"a training/validation/test split needs at least 3 patients, got {len(ordered)}")
    random.Random(seed).shuffle(ordered)
    n_test = max(1, round(len(ordered) * test_fraction))
    n_val = max(1, min(len(ordered) - n_test - 1, round(len(ordered) * val_fraction)))
    return {"test": sorted(ordered[:n_test]), "validation": sorted(ordered[n_test:n_test + n_val]),
            "training": sorted(ordered[n_test + n_val:])}


def check_labels(cases: list[dict[str, Any]]) -> None:
    """Each label on its image's grid, and no organ drawn that its cases.csv row calls absent."""
    for case in cases:
        check_pair_grid(case["image"], case["label"])
        values = set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(case["label"])))).tolist())
        drawn = sorted(values - set(case["labels_present"]) - {0})
        if drawn:
            raise CadError(f"holds organs {drawn} that cases.csv marks absent for {case['id']}", case["label"])


def convert(source: Path, output: Path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
            limit: int | None = None, force: bool = False) -> dict[str, Any]:
    """Check everything, then write the four files; returns split.json's content."""
    if not (source / "cases.csv").is_file() or not (source / "imagesTr").is_dir():
        raise CadError("not an OpenKBP folder (expected cases.csv, dataset.json, imagesTr/ and labelsTr/)", source)
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise CadError(f"--val-fraction and --test-fraction must be in (0, 1) with a sum < 1, got {val_fraction} "
                       f"and {test_fraction}")
    if limit is not None and limit < 3:
        raise CadError(f"--limit must be at least 3 patients (one per split), got {limit}")
    resolved, kept = output.resolve(), [source.resolve()]  # kept: the source and a "shared" folder holding it
    kept += [folder for folder in source.resolve().parents if folder.name == "shared"]
    if any(folder == resolved or folder in resolved.parents for folder in kept):
        raise CadError("the output must be a folder of your own, not inside the (read-only) shared data", output)
    if output.exists() and not output.is_dir():
        raise CadError("exists and is not a folder", output)
    if (output / "dataset.json").exists() and not force:
        raise CadError("a converted data set exists here (use --force to replace it)", output / "dataset.json")
    values = organ_values(source)
    cases = read_cases(source, values)
    patients = sorted({case["patient"] for case in cases})
    if limit is not None and limit < len(patients):  # a small seeded subset (smoke runs), then split as usual
        patients = sorted(random.Random(seed).sample(patients, limit))
    split = split_patients(patients, seed, val_fraction, test_fraction)
    where = {patient: part for part, group in split.items() for patient in group}
    chosen = [case for case in cases if case["patient"] in where]
    check_labels(chosen)
    labels = label_descriptions(values)
    names = {"0": "background", **{str(entry["value"]): entry["name"] for entry in labels}}
    entries: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for case in chosen:
        entries[where[case["patient"]]].append({"image": str(case["image"]), "label": str(case["label"]),
                                                "labels_present": case["labels_present"]})
    name = f"OpenKBP head-and-neck CT organs at risk (by-patient split, seed {seed})"
    common = {"modality": {"0": "CT"}, "licence": LICENCE, "labels": names, "source": str(source.resolve())}
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "labels.json", labels)
    write_json(output / "test.json", {"name": f"{name}, test split", **common, "training": entries["test"]})
    summary = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction, "limit": limit,
               "patients": split, "cases": {part: len(group) for part, group in entries.items()},
               "organ_cases": {part: {names[str(v)]: sum(v in e["labels_present"] for e in group)
                                      for v in values.values()} for part, group in entries.items()}}
    write_json(output / "split.json", summary)
    # last: a dataset.json means the other files are in place
    write_json(output / "dataset.json", {"name": name, **common, "training": entries["training"],
                                         "validation": entries["validation"]})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="../shared/data/openkbp_headneck_ct")
    parser.add_argument("output", type=Path, help="the folder to write dataset.json, test.json, labels.json into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--limit", type=int, help="keep only this many patients (seeded; for smoke runs)")
    parser.add_argument("--force", action="store_true", help="replace a converted data set in OUTPUT")
    args = parser.parse_args(argv)
    try:
        summary = convert(args.source, args.output, args.seed, args.val_fraction, args.test_fraction, args.limit,
                          args.force)
    except CadError as exc:
        print(f"openkbp_dataset: error: {exc}", file=sys.stderr)  # the message names the file
        return 2
    patients = ", ".join(f"{part} {len(group)}" for part, group in summary["patients"].items())
    print(f"openkbp_dataset: patients {patients}; organ cases {json.dumps(summary['organ_cases'])}; "
          f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
