"""The checks and the report of one interactive prompt, shared by ``cad interact`` (cold) and ``cad serve`` (warm).

Both paths must refuse the same prompts with the same one line, in the same order (prompts first, then the model,
then the label, all before the image is read), and describe a result with the same dict: written once here, so a
prompt answered by the server and the same prompt run through the command line cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.registry import find_model_or_bundle
from cadcore.registry.bundles import METADATA_FILE, BundleModel
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.interactive import UNCERTAINTY_NEEDS_PROBABILITIES, InteractiveResult, Prompts


def check_interact_request(model: str | Path, label: int, positive: Sequence[Any], box: Sequence[float] | None,
                           scribble: bool, uncertainty: bool, source: str | Path) -> ModelPackage | BundleModel:
    """The model a prompt may run, or the one-line refusal: no positive prompt at all (named after ``source``, the
    input), an unknown model, a bundle asked for uncertainty, a model that does not segment, a label it lacks.
    Weights are not verified here (the caller does, once per process or per warm model)."""
    if not (positive or box or scribble):
        raise CadError("give at least one positive click (--click=+R,A,S), a --box or a --scribble", source)
    package = find_model_or_bundle(model)
    bundle = isinstance(package, BundleModel)
    if bundle and uncertainty:
        raise CadError(UNCERTAINTY_NEEDS_PROBABILITIES, package.folder)
    if package.task != "segmentation":
        raise CadError(f"is a {package.task} model; cad interact needs a segmentation model", package.folder)
    pipeline = getattr(getattr(package, "card", None), "pipeline", None)
    if pipeline is not None:  # its own conform/template steps do not run on a prompt's region
        raise CadError(f"runs its own {pipeline.name} pipeline on the whole volume; use cad segment", package.folder)
    names = package.label_names()
    if label not in names:
        raise CadError(f"--label {label} is not one of the model's labels ({', '.join(map(str, names))})",
                       package.folder / (METADATA_FILE if bundle else "model.json"))
    return package


def label_entry(package: ModelPackage | BundleModel, label: int) -> dict[str, Any]:
    """The card's entry of ``label`` (name, colour, terminology): the mask's single segment is written with it."""
    return next(entry for entry in package.labels if int(entry["value"]) == label)


def interact_report(package: ModelPackage | BundleModel, label: int, prompts: Prompts, result: InteractiveResult,
                    image: sitk.Image, paths: dict[str, str | None], started: float) -> dict[str, Any]:
    """The sidecar of one prompt (``cad interact`` writes it as OUTPUT.json, the server returns it); ``paths`` names
    ``input``, ``output`` and ``uncertainty`` (None when not asked for); ``started`` is the request's
    ``time.perf_counter()``. ``reused``: the region's network output came from a warm session's cache."""
    return {
        "model": package.id, "model_version": package.version,
        "model_format": "bundle" if isinstance(package, BundleModel) else "package",
        "label": label, "name": label_entry(package, label)["name"],
        "input": paths.get("input"), "output": paths.get("output"), "uncertainty": paths.get("uncertainty"),
        "prompts": prompts.describe(),
        "region": {"index": list(result.region[0]), "size": list(result.region[1]),
                   "spacing": list(image.GetSpacing())},
        "voxels": int(sitk.GetArrayViewFromImage(result.mask).sum()),
        "suggested_click": result.suggested_click, "warnings": result.warnings, "reused": result.reused,
        "timings": {**result.timings, "total_s": round(time.perf_counter() - started, 3)},
    }
