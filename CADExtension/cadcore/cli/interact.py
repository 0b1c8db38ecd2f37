"""``cad interact``: one structure from clicks, a box or scribbles, with any segmentation model package or MONAI bundle.

The cold path of :class:`cadcore.segmentation.interactive.InteractiveSession` (one prompt per process): every path
and the model are checked before the image is read, then the mask (0/1 on the input's grid), its sidecar and the
optional uncertainty map are written together or not at all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import SimpleITK as sitk

from cadcore.device import configure_cpu_threads, pick_device
from cadcore.errors import CadError
from cadcore.io.images import read_image, read_volume
from cadcore.io.labelmaps import write_labelmap
from cadcore.io.writing import all_or_none, check_output_file, check_output_path, write_image, write_json
from cadcore.registry import find_model_or_bundle
from cadcore.registry.bundles import METADATA_FILE, BundleModel
from cadcore.segmentation.interactive import UNCERTAINTY_NEEDS_PROBABILITIES, InteractiveSession, Prompts

UNCERTAINTY_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    output, sidecar_path = Path(args.output), Path(f"{args.output}.json")
    targets = [output, sidecar_path, *([Path(args.uncertainty)] if args.uncertainty else [])]
    if len({p.resolve() for p in targets} | {Path(args.input).resolve()}) != len(targets) + 1:
        raise CadError("an output is named like the input or like another output", output)
    check_output_path(output, args.force)
    check_output_file(sidecar_path, args.force, "output sidecar exists")
    if args.uncertainty:
        check_output_path(args.uncertainty, args.force, UNCERTAINTY_SUFFIXES)
    positive = tuple(tuple(point) for sign, point in args.click if sign == "+")
    negative = tuple(tuple(point) for sign, point in args.click if sign == "-")
    if not (positive or args.box or args.scribble):
        raise CadError("give at least one positive click (--click=+R,A,S), a --box or a --scribble", args.input)
    package = find_model_or_bundle(args.model)
    bundle = isinstance(package, BundleModel)
    if bundle and args.uncertainty:
        raise CadError(UNCERTAINTY_NEEDS_PROBABILITIES, package.folder)
    if package.task != "segmentation":
        raise CadError(f"is a {package.task} model; cad interact needs a segmentation model", package.folder)
    names = package.label_names()
    if args.label not in names:
        raise CadError(f"--label {args.label} is not one of the model's labels ({', '.join(map(str, names))})",
                       package.folder / (METADATA_FILE if bundle else "model.json"))
    package.verify()
    image = read_volume(args.input, args.series)
    box = (tuple(args.box[:3]), tuple(args.box[3:])) if args.box else None
    prompts = Prompts(positive, negative, box,  # type: ignore[arg-type]
                      read_image(args.scribble) if args.scribble else None,
                      read_image(args.previous) if args.previous else None)
    configure_cpu_threads()
    session = InteractiveSession(package, image, pick_device(args.device), source=str(args.input))
    result = session.segment(prompts, args.label, uncertainty=bool(args.uncertainty))
    label = next(entry for entry in package.labels if int(entry["value"]) == args.label)
    report = {
        "model": package.id, "model_version": package.version, "model_format": "bundle" if bundle else "package",
        "label": args.label, "name": label["name"],
        "input": str(args.input), "output": str(output), "uncertainty": args.uncertainty,
        "prompts": prompts.describe(),
        "region": {"index": list(result.region[0]), "size": list(result.region[1]),
                   "spacing": list(image.GetSpacing())},
        "voxels": int(sitk.GetArrayViewFromImage(result.mask).sum()),
        "suggested_click": result.suggested_click, "warnings": result.warnings,
        "timings": {**result.timings, "total_s": round(time.perf_counter() - started, 3)},
    }
    with all_or_none(replace=args.force):
        write_labelmap(result.mask, output, [{**label, "value": 1}])
        if result.uncertainty is not None:
            write_image(result.uncertainty, args.uncertainty)
        write_json(sidecar_path, report)
    print(f"mask:    {output} ({report['voxels']} voxels of {label['name']})")
    print(f"sidecar: {sidecar_path}")
    if result.suggested_click:
        print(f"suggested next click (RAS mm): {', '.join(f'{v:.1f}' for v in result.suggested_click)}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0
