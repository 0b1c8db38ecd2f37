"""``cad interact``: one structure from clicks, a box or scribbles, with any segmentation model package or MONAI bundle.

The cold path of :class:`cadcore.segmentation.interactive.InteractiveSession` (one prompt per process): every path
and the model are checked before the image is read, then the mask (0/1 on the input's grid), its sidecar and the
optional uncertainty map are written together or not at all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cadcore.device import configure_cpu_threads, pick_device
from cadcore.errors import CadError
from cadcore.io.images import read_image, read_volume
from cadcore.io.labelmaps import write_labelmap
from cadcore.io.writing import all_or_none, check_output_file, check_output_path, write_image, write_json
from cadcore.segmentation.interactive import InteractiveSession, Prompts
from cadcore.segmentation.interactive_request import check_interact_request, interact_report, label_entry

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
    package = check_interact_request(args.model, args.label, positive, args.box, bool(args.scribble),
                                     bool(args.uncertainty), args.input)
    package.verify()
    image = read_volume(args.input, args.series)
    box = (tuple(args.box[:3]), tuple(args.box[3:])) if args.box else None
    prompts = Prompts(positive, negative, box,  # type: ignore[arg-type]
                      read_image(args.scribble) if args.scribble else None,
                      read_image(args.previous) if args.previous else None)
    configure_cpu_threads()
    session = InteractiveSession(package, image, pick_device(args.device), source=str(args.input))
    result = session.segment(prompts, args.label, uncertainty=bool(args.uncertainty))
    label = label_entry(package, args.label)
    report = interact_report(package, args.label, prompts, result, image, {
        "input": str(args.input), "output": str(output), "uncertainty": args.uncertainty}, started)
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
