"""``cad segment``: check every output path and the model before reading the image, then write all outputs or none.

An output named ``*.dcm`` is a DICOM SEG (:mod:`cadcore.io.dicom_seg`) referencing the input series, which must
then be a DICOM series folder (refused in one line before anything is read otherwise).

Outputs are published without replacing anything unless ``--force`` (a second ``cad segment`` racing onto the same
name is refused, exit 2); an interruption (SIGTERM/SIGINT, armed in :func:`cadcore.cli.main`), a full disk or any
other failure while writing removes what this run had already published, so a labelmap never lacks its sidecar.
Out-of-distribution warnings (:mod:`cadcore.segmentation.ood_guard`) are printed on stderr as ``warning: ...``;
``--strict`` checks them right after reading the image and refuses (exit 2, nothing computed or written).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cadcore.device import configure_cpu_threads
from cadcore.errors import CadError
from cadcore.io.images import LABELMAP_SUFFIXES, read_volume
from cadcore.io.writing import all_or_none, check_output_file, check_output_path, write_json
from cadcore.progress import StagedProgress
from cadcore.segmentation.outputs import PROBABILITY_SUFFIXES, sidecar, write_probabilities, write_uncertainty
from cadcore.segmentation.predict import segment_image, segmentation_model


def run(args: argparse.Namespace) -> int:
    """Validate everything first, compute, then write the outputs (labelmap, sidecar, probabilities)."""
    from cadcore.io.labelmaps import write_labelmap

    started = time.perf_counter()
    output, sidecar_path = Path(args.output), Path(f"{args.output}.json")
    extra_outputs = (args.probabilities, args.png, args.uncertainty)
    _refuse_repeated(Path(args.input), [output, sidecar_path, *(Path(p) for p in extra_outputs if p)])
    dicom_seg = output.name.lower().endswith(".dcm")
    if dicom_seg:  # DICOM SEG: the input must be a DICOM series with study and frame of reference, checked first
        from cadcore.io.dicom_seg import check_series_input

        check_series_input(args.input, args.series)
        check_output_file(output, args.force)
    else:
        check_output_path(output, args.force, (*LABELMAP_SUFFIXES, ".dcm"))
    check_output_file(sidecar_path, args.force, "output sidecar exists")
    if args.probabilities:
        check_output_path(args.probabilities, args.force, PROBABILITY_SUFFIXES)
    if args.png:
        check_output_path(args.png, args.force, (".png",))
    if args.uncertainty:
        check_output_path(args.uncertainty, args.force, PROBABILITY_SUFFIXES)
    package = segmentation_model(args.model, args.overlap, args.fast, bool(args.probabilities), bool(args.uncertainty))
    package.verify()
    image = read_volume(args.input, args.series)
    guard_warnings = _out_of_distribution(image, package, args.input, args.strict)
    configure_cpu_threads()
    progress = StagedProgress({"preprocess": 1, "network": 8, "postprocess": 1, "write": 0.5})
    completed = False
    try:
        result = segment_image(image, package, args.device, args.overlap, args.batch_size,
                               keep_probabilities=bool(args.probabilities), use_cascade=not args.no_cascade,
                               progress=progress, fast=args.fast, uncertainty=bool(args.uncertainty),
                               guard_warnings=guard_warnings)
        report = sidecar(package, result, image, time.perf_counter() - started, {
            "input": str(args.input), "output": str(args.output),
            "probabilities": str(args.probabilities) if args.probabilities else None,
            "overlay_png": str(args.png) if args.png else None,
            "uncertainty": str(args.uncertainty) if args.uncertainty else None})
        progress.update("write", 0.0)
        with all_or_none(replace=args.force):  # a sidecar never describes a missing file, nor the reverse
            if dicom_seg:
                from cadcore.io.dicom_seg import source_files, write_dicom_seg

                write_dicom_seg(result.labels, source_files(image, args.input), package.labels, package.id,
                                package.version, output)
            else:
                write_labelmap(result.labels, output, package.labels)
            if args.probabilities:
                write_probabilities(result.probabilities, image, Path(args.probabilities))
            if args.uncertainty:
                write_uncertainty(result.uncertainty, image, Path(args.uncertainty))
            if args.png:
                from cadcore.io.overlay import render_overlay

                render_overlay(image, result.labels, package.labels, args.png,
                               f"{package.id} on {Path(args.input).name}")
            write_json(sidecar_path, report)  # last: a sidecar means every output is in place
        progress.update("write", 1.0)
        completed = True
    finally:
        progress.close(completed)
    print(f"segmentation: {output}")
    print(f"sidecar:      {sidecar_path}")
    if args.png:
        print(f"overlay PNG:  {args.png}")
    if args.uncertainty:
        print(f"uncertainty:  {args.uncertainty} (mean {report['uncertainty']['mean']:.3f} over the labels)")
    for label in report["labels"]:
        print(f"  {label['value']:>3}  {label['name']:<32} {label['volume_ml']:8.3f} mL")
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    for note in report.get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _out_of_distribution(image, package, source, strict: bool) -> list[str] | None:
    """The guard's warnings, computed once; ``--strict``: the first one as the one-line error, before anything is
    computed. None for a bundle (not guarded)."""
    from cadcore.registry.packages import ModelPackage
    from cadcore.segmentation.ood_guard import check

    if not isinstance(package, ModelPackage):
        return None
    warnings = check(image, package.card)
    if warnings and strict:
        raise CadError(f"{warnings[0]} (refused by --strict)", source)
    return warnings


def _refuse_repeated(source: Path, targets: list[Path]) -> None:
    """Two outputs with one name (``-o x.nrrd --probabilities x.nrrd``) would overwrite each other, and an output
    named like the input would replace it (even ``--force`` does not mean that)."""
    seen: dict[Path, str] = {source.resolve(): "the input"}
    for target in targets:
        key = target.resolve()
        if key in seen:
            raise CadError(f"is given twice (as {seen[key]} and as an output)", target)
        seen[key] = "an output"
