"""``summary.csv`` of a ``cad batch``: rewritten atomically after every case, read back by ``--resume``, and joined
across shards by ``--merge``.

Columns: ``id, input, status, error, output``, then ``volume_ml:<label name>`` per label of the model, then
``seconds, warnings`` (warnings joined by `` | ``). Rows are sorted by id. Every rewrite goes through a temporary
file renamed over the old one, so a reader (or a ``kill -9``) never sees half a summary.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cadcore.errors import CadError
from cadcore.io.writing import atomic_path

FIRST = ["id", "input", "status", "error", "output"]
LAST = ["seconds", "warnings"]


def summary_name(shard: tuple[int, int] | None) -> str:
    """``summary.csv``; a shard's own ``summary-shard-K-of-N.csv``, so shards can share one output folder."""
    return "summary.csv" if shard is None else f"summary-shard-{shard[0]}-of-{shard[1]}.csv"


def columns(labels: list[dict[str, Any]]) -> list[str]:
    return [*FIRST, *(f"volume_ml:{label['name']}" for label in labels), *LAST]


def write_summary(path: Path, header: list[str], rows: dict[str, dict[str, str]]) -> None:
    """Write every row (sorted by id) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case_id in sorted(rows):
        writer.writerow({key: rows[case_id].get(key, "") for key in header})
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def read_summary(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """A summary's header and rows by id; a file that is not a batch summary is refused in one line."""
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CadError(f"cannot read the batch summary ({exc})", path) from exc
    if header[: len(FIRST)] != FIRST or header[-len(LAST):] != LAST:
        raise CadError(f"is not a cad batch summary (columns {', '.join(header[:6])}...)", path)
    by_id: dict[str, dict[str, str]] = {}
    for row in rows:
        if row.get("id") in by_id:
            raise CadError(f"case {row.get('id')!r} appears twice", path)
        by_id[row["id"]] = row
    return header, by_id


def complete(row: dict[str, str] | None, files: list[Path], model_id: str) -> bool:
    """A case that ``--resume`` may skip: an ``ok`` row, and every output present and reading back (the labelmap's
    header and every byte; a DICOM SEG parsed by pydicom; the sidecar naming this output and model)."""
    from cadcore.io.readback import check_image_file

    if row is None or row.get("status") != "ok":
        return False
    output, sidecar, *others = files
    try:
        report = json.loads(sidecar.read_text(encoding="utf-8"))
        if report.get("output") != str(output) or report.get("model") != model_id:
            return False
        if output.name.endswith(".dcm"):
            from cadcore.io.dicom_seg import check_dicom_file

            check_dicom_file(output, output)
        else:
            check_image_file(output, output)
        for other in others:
            check_image_file(other, other)
    except Exception:  # noqa: BLE001 - anything unreadable is simply redone
        return False
    return True


def merge(folders: list[Path], output: Path) -> tuple[int, int]:
    """Join the ``summary*.csv`` of ``folders`` into ``output``; (ok, failed) counts. Every summary must have the
    same columns (one model), and a case may appear only once (shards never overlap)."""
    header: list[str] | None = None
    rows: dict[str, dict[str, str]] = {}
    where: dict[str, Path] = {}
    found = 0
    for folder in folders:
        if not folder.is_dir():
            raise CadError("is not a batch output folder", folder)
        for path in sorted(folder.glob("summary*.csv")):
            if path.resolve() == output.resolve():
                continue
            found += 1
            this_header, this_rows = read_summary(path)
            if header is None:
                header = this_header
            elif this_header != header:
                raise CadError("has other columns than the summaries before it (another model?)", path)
            for case_id, row in this_rows.items():
                if case_id in rows:
                    raise CadError(f"case {case_id!r} is also in {where[case_id]}", path)
                rows[case_id], where[case_id] = row, path
    if header is None or not found:
        raise CadError("no summary*.csv found in the given folders", folders[0])
    write_summary(output, header, rows)
    failed = sum(1 for row in rows.values() if row.get("status") != "ok")
    return len(rows) - failed, failed
