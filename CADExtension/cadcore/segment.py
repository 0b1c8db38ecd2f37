"""``cad segment``: a volume in, a labelled segmentation on the input's exact grid out.

Pipeline: read and check the input → working space (orientation, spacing, normalisation) → sliding-window U-Net
(Gaussian blending) → probabilities back onto the input grid → argmax → post-processing → labelmap + JSON sidecar.
A card with a ``cascade`` section runs a coarse network first and the fine network only on the region it finds.
A card with a ``fast`` section names a low working resolution (``spacing``; optionally its own ``network`` stored
under the ``fast.`` weight prefix, and ``inference`` settings) that ``--fast`` runs for CPU-only laptops; the labels
still come back on the input's exact grid.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.bundle import BundleModel
from cadcore.errors import CadError
from cadcore.inference import configure_cpu_threads, fold_batch_norm, pick_device, predict_probabilities
from cadcore.input_grid import labels_on_input_grid, labels_to_input_grid, probabilities_to_input_grid
from cadcore.io import atomic_path, check_output_path, read_volume
from cadcore.models import ModelPackage, find_model_or_bundle, load_weights
from cadcore.networks import build_network
from cadcore.postprocess import clean_labels
from cadcore.preprocess import image_interpolator, prepare
from cadcore.progress import StagedProgress

PROBABILITY_SUFFIXES = (".nii.gz", ".nrrd", ".mha")
FAST_PREFIX = "fast."


@dataclass
class SegmentationResult:
    labels: sitk.Image  # uint8, the input's exact grid
    probabilities: np.ndarray | None  # (C, I, J, K) float32 on the input grid, when asked for
    timings: dict[str, float] = field(default_factory=dict)
    cascade: dict[str, Any] | None = None
    working_spacing: list[float] | None = None  # the network's voxel size in mm (None: the input's own)
    fast: bool = False


def count_windows(shape: tuple[int, ...], patch: list[int], overlap: float) -> int:
    """How many windows MONAI's sliding window visits (for an honest progress bar)."""
    total = 1
    for size, roi in zip(shape, patch):
        if size <= roi:
            continue
        interval = max(1, int(roi * (1 - overlap)))
        total *= math.ceil((size - roi) / interval) + 1
    return total


def load_network(package: ModelPackage, device, prefix: str = "", spec: dict[str, Any] | None = None):
    network = build_network(spec or package.card["network"])
    state = package.load_state_dict()
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    else:  # the main network; a card's own fast network is stored beside it under ``fast.``
        state = {k: v for k, v in state.items() if not k.startswith(FAST_PREFIX)}
    load_weights(network, state, package.weights_path)
    return network.to(device).eval()


def fast_mode(package: ModelPackage) -> tuple[dict[str, Any], dict[str, Any] | None, str | None, dict[str, Any]]:
    """``--fast``: (preprocessing at the fast spacing, its own network spec or None, weight prefix, inference)."""
    card = package.card
    fast = card.get("fast")
    if not isinstance(fast, dict) or not fast.get("spacing"):
        raise CadError(f"model {package.id} names no fast resolution (model card 'fast' section); run without --fast",
                       package.folder)
    spacing = fast["spacing"]
    if len(spacing) != 3 or any(not isinstance(v, (int, float)) or v <= 0 for v in spacing):
        raise CadError(f"model card fast.spacing must be three positive numbers, got {spacing!r}", package.folder)
    preprocessing = {**card["preprocessing"], "spacing": [float(v) for v in spacing]}
    inference = {**card.get("inference", {}), **fast.get("inference", {})}
    if "network" in fast:
        return preprocessing, fast["network"], FAST_PREFIX, inference
    return preprocessing, None, None, inference


def check_interpolation(package: ModelPackage) -> None:
    """An unknown ``preprocessing.interpolation`` fails with the card's path before anything is read."""
    try:
        image_interpolator(package.card["preprocessing"])
    except CadError as exc:
        raise CadError(str(exc), package.folder / "model.json") from exc


def segment_image(
    image: sitk.Image,
    package: ModelPackage | BundleModel,
    device: str = "auto",
    overlap: float | None = None,
    sw_batch_size: int | None = None,
    keep_probabilities: bool = False,
    use_cascade: bool = True,
    progress: StagedProgress | None = None,
    fast: bool = False,
) -> SegmentationResult:
    """Segment one volume with a segmentation package; the result lies on ``image``'s grid exactly."""
    if isinstance(package, BundleModel):  # a MONAI bundle runs its own transforms and inferer
        if fast:
            raise CadError("--fast needs a model package whose card names a fast resolution, not a MONAI bundle",
                           package.folder)
        from cadcore.bundle_run import run_bundle

        labels, timings = run_bundle(image, package, pick_device(device), overlap, sw_batch_size,
                                     progress.update if progress else None)
        return SegmentationResult(labels, None, timings)
    if package.task != "segmentation":
        raise CadError(f"model {package.id} is a {package.task} model, not a segmentation model", package.folder)
    torch_device = pick_device(device)
    card = package.card
    preprocessing = card["preprocessing"]
    inference = dict(card.get("inference", {}))
    prefix = "fine." if "cascade" in card else ""
    spec = None
    if fast:
        preprocessing, spec, fast_prefix, inference = fast_mode(package)
        prefix = fast_prefix or prefix
    overlap = inference.get("overlap", 0.5) if overlap is None else overlap
    sw_batch_size = sw_batch_size or inference.get("sw_batch_size", 2)
    timings: dict[str, float] = {}
    cascade_info = None

    if "cascade" in card and use_cascade:
        from cadcore.cascade import locate_roi

        started = time.perf_counter()
        roi, cascade_info = locate_roi(image, package, torch_device, sw_batch_size)
        timings["coarse_s"] = round(time.perf_counter() - started, 3)
        region = roi if roi is not None else None
    else:
        region = None
    target = image if region is None else sitk.RegionOfInterest(image, region[1], region[0])

    started = time.perf_counter()
    working = prepare(target, preprocessing)
    timings["preprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("preprocess", 1.0)

    started = time.perf_counter()
    network = load_network(package, torch_device, prefix, spec)
    if torch_device.type == "cpu":
        fold_batch_norm(network)
    patch = inference["patch_size"]
    n_windows = max(1, math.ceil(count_windows(working.array.shape, patch, overlap) / sw_batch_size))
    done = [0]

    def on_window(_: float) -> None:
        done[0] += 1
        if progress:
            progress.update("network", done[0] / n_windows)

    probabilities = predict_probabilities(network, working.array, patch, torch_device, overlap, sw_batch_size,
                                          inference.get("mode", "gaussian"), progress=on_window,
                                          channels_last=torch_device.type == "cpu")
    timings["network_s"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    if keep_probabilities:
        on_grid = probabilities_to_input_grid(probabilities, working)
        labels = on_grid.argmax(0).astype(np.uint8)
    else:  # labels without a full-resolution float map per class (the same labels, far less time and memory)
        labels = labels_to_input_grid(probabilities, working)
    del probabilities
    labels = clean_labels(labels, card.get("postprocessing", {}))
    if region is not None:
        full_labels = np.zeros(image.GetSize(), dtype=np.uint8)
        index, size = region
        window = tuple(slice(i, i + s) for i, s in zip(index, size))
        full_labels[window] = labels
        labels = full_labels
        if keep_probabilities:
            full = np.zeros((on_grid.shape[0], *image.GetSize()), dtype=np.float32)
            full[0] = 1.0
            full[(slice(None), *window)] = on_grid
            on_grid = full
    timings["postprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("postprocess", 1.0)
    return SegmentationResult(labels_on_input_grid(labels, image), on_grid.astype(np.float32) if keep_probabilities
                              else None, timings, cascade_info,
                              [round(v, 6) for v in working.grid.GetSpacing()] if working.resampled else None, fast)


def write_probabilities(probabilities: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """(C, I, J, K) → a vector image (one component per class) with the reference's geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(probabilities.transpose(3, 2, 1, 0)), isVector=True)
    image.CopyInformation(reference)
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def sidecar(package: ModelPackage | BundleModel, args: argparse.Namespace, result: SegmentationResult,
            image: sitk.Image, seconds: float) -> dict[str, Any]:
    from cadcore.labelmaps import label_volumes_ml

    volumes = label_volumes_ml(result.labels, package.labels)
    array = sitk.GetArrayViewFromImage(result.labels)
    return {
        "model": package.id,  # the registry id, so callers (the Slicer module) can find the model again
        "model_name": package.name if isinstance(package, BundleModel) else package.card.get("name", package.id),
        "model_version": package.card.get("version"),
        "input": str(args.input),
        "output": str(args.output),
        "probabilities": str(args.probabilities) if args.probabilities else None,
        "overlay_png": str(args.png) if getattr(args, "png", None) else None,
        "labels": [
            {**{k: label[k] for k in ("value", "name", "color") if k in label},
             "terminology": label.get("terminology"),
             "voxels": int((array == int(label["value"])).sum()),
             "volume_ml": round(volumes.get(int(label["value"]), 0.0), 4)}
            for label in package.labels
        ],
        "geometry": {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
                     "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())},
        "cascade": result.cascade,
        "fast": result.fast,
        "working_spacing": result.working_spacing,
        "timings": {**result.timings, "total_s": round(seconds, 3)},
    }


def segment_command(args: argparse.Namespace) -> int:
    """Validate everything first, compute, then write the outputs (labelmap, sidecar, probabilities)."""
    from cadcore.labelmaps import write_labelmap

    started = time.perf_counter()
    output = check_output_path(args.output, args.force)
    sidecar_path = Path(f"{output}.json")
    if sidecar_path.exists() and not args.force:
        raise CadError("output sidecar exists; pass --force to overwrite it", sidecar_path)
    if args.probabilities:
        check_output_path(args.probabilities, args.force, PROBABILITY_SUFFIXES)
    if args.png:
        check_output_path(args.png, args.force, (".png",))
    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise CadError(f"--overlap must be in [0, 1), got {args.overlap}")
    package = find_model_or_bundle(args.model)
    if isinstance(package, BundleModel) and args.probabilities:
        raise CadError("--probabilities is not available for MONAI bundles (their postprocessing returns labels)",
                       package.folder)
    if package.task != "segmentation":
        raise CadError(f"is a {package.task} model; cad segment needs a segmentation model", package.folder)
    if getattr(args, "fast", False):
        if isinstance(package, BundleModel):
            raise CadError("--fast needs a model package whose card names a fast resolution, not a MONAI bundle",
                           package.folder)
        fast_mode(package)  # a card without a fast resolution fails before any reading or computing
    if isinstance(package, ModelPackage):
        check_interpolation(package)
    package.verify()
    image = read_volume(args.input, args.series)
    configure_cpu_threads()
    progress = StagedProgress({"preprocess": 1, "network": 8, "postprocess": 1, "write": 0.5})
    written: list[Path] = []
    try:
        result = segment_image(image, package, args.device, args.overlap, args.batch_size,
                               keep_probabilities=bool(args.probabilities), use_cascade=not args.no_cascade,
                               progress=progress, fast=getattr(args, "fast", False))
        report = sidecar(package, args, result, image, time.perf_counter() - started)
        written.append(write_labelmap(result.labels, output, package.labels))
        if args.probabilities:
            write_probabilities(result.probabilities, image, Path(args.probabilities))
            written.append(Path(args.probabilities))
        if args.png:
            from cadcore.overlay import render_overlay

            written.append(render_overlay(image, result.labels, package.labels, args.png,
                                          f"{package.id} on {Path(args.input).name}"))
        with atomic_path(sidecar_path) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        progress.update("write", 1.0)
    except BaseException:
        for path in written:  # all outputs or none: a sidecar never describes a missing file, nor the reverse
            path.unlink(missing_ok=True)
        raise
    finally:
        progress.close()
    print(f"segmentation: {output}")
    print(f"sidecar:      {sidecar_path}")
    if args.png:
        print(f"overlay PNG:  {args.png}")
    for label in report["labels"]:
        print(f"  {label['value']:>3}  {label['name']:<32} {label['volume_ml']:8.3f} mL")
    return 0

