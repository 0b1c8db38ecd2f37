"""One ``cad batch`` worker: the model loaded once, the next case read while the network runs, each case's outputs.

``segment_image`` asks ``load_network`` for its network on every call (right for ``cad segment``, which runs once).
A batch worker runs inside :func:`cadcore.registry.networks.reuse_networks`: ``load_network`` then keeps each network
it built, keyed by the package's weights file, the stage (role, weight prefix, architecture) and the device, so the
weights are read, hashed and built once per worker process instead of once per case. The network is used for inference
only and ``fold_batch_norm`` is idempotent, so reusing it changes no output (the tests compare against
``cad segment``). MONAI bundles load their weights inside ``run_bundle`` and are not cached here.

Reading overlaps computing: :func:`prefetched` reads case ``i + 1`` in a thread while case ``i`` runs (SimpleITK and
torch release the GIL), at most one case ahead, so memory holds two volumes at most.

Every case's outputs are published together (:func:`cadcore.io.writing.all_or_none`): the labelmap (or DICOM SEG),
the uncertainty map, then the sidecar last, each written under a temporary name and renamed; a case's error never
stops the batch: it becomes its summary row.
"""

from __future__ import annotations

import glob
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.io.batch_inputs import Case
from cadcore.io.images import read_volume
from cadcore.io.writing import all_or_none, write_json


@dataclass(frozen=True)
class Options:
    """What every case of one batch shares (plain values: sent to worker processes as is)."""

    model: str
    out_dir: str
    format: str  # "nii.gz", "nrrd", "seg.nrrd" or "dcm"
    device: str = "auto"
    fast: bool = False
    uncertainty: bool = False

    def output(self, case_id: str) -> Path:
        return Path(self.out_dir) / f"{case_id}.{self.format}"

    def sidecar(self, case_id: str) -> Path:
        return Path(f"{self.output(case_id)}.json")

    def uncertainty_file(self, case_id: str) -> Path:
        return Path(self.out_dir) / f"{case_id}_uncertainty.nii.gz"

    def files(self, case_id: str) -> list[Path]:
        return [self.output(case_id), self.sidecar(case_id), *([self.uncertainty_file(case_id)]
                                                                if self.uncertainty else [])]


def prefetched(cases: Iterable[Case]) -> Iterator[tuple[Case, sitk.Image | None, BaseException | None, float]]:
    """``(case, image or None, the read error or None, seconds spent reading)``, one case ahead.

    The next case is both *taken* and read in a background thread while the caller works on the current one: a
    worker's queue may have nothing yet (the parent sends the next case when this one's row arrives, and the end
    marker only when every case is done), so waiting for it must not hold up the case in hand. The thread is a
    daemon, so a worker stopped while it waits on an empty queue still exits."""

    iterator = iter(cases)

    def fetch(box: queue.Queue) -> None:
        try:
            case = next(iterator, None)
            if case is None:
                box.put(None)
                return
            started = time.perf_counter()
            try:
                box.put((case, read_volume(case.input), None, time.perf_counter() - started))
            except Exception as exc:  # noqa: BLE001 - a bad case is recorded, never raised
                box.put((case, None, exc, time.perf_counter() - started))
        except BaseException as exc:  # noqa: BLE001 - the iterator itself failed: raised in the caller
            box.put(exc)

    def start() -> queue.Queue:
        box: queue.Queue = queue.Queue(maxsize=1)
        threading.Thread(target=fetch, args=(box,), daemon=True, name="cad-prefetch").start()
        return box

    box = start()
    while True:
        item = box.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            return
        box = start()
        yield item
        del item


def one_line(exc: BaseException) -> str:
    """A case's error as one line (the CLI's own form for CadError, the exception's first line otherwise)."""
    if isinstance(exc, CadError):
        return str(exc).splitlines()[0] if str(exc) else "error"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def remove_outputs(options: Options, case_id: str) -> None:
    """A case about to be redone: its old outputs (possibly half-written by a killed run) and any temporary folder
    a killed writer left beside them (``.<name>.<random>``) go first, so a failed redo leaves nothing that looks
    valid."""
    for path in options.files(case_id):
        path.unlink(missing_ok=True)
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)


def segment_case(case: Case, image: sitk.Image, package: Any, options: Options, replace: bool,
                 progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Segment one read case and publish its outputs; returns the sidecar written."""
    from cadcore.io.labelmaps import write_labelmap
    from cadcore.segmentation.outputs import sidecar, write_uncertainty
    from cadcore.segmentation.predict import segment_image

    started = time.perf_counter()
    files = None
    if options.format == "dcm":  # the series must be one a DICOM SEG can reference: known before computing
        from cadcore.io.dicom_seg import check_seg_source, source_files

        files = source_files(image, case.input)
        check_seg_source(files[0])
    result = segment_image(image, package, options.device, progress=_Stages(progress) if progress else None,
                           fast=options.fast, uncertainty=options.uncertainty)
    output, sidecar_path = options.output(case.id), options.sidecar(case.id)
    uncertainty_file = options.uncertainty_file(case.id) if options.uncertainty else None
    report = sidecar(package, result, image, time.perf_counter() - started,
                     {"input": str(case.input), "output": str(output), "probabilities": None, "overlay_png": None,
                      "uncertainty": str(uncertainty_file) if uncertainty_file else None})
    with all_or_none(replace=replace):
        if options.format == "dcm":
            from cadcore.io.dicom_seg import write_dicom_seg

            write_dicom_seg(result.labels, files, package.labels, package.id, package.version, output)
        else:
            write_labelmap(result.labels, output, package.labels)
        if uncertainty_file is not None:
            write_uncertainty(result.uncertainty, image, uncertainty_file)
        write_json(sidecar_path, report)  # last: a sidecar means the case's every output is in place
    return report


class _Stages:
    """``segment_image``'s progress stages as one case's 0–1 fraction (preprocess 10 %, network 80 %, rest 10 %)."""

    SHARES = {"preprocess": (0.0, 0.1), "network": (0.1, 0.8), "postprocess": (0.9, 0.1)}

    def __init__(self, report: Callable[[str, float], None]) -> None:
        self.report = report

    def update(self, stage: str, fraction: float = 0.0) -> None:
        if stage in self.SHARES:
            start, width = self.SHARES[stage]
            self.report(stage, start + width * max(0.0, min(1.0, fraction)))


def summary_row(case: Case, options: Options, labels: list[dict[str, Any]], seconds: float,
                report: dict[str, Any] | None = None, error: str = "") -> dict[str, str]:
    """The summary.csv row of a finished case (``report``: its sidecar when it succeeded)."""
    row = {"id": case.id, "input": str(case.input), "status": "ok" if report is not None else "failed",
           "error": error, "output": str(options.output(case.id)) if report is not None else "",
           "seconds": f"{seconds:.3f}",
           "warnings": " | ".join(report.get("warnings", [])) if report is not None else ""}
    volumes = {int(entry["value"]): entry.get("volume_ml") for entry in (report or {}).get("labels", [])}
    for label in labels:
        value = volumes.get(int(label["value"]))
        row[f"volume_ml:{label['name']}"] = f"{value:.4f}" if value is not None else ""
    return row


def run_cases(cases: Iterable[Case], package: Any, options: Options, replace: bool,
              on_start: Callable[[Case], None], on_done: Callable[[dict[str, str]], None],
              progress: Callable[[str, float], None] | None = None) -> None:
    """Run ``cases`` in order, reading ahead; ``on_done`` gets each case's summary row as soon as it is known."""
    for case, image, error, read_seconds in prefetched(cases):
        on_start(case)
        started = time.perf_counter()
        report = None
        if replace:
            remove_outputs(options, case.id)
        if error is None:
            try:
                report = segment_case(case, image, package, options, replace, progress)
            except Exception as exc:  # noqa: BLE001 - recorded in the summary, the batch goes on
                error = exc
        del image
        on_done(summary_row(case, options, package.labels, read_seconds + time.perf_counter() - started, report,
                            one_line(error) if error is not None else ""))
