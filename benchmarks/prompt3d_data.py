"""The training set of the generic promptable model ``prompt-3d`` (issue 15, item 5): every labelled structure of
``../shared/data`` in one MSD-style ``dataset.json``, with structures left out for a leave-structure-out score.

Why one class-agnostic data set works with partial labels. ``cad train --interactive`` draws, per patch, one labelled
structure present in the patch as the target ("the structure under the positive click") and learns target vs
everything else. So a value in this data set only has to mean "this voxel belongs to structure v"; 0 means "not a
structure we can prompt here", and that is *true for every target*: when the target is the brainstem, an
un-contoured larynx is not the brainstem. An absent structure (OpenKBP contours only the organs of each patient's
plan; TotalSegmentator's masks only what its model found) is therefore never a target and never wrong as background:
partial labels need no ignore value (255) here. The same argument makes leave-structure-out honest: a left-out
structure is set to 0 in every training and validation label ("not the prompted structure" is still true), so the
network never sees it as a target, and it is scored on cases never trained on at all (``eval_pairs.json``).

Sources (``SOURCES.md``, ``SOURCES2.md``, ``SOURCES3.md``), each structure a global value (1-177, < 255; the order
below, fixed whatever is left out, so values mean the same in every build; ``structures.json`` lists them):

* ``hippocampus``: MSD Task04, 208 T1 MR crops, anterior and posterior hippocampus (manual).
* ``tumour``: TCIA Brain-Tumor-Progression T1post (manual/software-assisted). Training and validation use
  ``benchmarks/tumour_data.py``'s corrected copies of the resampled256 scans (nominal 0.86 x 0.86 x 6.5 mm header);
  the native PGBM-001/-003 scans stay evaluation-only as in that file (the native PGBM-006 scan duplicates a
  resampled one and is left out; ``tcia_brain_tumor_progression_pgbm001/`` is PGBM-001 again, as DICOM).
* ``openkbp``: 203 head-and-neck CT, seven organs at risk, partly labelled. The planning target volumes (``ptvTr``)
  are not used: they are the tumour plus dosimetric margins, nested (PTV56 holds PTV63 holds PTV70) and overlapping
  the organs, drawn for dose not anatomy, so their borders are not visible edges a click could delimit.
* ``totalseg_ct`` (117 classes; the 3 mm ``example_ct`` and the 512 x 512 DICOM series, 61 and 31 structures found)
  and ``totalseg_mr`` (50 classes; ``example_mr_sm``, 23 found): model-made masks, so weighted down.
  ``example_ct_sm`` is a slab of ``example_ct`` and is skipped.

Working spacing 1.5 mm isotropic. The sources span 0.43-1 mm (tumour in-plane, hippocampus), 3 mm (TotalSegmentator
examples), ~4 x 4 x 2.5 mm (OpenKBP) and 6.5 mm slices (tumour): 1.5 mm keeps the hippocampus (a ~8 mm thick
structure, ~500 voxels per label) and the larynx resolvable, where 2 mm leaves the hippocampus a few voxels thick,
while a 48-voxel patch still covers 72 mm (a larynx, most tumours) at a CPU-trainable size. Upsampling OpenKBP
2.7x adds no detail, only voxels: hence the crops. Volumes are resampled here, once (linear, in the RAS orientation
``cad train`` uses), so ``cad train --spacing 1.5,1.5,1.5`` reads them without resampling again.

Volume sizes (CPU memory and time): each case is cropped to its labelled structures' box plus ``--margin`` mm, at
least ``--min-size`` voxels (context around small structures) and at most ``--max-size`` per axis (128 = 192 mm).
The TotalSegmentator scans, whose structures fill the whole body, are cut into tiles of at most that size instead,
so none of their structures is lost; validation cases get one window of ``--val-size`` (the per-epoch validation
runs 3 clicks per structure over the whole case, so it must stay small).

Splits, by patient: ``--eval-patients`` patients per source holding a left-out structure are kept out of training
and validation entirely (tumour: the native PGBM-001/-003 scans); ``--val-patients`` per source go to the
``validation`` list (TotalSegmentator: none, its 3 scans all train). Training cases left with no structure (the
tumour scans when the tumour is left out) are dropped. Sampling weights: each source gets an equal share of the
training patches (``--model-made-share`` for model-made sources), split evenly over its training entries: without
them the 208 hippocampus crops would outnumber TotalSegmentator's 3 scans 70:1.

Written into ``--work`` (default ``runs/prompt3d/data``; never ``../shared``): ``dataset.json``, ``structures.json``,
``eval_pairs.json`` (image on its own native grid, a 0/1 mask of one left-out structure, its name), ``split.json``,
``images/``, ``labels/``, ``eval/``.

    nice -n 10 .venv/bin/python benchmarks/prompt3d_data.py [--leave-out larynx,tumour] [--work runs/prompt3d/data]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CADExtension"))
sys.path.insert(0, str(REPO / "benchmarks"))
from cadcore.io.images import read_image, read_volume  # noqa: E402
from cadcore.preprocessing.resampling import resample_to_spacing  # noqa: E402

SHARED = Path(os.environ.get("CAD_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "runs" / "prompt3d" / "data"
LEAVE_OUT = ("larynx", "tumour")
VAL_PATIENTS = {"hippocampus": 6, "tumour": 1, "openkbp": 2, "totalseg_ct": 0, "totalseg_mr": 0}
LICENCE = ("mixed; keep every attribution: MSD Task04 Hippocampus CC-BY-SA 4.0 (share-alike); TCIA "
           "Brain-Tumor-Progression CC BY 3.0; OpenKBP (MIT, ababier/open-kbp) on TCIA CC BY collections; "
           "TotalSegmentator test files (Apache-2.0 repository, model-made masks). See ../shared/data/SOURCES*.md")


@dataclass(frozen=True)
class Source:
    key: str
    title: str
    modality: str
    model_made: bool
    structures: dict[int, str]  # native label value -> structure name
    tile: bool = False  # whole-body scans: cut into tiles instead of one window


@dataclass
class SourceCase:
    source: str
    patient: str
    case: str
    image: Path  # as stored in ../shared (native grid): what eval pairs are scored on
    label: Path
    eval_only: bool = False  # never trained on, whatever is left out (the native tumour scans)
    training_copy: Callable[[], tuple[Path, Path]] | None = None  # the (image, label) to train from, if not these
    present: set[int] = field(default_factory=set)  # native values found in the label


def canonical(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def spaced(name: str) -> str:
    """"RightParotid" / "spinal_cord" -> "right parotid" / "spinal cord"."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).replace("_", " ").lower()


def discover(data: Path, work: Path) -> tuple[list[Source], list[SourceCase]]:
    """The sources present under ``data`` and their cases (a missing folder is skipped, with a note)."""
    sources, cases = [], []
    hippo = data / "msd_task04_hippocampus"
    if hippo.is_dir():
        spec = json.loads((hippo / "dataset.json").read_text())
        sources.append(Source("hippocampus", "MSD hippocampus", "MR", False,
                              {1: "anterior hippocampus", 2: "posterior hippocampus"}))
        for entry in spec["training"]:
            cid = Path(entry["image"]).name.split(".")[0]
            cases.append(SourceCase("hippocampus", cid, cid, hippo / entry["image"], hippo / entry["label"]))
    tumour = data / "tcia_brain_tumor_progression"
    if tumour.is_dir():
        import tumour_data

        sources.append(Source("tumour", "TCIA brain tumour", "MR", False, {1: "tumour"}))
        for row in tumour_data.read_cases(tumour):
            image, mask = tumour / row["image"], tumour / row["mask"]
            if row["patient"] in tumour_data.EVAL_PATIENTS and row["subset"] == "native":
                cases.append(SourceCase("tumour", row["patient"], row["case"], image, mask, eval_only=True))
            elif row["subset"] == "resampled256" and row["patient"] not in tumour_data.EVAL_PATIENTS:
                def copy(row=row) -> tuple[Path, Path]:
                    folder = work / "sources" / "tumour_nominal_geometry"
                    folder.mkdir(parents=True, exist_ok=True)
                    return tumour_data.fixed_copy(row, tumour, folder)
                cases.append(SourceCase("tumour", row["patient"], row["case"], image, mask, training_copy=copy))
    kbp = data / "openkbp_headneck_ct"
    if kbp.is_dir():
        spec = json.loads((kbp / "dataset.json").read_text())
        names = {int(k): spaced(v) for k, v in spec["labels"].items() if k != "0"}
        sources.append(Source("openkbp", "OpenKBP head and neck", "CT", False, names))
        for entry in spec["training"]:
            cid = Path(entry["image"]).name.split(".")[0]
            cases.append(SourceCase("openkbp", cid, cid, kbp / entry["image"], kbp / entry["label"]))
    ts = data / "totalsegmentator_examples"
    if ts.is_dir():
        classes = json.loads((ts / "totalsegmentator_class_map.json").read_text())
        for key, task, modality, pairs in (
                ("totalseg_ct", "total", "CT", [("example_ct", "example_ct.nii.gz", "example_seg_fast_force_split"),
                                                ("dicom_ct", "ct_dicom_series", "example_seg_dicom")]),
                ("totalseg_mr", "total_mr", "MR", [("example_mr", "example_mr_sm.nii.gz", "example_seg_mr")])):
            sources.append(Source(key, f"TotalSegmentator {modality} example", modality, True,
                                  {int(k): spaced(v) for k, v in classes[task].items()}, tile=True))
            for cid, image, label in pairs:
                cases.append(SourceCase(key, cid, cid, ts / image, ts / f"{label}.nii.gz"))
    return sources, cases


@dataclass(frozen=True)
class Structure:
    value: int
    source: str
    native: int
    name: str
    modality: str
    model_made: bool


def global_structures(sources: list[Source]) -> list[Structure]:
    """One global value per (source, structure), in source order then native value order."""
    out = []
    for source in sources:
        for native in sorted(source.structures):
            out.append(Structure(len(out) + 1, source.key, native, source.structures[native], source.modality,
                                 source.model_made))
    if len(out) >= 255:  # 255 is the ignore value of the training loss
        raise SystemExit(f"{len(out)} structures do not fit a uint8 labelmap below 255")
    return out


def left_out_values(structures: list[Structure], names: list[str]) -> set[int]:
    """The values of every structure (any source) whose name matches one of ``names`` (case, spaces and
    underscores ignored); a name matching nothing is refused, listing a few that exist."""
    chosen = set()
    for name in names:
        hits = {s.value for s in structures if canonical(s.name) == canonical(name)}
        if not hits:
            known = sorted({s.name for s in structures})
            raise SystemExit(f"--leave-out: no structure named {name!r} (known: {', '.join(known[:12])}, ...)")
        chosen |= hits
    return chosen


def label_array(image: sitk.Image) -> np.ndarray:
    return np.rint(sitk.GetArrayFromImage(image)).astype(np.int64)


def assign_roles(sources: list[Source], cases: list[SourceCase], luts: dict[str, np.ndarray], left: set[int],
                 seed: int, n_eval: int, val_patients: dict[str, int]) -> dict[str, str]:
    """case -> "eval" / "val" / "train" / "dropped", by patient and per source, seeded."""
    roles = {}
    for source in sources:
        mine = [c for c in cases if c.source == source.key]
        by_patient: dict[str, list[SourceCase]] = {}
        for case in mine:
            by_patient.setdefault(case.patient, []).append(case)
        rng = np.random.default_rng([seed, zlib.crc32(source.key.encode())])
        order = [sorted(by_patient)[i] for i in rng.permutation(len(by_patient))]
        fixed = [p for p in order if any(c.eval_only for c in by_patient[p])]
        holds_left = [p for p in order if p not in fixed and any(
            int(luts[source.key + ":all"][v]) in left for c in by_patient[p] for v in c.present)]
        trainable = [p for p in order if p not in fixed]
        # a source with its own evaluation patients (tumour: the native scans) uses only those
        eval_patients = set(fixed) or set(holds_left[:max(0, min(n_eval, len(trainable) - 1))])
        useful = [p for p in trainable if p not in eval_patients
                  and any(luts[source.key][v] for c in by_patient[p] for v in c.present)]
        n_val = min(val_patients.get(source.key, 0), max(0, len(useful) - 1))
        val = set(useful[:n_val])
        for patient, group in by_patient.items():
            for case in group:
                useful_case = any(luts[source.key][v] for v in case.present)
                roles[case.case] = ("eval" if patient in eval_patients else "dropped" if not useful_case
                                    else "val" if patient in val else "train")
    return roles


def axis_windows(lo: int, hi: int, n: int, spacing: float, margin_mm: float, min_mm: float, max_mm: float,
                 tile: bool) -> list[tuple[int, int]]:
    """(start, size) windows in native voxels along one axis holding ``lo..hi`` plus the margin."""
    a, b = max(0.0, lo - margin_mm / spacing), min(float(n), hi + 1 + margin_mm / spacing)
    cap = max(1, int(max_mm / spacing))
    want = max(b - a, min_mm / spacing)
    if want <= cap or not tile:
        size = min(n, cap, int(round(want)))
        start = int(round((a + b) / 2 - size / 2))
        return [(min(max(0, start), n - size), size)]
    count = math.ceil((b - a) / cap)
    return [(min(max(0, int(round(s))), n - cap), cap) for s in np.linspace(a, b - cap, count)]


def write_volumes(image: sitk.Image, label: sitk.Image, spacing: float, windows: list[list[tuple[int, int]]],
                  stem: str, folder: Path, integer: bool) -> list[tuple[Path, Path, list[int]]]:
    """Crop each window (all combinations of the per-axis ones), resample it to ``spacing`` (image linear, label
    nearest) and write it; returns (image, label, size) per window."""
    written = []
    combos = [(x, y, z) for x in windows[0] for y in windows[1] for z in windows[2]]
    for number, combo in enumerate(combos):
        index, size = [w[0] for w in combo], [w[1] for w in combo]
        crop = sitk.RegionOfInterest(image, size, index)
        out = resample_to_spacing(crop, [spacing] * 3, sitk.sitkLinear)
        if integer:
            values = np.rint(sitk.GetArrayFromImage(out))
            kind = np.int16 if values.min() >= -32768 and values.max() <= 32767 else np.int32
            cast = sitk.GetImageFromArray(values.astype(kind))
            cast.CopyInformation(out)
            out = cast
        labels = sitk.Resample(sitk.RegionOfInterest(label, size, index), out, sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
        name = f"{stem}_t{number}" if len(combos) > 1 else stem
        paths = folder / "images" / f"{name}.nii.gz", folder / "labels" / f"{name}.nii.gz"
        sitk.WriteImage(out, str(paths[0]), True)
        sitk.WriteImage(labels, str(paths[1]), True)
        written.append((*paths, list(out.GetSize())))
    return written


def training_files(case: SourceCase, source: Source, lut: np.ndarray, settings: argparse.Namespace, work: Path,
                   validation: bool) -> list[tuple[Path, Path, list[int]]]:
    """One case, relabelled to global values (left-out ones 0), oriented RAS, cropped or tiled, resampled."""
    image_path, label_path = case.training_copy() if case.training_copy else (case.image, case.label)
    image, label = read_volume(image_path), read_image(label_path)
    if (label.GetSize() != image.GetSize() or not np.allclose(label.GetOrigin(), image.GetOrigin(), atol=1e-3)
            or not np.allclose(label.GetDirection(), image.GetDirection(), atol=1e-4)):
        label = sitk.Resample(label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0)  # e.g. a flipped axis
    native = label_array(label)
    relabelled = sitk.GetImageFromArray(lut[native].astype(np.uint8))
    relabelled.CopyInformation(image)
    integer = sitk.GetArrayViewFromImage(image).dtype.kind in "iu"
    image, relabelled = sitk.DICOMOrient(image, "RAS"), sitk.DICOMOrient(relabelled, "RAS")
    labelled = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.Cast(label, sitk.sitkUInt8) > 0, "RAS"))
    k, j, i = np.nonzero(labelled)  # the box of every labelled structure (left-out ones too: same crop any build)
    cap = settings.val_size if validation else settings.max_size
    windows = [axis_windows(int(lo.min()), int(lo.max()), n, s, settings.margin, settings.min_size * settings.spacing,
                            cap * settings.spacing, source.tile and not validation)
               for lo, n, s in zip((i, j, k), image.GetSize(), image.GetSpacing())]
    return write_volumes(image, relabelled, settings.spacing, windows, f"{source.key}_{case.case}", work, integer)


def eval_mask(case: SourceCase, native_value: int, name: str, work: Path) -> Path:
    """A 0/1 mask of one structure on the case's native image grid (what the benchmark scores against)."""
    image, label = read_image(case.image), read_image(case.label)
    mask = sitk.GetImageFromArray((label_array(label) == native_value).astype(np.uint8))
    mask.CopyInformation(label)
    if mask.GetSize() != image.GetSize():
        mask = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0.0, sitk.sitkUInt8)
    mask.CopyInformation(image)
    path = work / "eval" / f"{case.source}_{case.case}_{canonical(name)}.nii.gz"
    sitk.WriteImage(mask, str(path), True)
    return path


def sampling_weights(entries: list[dict], sources: dict[str, Source], model_made_share: float) -> None:
    """Each source an equal share (model-made ones ``model_made_share``), split over its entries; mean 1."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry["source"]] = counts.get(entry["source"], 0) + 1
    raw = [(model_made_share if sources[e["source"]].model_made else 1.0) / counts[e["source"]] for e in entries]
    mean = float(np.mean(raw))
    for entry, value in zip(entries, raw):
        entry["weight"] = round(value / mean, 6)


def build(settings: argparse.Namespace) -> dict:
    started = time.time()
    work, data = settings.work.resolve(), settings.data.resolve()
    for shared in {data, SHARED.resolve().parent}:  # the data read, and all of ../shared: read-only
        if work == shared or shared in work.parents:
            raise SystemExit(f"--work {work} is inside the shared data folder {shared}; choose another")
    if (work / "dataset.json").exists() and not settings.force:
        raise SystemExit(f"{work} already holds a data set; pass --force to rebuild it")
    sources, cases = discover(data, work)
    if not sources:
        raise SystemExit(f"no labelled source found under {data}")
    structures = global_structures(sources)
    left = left_out_values(structures, settings.leave_out)
    luts = {}
    for source in sources:
        lut = np.zeros(256, np.int64)
        for s in structures:
            if s.source == source.key:
                lut[s.native] = s.value
        luts[source.key + ":all"] = lut
        luts[source.key] = np.where(np.isin(lut, list(left)), 0, lut)
    for case in cases:
        case.present = set(np.unique(label_array(read_image(case.label))).tolist()) - {0}
        unknown = sorted(v for v in case.present if v > 255 or not luts[case.source + ":all"][v])
        if unknown:
            raise SystemExit(f"{case.label}: label values {unknown} are not structures of {case.source}")
    roles = assign_roles(sources, cases, luts, left, settings.seed, settings.eval_patients, settings.val_patients)
    for sub in ("images", "labels", "eval"):  # --force: a rebuild starts from empty folders
        shutil.rmtree(work / sub, ignore_errors=True)
    for sub in ("images", "labels", "eval"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    by_source = {s.key: s for s in sources}
    sections: dict[str, list[dict]] = {"train": [], "val": []}
    pairs, sizes = [], []
    for number, case in enumerate(cases):
        role = roles[case.case]
        if role in sections:
            for image, label, size in training_files(case, by_source[case.source], luts[case.source], settings,
                                                     work, role == "val"):
                sections[role].append({"image": os.path.relpath(image, work), "label": os.path.relpath(label, work),
                                       "source": case.source, "patient": case.patient})
                sizes.append(size)
        elif role == "eval":
            for native in sorted(case.present):
                value = int(luts[case.source + ":all"][native])
                if value in left:
                    name = by_source[case.source].structures[native]
                    mask = eval_mask(case, native, name, work)
                    pairs.append({"image": os.path.relpath(case.image, work), "mask": os.path.relpath(mask, work),
                                  "structure": name, "value": value, "source": case.source, "case": case.case,
                                  "patient": case.patient})
        if (number + 1) % 50 == 0:
            print(f"{number + 1}/{len(cases)} cases", flush=True)
    sampling_weights(sections["train"], by_source, settings.model_made_share)
    labels = {"0": "background", **{str(s.value): f"{s.name} ({by_source[s.source].title})"
                                    for s in structures if s.value not in left}}
    spec = {"name": f"prompt-3d training set (left out: {', '.join(settings.leave_out) or 'none'})",
            "description": "every labelled structure of ../shared/data at 1.5 mm, global label values "
                           "(structures.json); built by benchmarks/prompt3d_data.py", "licence": LICENCE,
            "modality": {"0": "any"}, "labels": labels, "training": sections["train"],
            "validation": sections["val"]}
    counts = {key: {role: sum(1 for c in cases if c.source == key and roles[c.case] == role)
                    for role in ("train", "val", "eval", "dropped")} for key in by_source}
    for key in counts:
        counts[key]["train_entries"] = sum(1 for e in sections["train"] if e["source"] == key)
        counts[key]["val_entries"] = sum(1 for e in sections["val"] if e["source"] == key)
        counts[key]["patch_share"] = round(sum(e["weight"] for e in sections["train"] if e["source"] == key)
                                           / max(1, len(sections["train"])), 3)
    table = {str(s.value): {"source": s.source, "name": s.name, "native_value": s.native, "modality": s.modality,
                            "model_made": s.model_made, "left_out": s.value in left} for s in structures}
    disk = sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    voxels = [int(np.prod(s)) for s in sizes]
    split = {"seed": settings.seed, "spacing_mm": [settings.spacing] * 3, "orientation": "RAS",
             "leave_out": settings.leave_out, "left_out_values": sorted(left), "cases": counts,
             "patients": {key: {role: sorted({c.patient for c in cases if c.source == key and roles[c.case] == role})
                                for role in ("val", "eval")} for key in by_source},
             "sizes": {"max_size": settings.max_size, "min_size": settings.min_size, "val_size": settings.val_size,
                       "margin_mm": settings.margin, "largest": max(sizes, key=np.prod) if sizes else None,
                       "median_voxels": int(np.median(voxels)) if voxels else 0,
                       "total_megavoxels": round(sum(voxels) / 1e6, 1)},
             "n_eval_pairs": len(pairs), "disk_bytes": disk, "seconds": round(time.time() - started, 1)}
    for name, value in (("dataset.json", spec), ("structures.json", table), ("eval_pairs.json", pairs),
                        ("split.json", split)):
        (work / name).write_text(json.dumps(value, indent=1) + "\n")
    return split


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--leave-out", type=lambda t: [n.strip() for n in t.split(",") if n.strip()],
                        default=list(LEAVE_OUT), help="structure names, comma-separated ('' for none)")
    parser.add_argument("--spacing", type=float, default=1.5)
    parser.add_argument("--max-size", type=int, default=128, help="voxels per axis of a training volume")
    parser.add_argument("--min-size", type=int, default=64, help="voxels per axis of context, where there is some")
    parser.add_argument("--val-size", type=int, default=72, help="voxels per axis of a validation volume")
    parser.add_argument("--margin", type=float, default=24.0, help="mm around the labelled structures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-patients", type=int, default=10, help="per source holding a left-out structure")
    parser.add_argument("--val-patients", type=lambda t: {k: int(v) for k, v in (p.split("=") for p in t.split(","))},
                        default=dict(VAL_PATIENTS), help="source=N,... (default %(default)s)")
    parser.add_argument("--model-made-share", type=float, default=0.5)
    parser.add_argument("--force", action="store_true", help="rebuild an existing work folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    split = build(settings)
    print(json.dumps(split, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
