"""The cases of a ``cad batch``: found in a folder, listed in a CSV or in a ``dataset.json``; ids; shards.

* A folder is walked recursively without following symbolic links (a link loop, or a link to a whole archive, must
  not turn a cohort run into a crawl). A file with an image suffix (``.nii.gz``, ``.nii``, ``.nrrd``, ``.nhdr``,
  ``.mha``, ``.mhd``) is a case; a folder that directly holds DICOM files (the ``DICM`` preamble, or a ``.dcm``
  name) is one case, a DICOM series, and is not searched further. Hidden entries (a leading dot: our own temporary
  folders among them) and ``.seg.nrrd`` files (segmentations, not images) are skipped, and so is the output folder
  when it lies inside the input folder.
* A CSV has one case per row, ``image[,id]`` (a first row reading ``image`` is a header); relative paths are taken
  from the CSV's folder.
* A ``dataset.json`` (MSD style) gives its ``training``, ``validation`` and ``test`` entries' images (a string or
  ``{"image": ...}``), relative to its folder.

A case's id is the file name without its image suffix, the series folder's name, or the CSV's id. Ids name the
outputs, so two cases with one id are refused in one line (both paths named) before any work: rename one, or list
the cases in a CSV with explicit ids.

Shards: the cases are sorted by id and shard ``K/N`` takes every N-th from the K-th, so N shards partition the
cohort exactly, the same way on every machine, whatever order the file system lists them in.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cadcore.errors import CadError
from cadcore.io.images import VOLUME_SUFFIXES, suffix_of


@dataclass(frozen=True)
class Case:
    id: str
    input: Path
    dicom: bool  # a DICOM series folder (not a file)


def find_cases(inputs: str | Path, exclude: Path | None = None) -> list[Case]:
    """Every case ``inputs`` names (a folder, a ``.csv`` or a ``.json``), sorted by id; duplicate ids refused."""
    inputs = Path(inputs)
    if not inputs.exists():
        raise CadError("not found", inputs)
    if inputs.is_dir():
        cases = _folder_cases(inputs, exclude.resolve() if exclude is not None else None)
    elif inputs.suffix.lower() == ".csv":
        cases = _csv_cases(inputs)
    elif inputs.suffix.lower() == ".json":
        cases = _dataset_cases(inputs)
    else:
        raise CadError("batch inputs must be a folder, a CSV (image[,id]) or a dataset.json", inputs)
    if not cases:
        raise CadError("no cases found (image files, DICOM series folders, or CSV/dataset.json entries)", inputs)
    seen: dict[str, Case] = {}
    for case in cases:
        if not case.id or case.id.startswith(".") or "/" in case.id or os.sep in case.id:
            raise CadError(f"case id {case.id!r} cannot name an output file", case.input)
        if case.id in seen:
            raise CadError(f"two cases have the id {case.id!r} ({seen[case.id].input} and {case.input}); rename one "
                           f"or list the cases in a CSV with an id column", inputs)
        seen[case.id] = case
    return sorted(cases, key=lambda case: case.id)


def take_shard(cases: list[Case], shard: tuple[int, int] | None) -> list[Case]:
    """Shard ``(K, N)``: every N-th case of the id-sorted list, starting at the K-th."""
    if shard is None:
        return list(cases)
    index, count = shard
    return sorted(cases, key=lambda case: case.id)[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` with 0 <= K < N."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise CadError(f"--shard must be K/N (K counted from 0), got {text!r}") from None
    if not 0 <= index < count:
        raise CadError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return index, count


def is_dicom_file(path: str | Path) -> bool:
    """A DICOM file by its preamble (``DICM`` at byte 128), or by a ``.dcm`` name (a damaged file still counts)."""
    if str(path).lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _folder_cases(folder: Path, exclude: Path | None) -> list[Case]:
    cases: list[Case] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        here = Path(root)
        if exclude is not None and here.resolve() == exclude:
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (here / d).is_symlink())
        visible = sorted(f for f in files if not f.startswith(".") and not (here / f).is_symlink())
        if any(is_dicom_file(here / name) for name in visible):
            cases.append(Case(here.name, here, True))
            dirs[:] = []  # the series' own folder is the case; nothing below it is another
            continue
        for name in visible:
            suffix = suffix_of(name)
            if suffix in VOLUME_SUFFIXES and not name.lower().endswith(".seg.nrrd"):
                cases.append(Case(name[: -len(suffix)], here / name, False))
    return cases


def _case_for(path: Path, case_id: str | None) -> Case:
    dicom = path.is_dir()
    if case_id is None:
        case_id = path.name if dicom else path.name[: len(path.name) - len(suffix_of(path))]
    return Case(case_id, path, dicom)


def _csv_cases(path: Path) -> list[Case]:
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = [row for row in csv.reader(stream) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CadError(f"cannot read the CSV ({exc})", path) from exc
    if rows and rows[0][0].strip().lower() == "image":
        rows = rows[1:]
    cases = []
    for number, row in enumerate(rows, start=1):
        if len(row) > 2:
            raise CadError(f"row {number}: expected image[,id], got {len(row)} columns", path)
        image = Path(row[0].strip())
        case_id = row[1].strip() if len(row) == 2 and row[1].strip() else None
        cases.append(_case_for(image if image.is_absolute() else path.parent / image, case_id))
    return cases


def _dataset_cases(path: Path) -> list[Case]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CadError(f"cannot read the dataset description ({exc})", path) from exc
    if not isinstance(data, dict):
        raise CadError("a dataset.json must be an object with training/validation/test lists", path)
    cases = []
    for key in ("training", "validation", "test"):
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise CadError(f"{key!r} must be a list", path)
        for entry in entries:
            image = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(image, str):
                raise CadError(f"a {key!r} entry has no image path: {entry!r}", path)
            image_path = Path(image)
            cases.append(_case_for(image_path if image_path.is_absolute() else path.parent / image_path, None))
    return cases
