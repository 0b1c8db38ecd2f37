"""Convert brainchop's published MeshNets (TensorFlow.js layers-models) into CAD model packages.

Run once by a maintainer (see tools/README.md):

    python tools/convert_brainchop.py ../shared/weights CADExtension/cadcore/models

For each model: read ``model.json`` (topology + weight manifest) and its ``.bin`` shards, refuse anything that is not
a MeshNet as this engine writes it (one line: a missing shard, a byte count that differs from the manifest, an
unexpected tensor name or shape), transpose each kernel from tfjs' ``[kd, kh, kw, in, out]`` to PyTorch's ``[out, in,
kd, kh, kw]``, check every converted tensor against its source array exactly, and write ``model.safetensors``, the
card (``model.json``, with the source files' sha256) and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "CADExtension"))

from cadcore.errors import CadError  # noqa: E402
from cadcore.registry.locations import sha256_of  # noqa: E402

SOURCE_REPO = "neuroneural/brainchop"
SOURCE_COMMIT = "4c87885f3a2a8835e260d521dcec922b58d91d41"
CITATION = ("Masoud M, et al. Brainchop: Next Generation Web-Based Neuroimaging Application. Journal of Open Source "
            "Software (2023); MindGrab: arXiv 2506.11860")
ACTIVATIONS = ("elu", "relu", "gelu")
ANATOMY = {"scheme": "SCT", "code": "123037004", "meaning": "Anatomical Structure"}
SIDES = {"Left": ("7771000", "Left"), "Right": ("24028007", "Right")}
# SNOMED CT codes only where the structure has an obvious one (names without a code keep only name and colour)
SNOMED = {
    "brain mask": ("12738006", "Brain"), "Cerebral-Cortex": ("40146001", "Cerebral cortex"),
    "Lateral-Ventricle": ("66720007", "Lateral ventricle"), "Thalamus": ("42695009", "Thalamus"),
    "Thalamus-Proper*": ("42695009", "Thalamus"), "Caudate": ("11000004", "Caudate nucleus"),
    "Putamen": ("89278009", "Putamen"), "Pallidum": ("14738005", "Globus pallidus"),
    "3rd-Ventricle": ("49841001", "Third ventricle"), "4th-Ventricle": ("35918002", "Fourth ventricle"),
    "Brain-Stem": ("15926001", "Brain stem"), "Hippocampus": ("5366008", "Hippocampus"),
    "Amygdala": ("4958002", "Amygdala"), "Cerebellum-Cortex": ("113305005", "Cerebellum"),
}


class Model:
    """One package to write: its id, source folder, and what the card says beyond the network."""

    def __init__(self, model_id: str, source: str, description: str, modality: str, limits: str,
                 mask_model: str | None = None) -> None:
        self.id, self.source, self.description, self.modality = model_id, source, description, modality
        self.limits, self.mask_model = limits, mask_model


MODELS = (
    Model("brain-mask", "mindgrab", "Brain extraction (MindGrab MeshNet): brain vs everything else, any modality",
          "ANY", "Trained on synthetic data (per its paper) for T1, T2, DWI, MRA, PD, EPI, CT and PET; checked here "
          "on T1/T2-like MR (labels identical to the reference conventions) and head CT: on head-and-neck CT the "
          "brainstem is inside and the calvarium outside the mask, but soft tissue of the neck, face and upper chest "
          "that falls inside the 256 mm cube is marked too; use a head-only field of view. Its instance norm needs "
          "the whole conformed cube (about 2.5 minutes on 2 CPU cores)."),
    Model("brain-structures", "model30chan18cls", "FreeSurfer aseg-like brain structures (brainchop "
          "model30chan18cls): 17 structures, left and right merged", "MR",
          "Expects a whole-head T1-weighted MR; left and right are one label per structure."),
    Model("brain-tissue", "model20chan3cls", "Brain tissue (brainchop model20chan3cls): white and grey matter",
          "MR", "Expects a whole-head T1-weighted MR."),
    Model("brain-parcellation", "model21_104class", "Desikan-Killiany cortical atlas with subcortical structures "
          "(brainchop model21_104class, 103 labels), inside brain-mask's brain", "MR",
          "Expects a whole-head T1-weighted MR; labels outside the brain are removed by brain-mask, as brainchop "
          "does.", mask_model="brain-mask"),
)


def read_tfjs(folder: Path) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The topology's layers and the manifest's arrays (float32, by name), every shard checked against it."""
    card_path = folder / "model.json"
    try:
        spec = json.loads(card_path.read_text())
        layers = spec["modelTopology"]["model_config"]["config"]["layers"]
        groups = spec["weightsManifest"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CadError(f"not a TensorFlow.js layers-model ({type(exc).__name__}: {exc})", card_path) from exc
    arrays: dict[str, np.ndarray] = {}
    for group in groups:
        blob = b""
        for name in group["paths"]:
            shard = folder / name
            if Path(name).name != name or not shard.is_file():
                raise CadError(f"weight shard {name!r} named by the manifest is missing", card_path)
            blob += shard.read_bytes()
        expected = 0
        for entry in group["weights"]:
            if entry.get("dtype", "float32") != "float32":
                raise CadError(f"tensor {entry['name']!r} is {entry['dtype']}, only float32 is converted", card_path)
            expected += 4 * int(np.prod(entry["shape"]))
        if len(blob) != expected:
            raise CadError(f"shards {group['paths']} hold {len(blob)} bytes but the manifest describes {expected}",
                           card_path)
        offset = 0
        for entry in group["weights"]:
            count = int(np.prod(entry["shape"]))
            arrays[entry["name"]] = np.frombuffer(blob, "<f4", count, offset).reshape(entry["shape"]).copy()
            offset += 4 * count
    return layers, arrays


def meshnet_params(layers: list[dict[str, Any]], where: Path) -> tuple[dict[str, Any], list[str]]:
    """The MeshNet ``params`` a topology describes, and its convolution layers' names in order."""
    convs = [layer for layer in layers if layer["class_name"] == "Conv3D"]
    acts = [layer["config"]["activation"] for layer in layers if layer["class_name"] == "Activation"]
    others = sorted({layer["class_name"] for layer in layers} - {"InputLayer", "Conv3D", "Activation"})
    if others or len(convs) < 2 or len(acts) != len(convs) - 1 or len(set(acts)) != 1 or acts[0] not in ACTIVATIONS:
        raise CadError(f"topology is not a MeshNet (layers {others or ''}, activations {sorted(set(acts))})", where)
    hidden, output = convs[:-1], convs[-1]["config"]
    for layer in hidden:
        config = layer["config"]
        if (config["kernel_size"] != [3, 3, 3] or config["strides"] != [1, 1, 1] or config["padding"] != "same"
                or len(set(config["dilation_rate"])) != 1 or config.get("activation", "linear") != "linear"):
            raise CadError(f"layer {config['name']!r} is not a 3x3x3 'same' convolution with one dilation", where)
    if output["kernel_size"] != [1, 1, 1] or not output["use_bias"]:
        raise CadError("the last layer is not a biased 1x1x1 convolution", where)
    channels = {layer["config"]["filters"] for layer in hidden}
    norms = {layer["config"]["name"].endswith("_gn") for layer in hidden}
    biases = {bool(layer["config"]["use_bias"]) for layer in hidden}
    if len(channels) != 1 or len(norms) != 1 or len(biases) != 1:
        raise CadError("hidden layers differ in width, norm or bias", where)
    params = {"channels": channels.pop(), "classes": output["filters"],
              "dilations": [layer["config"]["dilation_rate"][0] for layer in hidden], "activation": acts[0],
              "norm": "instance" if norms.pop() else "none", "bias": biases.pop()}
    return params, [layer["config"]["name"] for layer in convs]


def state_dict_of(arrays: Mapping[str, np.ndarray], names: list[str], params: Mapping[str, Any],
                  where: Path) -> dict[str, np.ndarray]:
    """PyTorch-named, PyTorch-laid-out tensors; refuses a tensor the topology does not describe, or one missing."""
    expected: dict[str, tuple[str, tuple[int, ...]]] = {}
    width = 1
    for index, name in enumerate(names):
        last = index == len(names) - 1
        prefix = "output" if last else f"layers.{index}"
        out = params["classes"] if last else params["channels"]
        size = 1 if last else 3
        expected[f"{name}/kernel"] = (f"{prefix}.weight", (size, size, size, width, out))
        if last or params["bias"]:
            expected[f"{name}/bias"] = (f"{prefix}.bias", (out,))
        width = out
    unexpected = sorted(set(arrays) - set(expected))
    if unexpected:
        raise CadError(f"unexpected tensor {unexpected[0]!r} (not in the MeshNet topology)", where)
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise CadError(f"tensor {missing[0]!r} is missing from the weights", where)
    state = {}
    for source, (target, shape) in expected.items():
        array = arrays[source]
        if tuple(array.shape) != shape:
            raise CadError(f"tensor {source!r} has shape {list(array.shape)}, the topology says {list(shape)}", where)
        state[target] = np.ascontiguousarray(array.transpose(4, 3, 0, 1, 2) if array.ndim == 5 else array)
    return state


def check_equal(state: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray], names: list[str]) -> int:
    """Every tensor of ``state`` (the package as written, read back) equals its source array bit for bit (undoing
    the transpose); the count checked."""
    checked = 0
    for index, name in enumerate(names):
        prefix = "output" if index == len(names) - 1 else f"layers.{index}"
        pairs = [(f"{prefix}.weight", f"{name}/kernel"), (f"{prefix}.bias", f"{name}/bias")]
        for target, source in pairs:
            if source not in arrays:
                continue
            back = state[target].transpose(2, 3, 4, 1, 0) if state[target].ndim == 5 else state[target]
            if back.dtype != arrays[source].dtype or not np.array_equal(back.view(np.uint32),
                                                                        arrays[source].view(np.uint32)):
                raise CadError(f"converted {target} differs from {source}", None)
            checked += 1
    return checked


def labels_of(colormap: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Foreground labels with names, colours (0..1) and SNOMED CT terminology where the code is obvious."""
    labels = []
    for value, name in enumerate(colormap["labels"]):
        if value == 0:
            continue
        color = [round(colormap[c][value] / 255.0, 4) for c in "RGB"]
        if color == [1.0, 1.0, 1.0] and name == "brain mask":
            color = [0.9, 0.75, 0.6]  # white on a grey scan is invisible in Slicer
        entry: dict[str, Any] = {"value": value, "name": name, "color": color}
        side, _, structure = name.partition("-") if name.split("-")[0] in SIDES else ("", "", name)
        if structure in SNOMED:
            code, meaning = SNOMED[structure]
            entry["terminology"] = {"category": ANATOMY, "type": {"scheme": "SCT", "code": code, "meaning": meaning}}
            if side:
                entry["terminology"]["type_modifier"] = {"scheme": "SCT", "code": SIDES[side][0],
                                                         "meaning": SIDES[side][1]}
        labels.append(entry)
    return labels


def card_of(model: Model, params: Mapping[str, Any], labels: list[dict[str, Any]], sources: Mapping[str, str],
            checked: int) -> dict[str, Any]:
    pipeline: dict[str, Any] = {"name": "meshnet", "conform_size": [256, 256, 256], "conform_spacing": 1.0,
                                "orientation": "LIA", "percentiles": [2.0, 98.0]}
    if model.mask_model:
        pipeline["mask_model"] = model.mask_model
    # slices per streaming step: 2 keeps a 30-channel network under 2 GB on a whole head (4 is ~15 % faster)
    pipeline["tile_depth"] = 2 if params["channels"] >= 30 else 4
    halo = sum(params["dilations"])
    return {
        "format_version": 1, "id": model.id, "version": "1.0.0", "task": "segmentation",
        "name": model.id, "description": model.description, "modality": model.modality,
        "network": {"name": "MeshNet", "params": dict(params)},
        "labels": labels,
        "preprocessing": {"orientation": "LIA", "spacing": [1.0, 1.0, 1.0],
                          "note": "run by the meshnet pipeline: FreeSurfer-style conform to 256^3 x 1 mm LIA uint8, "
                                  "then 2nd-98th percentile scaling to [0, 1]; labels back by nearest neighbour"},
        "inference": {"patch_size": [256, 256, 256], "overlap": 0.0, "receptive_field_halo": halo},
        "pipeline": pipeline,
        "training": {"data": "training data not stated in the published files",
                     "source": {"repository": SOURCE_REPO, "commit": SOURCE_COMMIT,
                                "folder": f"public/models/{model.source}", "files_sha256": dict(sources)},
                     "conversion": f"tools/convert_brainchop.py; {checked} tensors equal to the source arrays",
                     "citation": CITATION},
        "licence": "MIT (Copyright (c) 2021 neuroneural/brainchop)",
    }


def model_card_md(model: Model, params: Mapping[str, Any], labels: list[dict[str, Any]],
                  sources: Mapping[str, str]) -> str:
    coded = [f"{label['name']} {label['terminology']['type']['code']}" for label in labels if "terminology" in label]
    lines = [
        f"# {model.id} 1.0.0", "", f"{model.description}.", "",
        "| | |", "|---|---|",
        f"| Network | MeshNet: {len(params['dilations'])} dilated 3×3×3 convolutions of {params['channels']} channels "
        f"(dilations {', '.join(map(str, params['dilations']))}), {params['activation'].upper()}"
        + (", instance norm (GroupNorm, one group per channel, no affine), no bias" if params["norm"] == "instance"
           else "") +
        f", then a 1×1×1 convolution to {params['classes']} classes |",
        "| Input | one volume; FreeSurfer-style conform (256³, 1 mm, LIA, uint8: minimum → 0, 99.9th percentile "
        "→ 255), "
        "then 2nd–98th percentile scaling to [0, 1] (brainchop's conventions) |",
        ("| Inference | the whole conformed cube, layer by layer (its instance norm needs every voxel)"
         if params["norm"] == "instance" else
         f"| Inference | the head's box only, streamed with the full receptive-field halo "
         f"({sum(params['dilations'])} voxels): the labels of the plain full-volume forward")
        + (f"; labels kept only inside `{model.mask_model}`'s brain" if model.mask_model else "") + " |",
        f"| Output | {len(labels)} label{'s' if len(labels) > 1 else ''} on the input's exact grid (nearest "
        "neighbour from the conformed cube)"
        + (f"; SNOMED CT codes: {', '.join(coded)}" if coded else "") + " |",
        "", "## Source and provenance", "",
        f"Converted by `tools/convert_brainchop.py` from `{SOURCE_REPO}` at commit `{SOURCE_COMMIT}`, folder "
        f"`public/models/{model.source}/` (TensorFlow.js layers-model). Every converted tensor was checked equal to "
        "its source array. sha256 of the source files:", "",
        *[f"- `{name}`: `{digest}`" for name, digest in sources.items()], "",
        "**Training data: not stated** in the published files. Labels, names and colours are those of the source's "
        "`colormap.json`.", "",
        "## Licence and citation", "",
        "MIT licence, \"Copyright (c) 2021 neuroneural/brainchop\" (the source repository's `LICENSE`). Cite: "
        f"{CITATION}.", "",
        "## Limits", "", model.limits + " Not a clinical device; compare with FreeSurfer or expert review before "
        "relying on volumes.", "",
    ]
    return "\n".join(lines)


def convert(model: Model, source_root: Path, out_root: Path) -> Path:
    """Write one package; returns its folder."""
    from cadcore.registry.packages import save_package

    folder = source_root / model.source
    layers, arrays = read_tfjs(folder)
    params, names = meshnet_params(layers, folder / "model.json")
    state = state_dict_of(arrays, names, params, folder / "model.json")
    colormap = json.loads((folder / "colormap.json").read_text())
    if len(colormap["labels"]) != params["classes"]:
        raise CadError(f"colormap has {len(colormap['labels'])} labels, the network {params['classes']} classes",
                       folder / "colormap.json")
    labels = labels_of(colormap)
    files = ["model.json", *sorted({p for g in json.loads((folder / "model.json").read_text())["weightsManifest"]
                                    for p in g["paths"]}), "colormap.json"]
    sources = {name: sha256_of(folder / name) for name in files}
    import torch

    out = out_root / model.id
    package = save_package(out, card_of(model, params, labels, sources, len(state)),
                           {name: torch.from_numpy(array) for name, array in state.items()})
    written = package.load_state_dict()  # verified: sha256, header, shapes against the card's network
    read_back = {name: tensor.numpy() for name, tensor in written.items()}
    if set(read_back) != set(state) or check_equal(read_back, arrays, names) != len(state):
        raise CadError("the written package does not hold exactly the source tensors", package.weights_path)
    (out / "MODEL_CARD.md").write_text(model_card_md(model, params, labels, sources))
    (out / "model.safetensors").chmod(0o644)  # a package file like any other (the writer keeps it private)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="the shared weights folder (holds brainchop/models/...)")
    parser.add_argument("out", type=Path, help="where the packages go (CADExtension/cadcore/models)")
    parser.add_argument("--only", nargs="*", help="model ids to convert (default: all)")
    args = parser.parse_args(argv)
    try:
        for model in MODELS:
            if args.only and model.id not in args.only:
                continue
            folder = convert(model, args.weights / "brainchop" / "models", args.out)
            print(f"{model.id}: {folder}")
    except CadError as exc:
        print(f"convert_brainchop: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
