"""Convert hippodeep's three PyTorch state dicts into the shipped package ``hippocampus-whole-head``.

Run once by a maintainer (see tools/README.md), from the repository root::

    PYTHONPATH=CADExtension .venv/bin/python tools/convert_hippodeep.py ../shared/weights/hippodeep \\
        CADExtension/cadcore/models/hippocampus-whole-head

The sources are ``bthyreau/hippodeep_pytorch``'s ``torchparams/*.pt`` (legacy pickles: read only with
``torch.load(..., weights_only=True)``, which rebuilds tensors and plain containers and runs no code). Each state dict
must hold exactly the tensors of the engine's network (``cadcore.registry.hippodeep_networks``), with the same
shapes; anything else is refused in one line before anything is written. The package's ``model.json`` records each
source file's sha256, and after writing every tensor read back from ``model.safetensors`` is compared with its source,
exactly. ``MODEL_CARD.md`` is kept by hand beside them (it holds the measured figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from cadcore.errors import CadError
from cadcore.registry.locations import sha256_of

REPOSITORY = "https://github.com/bthyreau/hippodeep_pytorch"
COMMIT = "310305fe5a928b1da3e98e7c1384490881690593"
CITATION = ("Thyreau B, Sato K, Fukuda H, Taki Y. Segmentation of the hippocampus by transferring algorithmic "
            "knowledge for large cohort processing. Medical Image Analysis 43:214-228 (2018), "
            "doi:10.1016/j.media.2017.11.004")
# weight prefix in model.safetensors → (source file under the weights folder, the card's network spec)
SOURCES: dict[str, tuple[str, dict[str, Any]]] = {
    "": ("torchparams/hippodeep.pt", {"name": "HippodeepHippo", "params": {"in_channels": 1, "features": 48}}),
    "head.": ("torchparams/params_head_00075_00000.pt",
              {"name": "HippodeepHead", "params": {"in_channels": 1, "out_channels": 4}}),
    "affine.": ("torchparams/paramsaffineta_00079_00000.pt",
                {"name": "HippodeepAffine", "params": {"in_channels": 2, "grid_size": 64}}),
}
OPTIONS = {  # hippodeep.py's constants, named (see cadcore.registry.hippodeep_card)
    "head_grid": 64,
    "template_origin_ras": [90.0, -126.0, -72.0],
    "template_spacing": [2.85714293, 3.42857146, 2.85714293],
    "crop_origin_ras": [54.0, -59.0, -45.0],
    "crop_spacing": 1.0,
    "crop_shape": [107, 72, 68],
    "side_margin": 6,
    "side_width": 48,
    "crop_trim": [0, 0, 2],
    "brain_threshold": 0.5,
    "hippocampus_threshold": 0.5,
    "noise_floor": 32 / 255,
    "label_threshold": 0.5,
}
METRICS = {  # measured after conversion (docs/benchmarks.md); the conversion itself changes no number
    "agreement_with_reference": {
        "what": "cad segment vs the reference hippodeep.py on the same NIfTI; Dice of labels (reference uint8 mask "
                ">= 128, ours >= 0.5), soft volumes and eTIV from both",
        "example_brain_t1": {"dice_left": 1.0, "dice_right": 1.0, "left_ml": [3.161, 3.1606],
                             "right_ml": [3.344, 3.3438], "etiv_ml": [1439.994, 1440.1]},
        "whole_head_mr_8_volumes": {"dice_min": 0.9655, "dice_below_1": "3 labels, one voxel each, all where the "
                                    "reference's truncated uint8 value is 127 (127.0-127.99 of 255, either side of "
                                    "0.5)"},
        "command": "PYTHONPATH=CADExtension .venv/bin/python benchmarks/hippodeep_agreement.py "
                   "--json benchmarks/results/hippodeep_agreement.json",
    },
}
HIPPOCAMPUS = {"scheme": "SCT", "code": "5366008", "meaning": "Hippocampus"}
STRUCTURE = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}
SIDES = {"left": {"scheme": "SCT", "code": "7771000", "meaning": "Left"},
         "right": {"scheme": "SCT", "code": "24028007", "meaning": "Right"}}


def read_source(path: Path, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
    """One state dict, checked against the engine's network: same keys, same shapes, tensors only."""
    from cadcore.registry.architectures import build_network

    if not path.is_file():
        raise CadError("state dict not found", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch's unpickler raises many types; one line whatever it is
        raise CadError(f"cannot read as a weights-only state dict ({' '.join(str(exc).split())[:160]})", path) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CadError("is not a state dict of tensors", path)
    own = build_network(spec).state_dict()
    unexpected, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
    if unexpected:
        raise CadError(f"unexpected key(s) for {spec['name']}: {', '.join(unexpected[:3])}", path)
    if missing:
        raise CadError(f"missing key(s) for {spec['name']}: {', '.join(missing[:3])}", path)
    for key, tensor in state.items():
        if tensor.shape != own[key].shape:
            raise CadError(f"{key} has shape {list(tensor.shape)}, {spec['name']} wants {list(own[key].shape)}", path)
    return state


def card(hashes: dict[str, str]) -> dict[str, Any]:
    """The package's model.json (save_package adds the weights' sha256)."""
    labels = [{"value": value, "name": f"{side.capitalize()} hippocampus", "color": color,
               "terminology": {"category": STRUCTURE, "type": HIPPOCAMPUS, "type_modifier": SIDES[side]}}
              for value, side, color in ((1, "left", [0.86, 0.85, 0.35]), (2, "right", [0.35, 0.75, 0.86]))]
    return {
        "format_version": 1,
        "id": "hippocampus-whole-head",
        "version": "1.0.0",
        "task": "segmentation",
        "description": "hippodeep: left and right hippocampus and eTIV on a raw whole-head T1 (head mask, affine to "
                       "its template, 1 mm crop), converted from the published PyTorch weights",
        "modality": "MR",
        "network": SOURCES[""][1],
        "labels": labels,
        # the card reader wants a window for every segmentation model: here, one hemisphere's slab (crop_shape
        # less crop_trim on the side_width), which the hippocampus network sees whole, both sides in one batch
        "inference": {"patch_size": [48, 72, 64], "sw_batch_size": 2},
        "pipeline": {"name": "hippodeep",
                     "networks": {prefix.rstrip("."): spec for prefix, (_, spec) in SOURCES.items() if prefix},
                     **OPTIONS},
        "training": {
            "data": "not stated in these files; the authors' README says the network was pre-trained on thousands "
                    "of images from multiple large cohorts",
            "source": {"repository": REPOSITORY, "commit": COMMIT, "files": hashes},
            "conversion": "tools/convert_hippodeep.py (tensors copied unchanged; checked equal after writing)",
            "citation": CITATION,
        },
        "metrics": METRICS,
        "licence": "MIT (hippodeep_pytorch README: 'Hippodeep is MIT License')",
    }


def convert(weights: Path, output: Path) -> dict[str, str]:
    """Write the package; return the source files' sha256. Everything is checked before anything is written."""
    from cadcore.registry.packages import save_package

    state: dict[str, torch.Tensor] = {}
    sources: dict[str, dict[str, torch.Tensor]] = {}
    hashes: dict[str, str] = {}
    for prefix, (name, spec) in SOURCES.items():
        sources[prefix] = read_source(weights / name, spec)
        hashes[name] = sha256_of(weights / name)
        state.update({prefix + key: tensor.detach().clone().contiguous() for key, tensor in sources[prefix].items()})
    package = save_package(output, card(hashes), state)
    written = package.load_state_dict()  # verified: sha256, header, shapes against the card's networks
    for prefix, source in sources.items():
        for key, tensor in source.items():
            copy = written.get(prefix + key)
            if copy is None or copy.dtype != tensor.dtype or not torch.equal(copy, tensor):
                raise CadError(f"converted tensor {prefix + key} differs from its source", package.weights_path)
    if len(written) != sum(len(source) for source in sources.values()):
        raise CadError("the package holds tensors that are not from the sources", package.weights_path)
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="the hippodeep folder of ../shared/weights")
    parser.add_argument("output", type=Path, help="the package folder to write")
    args = parser.parse_args(argv)
    try:
        hashes = convert(args.weights, args.output)
    except CadError as exc:
        print(f"convert_hippodeep: error: {exc}", file=sys.stderr)  # the message names the file
        return 2
    print(json.dumps({"package": str(args.output), "sources": hashes}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
