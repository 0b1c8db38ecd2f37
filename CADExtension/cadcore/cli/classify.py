"""``cad classify``: parse the ROI flags, check every path before computing, write the result JSON and heatmap.

No progress bar: nothing is drawn on stderr, so a refusal is always its one line."""

from __future__ import annotations

import argparse
from pathlib import Path

from cadcore.classification.predict import classify_image
from cadcore.device import configure_cpu_threads
from cadcore.errors import CadError
from cadcore.io.images import read_image, read_volume
from cadcore.io.writing import all_or_none, check_output_file, check_output_path, write_image, write_json
from cadcore.registry.packages import find_model

HEATMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def _triple(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as exc:
        raise CadError(f"{what} must be numbers separated by commas, got {text!r}") from exc
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise CadError(f"{what} needs 1 or 3 values, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    output = check_output_file(args.output, args.force)
    if args.heatmap:
        check_output_path(args.heatmap, args.force, HEATMAP_SUFFIXES)
        if Path(args.heatmap).resolve() == output.resolve():
            raise CadError("is given as both the result JSON and the heatmap", output)
    for source in (args.input, args.mask):
        if source and Path(source).resolve() in (output.resolve(), Path(args.heatmap or output).resolve()):
            raise CadError("is given as both an input and an output (even --force does not replace an input)",
                           source)
    if args.mask and args.center:
        raise CadError("give either --mask/--label or --center/--size, not both")
    centre = _triple(args.center, "--center")
    size = _triple(args.size, "--size")
    package = find_model(args.model)
    if package.task != "classification":
        raise CadError(f"is a {package.task} model; cad classify needs a classification model", package.folder)
    package.verify()
    image = read_volume(args.input, getattr(args, "series", None))
    mask = read_image(args.mask) if args.mask else None
    configure_cpu_threads()
    source = args.mask if args.mask else args.input
    result = classify_image(image, package, mask, args.label, centre, size, bool(args.heatmap), args.heatmap_class,
                            args.device, source=str(source))
    with all_or_none(replace=args.force):  # the result JSON and its heatmap: both or neither
        if result.heatmap is not None:
            write_image(result.heatmap, args.heatmap)
            result.report["heatmap"] = str(args.heatmap)
        write_json(output, result.report)
    report = result.report
    print(f"{report['model']}: {report['predicted']}  " + "  ".join(
        f"{name} {p:.3f}" for name, p in report["probabilities"].items()))
    if report["heatmap"]:
        peak = ", ".join(f"{v:.1f}" for v in report["heatmap_peak_ras"])
        print(f"heatmap: {report['heatmap']} (peak at RAS {peak} mm)")
    print(f"result: {output}")
    return 0
