"""Which MONAI bundles run on the engine's own segmentation path, and with which settings (read, never evaluated).

A bundle's ``configs/inference.json`` names MONAI transforms and an inferer. When every one of them is in the
recognised list below, with arguments whose meaning we reproduce exactly, the bundle is translated into a
:class:`BundlePlan` and :mod:`cadcore.segmentation.bundle_fast` runs it the way ``segment_image`` runs a model package:
working space by SimpleITK (the resampling that matches ``Spacingd`` exactly), channels-last with batch norm folded,
labels back to the input grid without a full-resolution float map per class. Anything else (an unknown transform,
a ``$`` expression, an argument we do not reproduce) is a :class:`Translation` with a one-line ``reason`` naming it,
and the bundle runs through ``monai.bundle`` as before (:mod:`cadcore.segmentation.bundle_inference`).

Why read the JSON instead of building the transforms: building them means importing all of MONAI's transforms (the
seconds this path saves), and a ``$`` expression is code whose value we cannot know without running it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from cadcore.registry.bundles import CONFIG_FILE, BundleModel, positive_triple, resolve_reference

ENGINE_PATH = "engine"  # the bundle runs on cadcore's own optimised path
MONAI_PATH = "monai.bundle"  # the bundle runs its own transforms through monai.bundle
IGNORED = ("SaveImaged", "SaveImage")  # results stay in memory until cad writes every output at once
FLOAT32 = ("float32", "np.float32", "numpy.float32", "torch.float32", "$np.float32", "$numpy.float32",
           "$torch.float32", "$float", None)


@dataclass
class BundlePlan:
    """A recognised bundle pipeline in the engine's terms (arrays indexed I, J, K as in MONAI)."""

    orientation: str | None = None  # DICOMOrient code (the same letters as MONAI's axcodes: the way each axis points)
    spacing: list[float] | None = None  # Spacingd's pixdim, bilinear
    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # array steps in the bundle's order
    roi_size: list[int] = field(default_factory=list)
    overlap: float = 0.25  # SlidingWindowInferer's defaults
    mode: str = "constant"
    sw_batch_size: int = 1
    postprocessing: list[str] = field(default_factory=list)  # "largest_component", "fill_holes" on input-grid labels


@dataclass
class Translation:
    """The plan, or why there is none (``reason`` names the transform or argument)."""

    plan: BundlePlan | None
    reason: str | None = None

    @property
    def path(self) -> str:
        return ENGINE_PATH if self.plan is not None else MONAI_PATH

    def note(self) -> str | None:
        """The one-line sidecar note of a fallback (None on the engine path)."""
        if self.plan is not None:
            return None
        return f"bundle runs through monai.bundle (not cad's optimised path): {self.reason}"


class Unrecognised(Exception):
    """Raised inside the reader with the one-line reason; becomes ``Translation(None, reason)``."""


def translate(bundle: BundleModel) -> Translation:
    """Read the bundle's config and translate it, or say (one line) why it stays on ``monai.bundle``."""
    try:
        config = json.loads((bundle.folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return Translation(None, f"config unreadable ({type(exc).__name__})")
    if not isinstance(config, dict):
        return Translation(None, "config is not a JSON object")
    try:
        return Translation(_plan(config, bundle.input_key))
    except Unrecognised as exc:
        return Translation(None, str(exc))


def _value(config: dict[str, Any], value: Any, where: str) -> Any:
    value = resolve_reference(config, value)
    if isinstance(value, str) and value.startswith("$") and value not in FLOAT32:
        raise Unrecognised(f"{where} is a $ expression ({value[:60]})")
    if isinstance(value, (list, dict)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        resolved = {k: _value(config, v, where) for k, v in items}
        return resolved if isinstance(value, dict) else [resolved[i] for i in range(len(value))]
    return value


def _transforms(config: dict[str, Any], item: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, arguments) of each transform of a ``Compose`` item, references followed."""
    node = resolve_reference(config, config.get(item))
    if isinstance(node, dict) and str(node.get("_target_", "")).split(".")[-1] == "Compose":
        node = resolve_reference(config, node.get("transforms"))
    if not isinstance(node, list):
        raise Unrecognised(f"{item} is not a Compose of transforms")
    steps = []
    for raw in node:
        raw = resolve_reference(config, raw)
        if not isinstance(raw, dict) or not isinstance(raw.get("_target_"), str):
            raise Unrecognised(f"{item} has a step that is not a transform ({str(raw)[:60]})")
        name = raw["_target_"].split(".")[-1]
        if name in IGNORED:
            continue
        args = {k: v for k, v in raw.items() if not k.startswith("_")}
        steps.append((name, _value(config, args, name)))
    return steps


def _keys(args: dict[str, Any]) -> list[str]:
    keys = args.get("keys", [])
    return [keys] if isinstance(keys, str) else list(keys)


def _only(name: str, args: dict[str, Any], allowed: dict[str, tuple[Any, ...]] | set[str]) -> None:
    """Refuse an argument we do not reproduce (a set: any value; a dict: only the listed values)."""
    for key, value in args.items():
        if key in ("keys", "allow_missing_keys"):
            continue
        if key not in allowed:
            raise Unrecognised(f"{name}({key}=...) is not translated")
        if isinstance(allowed, dict) and allowed[key] and value not in allowed[key]:
            raise Unrecognised(f"{name}({key}={value!r}) is not translated")


def _triple(value: Any, kind: type, name: str) -> list[Any]:
    values = positive_triple(value, kind)
    if values is None:
        raise Unrecognised(f"{name} needs three positive {'integers' if kind is int else 'values'}, got {value!r}")
    return values


def _preprocessing(config: dict[str, Any], key: str, plan: BundlePlan) -> None:
    for name, args in _transforms(config, "preprocessing"):
        keys = _keys(args)
        if name not in ("LoadImaged", "EnsureChannelFirstd", "EnsureTyped", "CastToTyped") and keys != [key]:
            raise Unrecognised(f"{name} on keys {keys} (only the image {key!r} is translated)")
        if name == "LoadImaged":
            _only(name, args, {"image_only": (), "ensure_channel_first": (), "dtype": FLOAT32,
                               "reader": ("ITKReader", "NibabelReader", None), "simple_keys": ()})
        elif name == "EnsureChannelFirstd":
            _only(name, args, {"channel_dim": ("no_channel", None), "strict_check": ()})
        elif name in ("EnsureTyped", "CastToTyped"):
            _only(name, args, {"dtype": FLOAT32, "data_type": ("tensor", "numpy"), "device": (),
                               "track_meta": (), "wrap_sequence": ()})
        elif name == "Orientationd":
            _only(name, args, {"axcodes": (), "as_closest_canonical": (False,), "labels": (None,)})
            axcodes = args.get("axcodes")
            if plan.orientation or plan.spacing or plan.steps:
                raise Unrecognised("Orientationd after another spatial or intensity step is not translated")
            if not (isinstance(axcodes, str) and len(axcodes) == 3 and sorted(
                    {"L": "R", "P": "A", "I": "S"}.get(c, c) for c in axcodes.upper()) == ["A", "R", "S"]):
                raise Unrecognised(f"Orientationd(axcodes={axcodes!r}) is not translated")
            plan.orientation = axcodes.upper()
        elif name == "Spacingd":
            _only(name, args, {"pixdim": (), "mode": ("bilinear", None, ["bilinear"]), "padding_mode": ("border",),
                               "align_corners": (False,), "diagonal": (False,), "scale_extent": (False,),
                               "recompute_affine": (False,), "dtype": ("$np.float64", "float64", None)})
            if plan.spacing or plan.steps:
                raise Unrecognised("Spacingd after another Spacingd or an intensity step is not translated")
            plan.spacing = _triple(args.get("pixdim"), float, "Spacingd pixdim")
        elif name == "ScaleIntensityRanged":
            _only(name, args, {"a_min": (), "a_max": (), "b_min": (), "b_max": (), "clip": (), "dtype": FLOAT32})
            a_min, a_max = float(args["a_min"]), float(args["a_max"])
            if a_max == a_min:
                raise Unrecognised("ScaleIntensityRanged with a_min == a_max is not translated")
            b_min, b_max = args.get("b_min"), args.get("b_max")
            if b_min is None or b_max is None:
                raise Unrecognised("ScaleIntensityRanged without b_min/b_max is not translated")
            plan.steps.append(("scale_range", {"a_min": a_min, "a_max": a_max, "b_min": float(b_min),
                                               "b_max": float(b_max), "clip": bool(args.get("clip", False))}))
        elif name == "NormalizeIntensityd":
            _only(name, args, {"subtrahend": (None,), "divisor": (None,), "nonzero": (), "channel_wise": (),
                               "dtype": FLOAT32})
            plan.steps.append(("normalize", {"nonzero": bool(args.get("nonzero", False))}))
        elif name == "ScaleIntensityd":
            _only(name, args, {"minv": (), "maxv": (), "factor": (None,), "channel_wise": (), "dtype": FLOAT32})
            minv, maxv = args.get("minv", 0.0), args.get("maxv", 1.0)
            if minv is None or maxv is None:
                raise Unrecognised("ScaleIntensityd without minv/maxv is not translated")
            plan.steps.append(("scale", {"minv": float(minv), "maxv": float(maxv)}))
        elif name == "CropForegroundd":
            _only(name, args, {"source_key": (key,), "margin": (), "allow_smaller": (), "k_divisible": (1, [1, 1, 1]),
                               "mode": ("constant", None), "start_coord_key": (), "end_coord_key": ()})
            margin = args.get("margin", 0)
            margins = [int(margin)] * 3 if isinstance(margin, (int, float)) else [int(m) for m in margin]
            if any(margins) and not args.get("allow_smaller", False):
                raise Unrecognised("CropForegroundd with a margin and allow_smaller=False (it pads) is not translated")
            plan.steps.append(("crop_foreground", {"margin": margins}))
        else:
            raise Unrecognised(f"preprocessing transform {name} is not translated")


def _inferer(config: dict[str, Any], plan: BundlePlan) -> None:
    node = resolve_reference(config, config.get("inferer"))
    if not isinstance(node, dict) or not isinstance(node.get("_target_"), str):
        raise Unrecognised("inferer is not a transform object")
    name = node["_target_"].split(".")[-1]
    if name not in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
        raise Unrecognised(f"inferer {name} is not translated")
    args = _value(config, {k: v for k, v in node.items() if not k.startswith("_")}, name)
    _only(name, args, {"roi_size": (), "sw_batch_size": (), "overlap": (), "mode": ("constant", "gaussian"),
                       "sigma_scale": (0.125,), "padding_mode": ("constant",), "cval": (0, 0.0),
                       "sw_device": (), "device": (), "progress": (), "cache_roi_weight_map": (), "cpu_thresh": (),
                       "buffer_steps": (), "buffer_dim": (), "with_coord": (False,)})
    plan.roi_size = _triple(args.get("roi_size"), int, f"{name} roi_size")
    plan.sw_batch_size = int(args.get("sw_batch_size", 1))
    plan.overlap = float(args.get("overlap", 0.25))
    plan.mode = str(args.get("mode", "constant"))


def _postprocessing(config: dict[str, Any], plan: BundlePlan) -> None:
    """Recognised: softmax → Invertd (bilinear, on the probabilities) → argmax → [largest component, fill holes]."""
    if "postprocessing" not in config:
        raise Unrecognised("no postprocessing (labels would be resampled, not inverted)")
    stage = "start"
    for name, args in _transforms(config, "postprocessing"):
        if _keys(args) != ["pred"]:
            raise Unrecognised(f"{name} on keys {_keys(args)} (only 'pred' is translated)")
        if name == "Activationsd" and stage == "start":
            _only(name, args, {"softmax": (True,), "sigmoid": (False,), "other": (None,)})
            if not args.get("softmax"):
                raise Unrecognised("Activationsd without softmax=True is not translated")
            stage = "softmax"
        elif name == "Invertd" and stage == "softmax":
            _only(name, args, {"transform": (), "orig_keys": (), "nearest_interp": (False,), "to_tensor": (),
                               "device": (), "post_func": (None,), "meta_keys": (None,), "orig_meta_keys": (None,),
                               "meta_key_postfix": ("meta_dict",)})
            if "nearest_interp" not in args:
                raise Unrecognised("Invertd with nearest_interp (its default) is not translated")
            if args.get("transform") != _value(config, config.get("preprocessing"), "preprocessing"):
                raise Unrecognised("Invertd of a transform other than @preprocessing is not translated")
            stage = "inverted"
        elif name == "AsDiscreted" and stage == "inverted":
            _only(name, args, {"argmax": (True,), "to_onehot": (None,), "threshold": (None,), "rounding": (None,),
                               "keepdim": ()})
            stage = "labels"
        elif name in ("KeepLargestConnectedComponentd", "FillHolesd") and stage == "labels":
            allowed = {"applied_labels": (None,), "connectivity": (None, 3)}
            if name == "KeepLargestConnectedComponentd":
                allowed.update({"is_onehot": (None, False), "independent": (True,), "num_components": (1,)})
            _only(name, args, allowed)
            plan.postprocessing.append("largest_component" if name.startswith("Keep") else "fill_holes")
        elif name == "EnsureTyped":
            continue
        else:
            raise Unrecognised(f"postprocessing transform {name} (at that place) is not translated")
    if stage != "labels":
        raise Unrecognised("postprocessing is not softmax, Invertd (nearest_interp=False), AsDiscreted(argmax)")


def _plan(config: dict[str, Any], key: str) -> BundlePlan:
    plan = BundlePlan()
    _preprocessing(config, key, plan)
    _inferer(config, plan)
    _postprocessing(config, plan)
    return plan
