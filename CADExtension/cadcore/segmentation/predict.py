"""``cad segment``: a volume in, a labelled segmentation on the input's exact grid out.

Pipeline: read and check the input → working space (orientation, spacing, normalisation) → sliding-window U-Net
(Gaussian blending) → probabilities back onto the input grid → argmax → post-processing → labelmap + JSON sidecar.
A card with a ``cascade`` section runs a coarse network first and the fine network only on the region it finds.
A card with a ``fast`` section names a low working resolution (``spacing``; optionally its own ``network`` stored
under the ``fast.`` weight prefix, and ``inference`` settings) that ``--fast`` runs for CPU-only laptops; the labels
still come back on the input's exact grid.
``uncertainty=True`` runs mirror test-time augmentation and returns the normalised voxel entropy of the mean softmax
(:mod:`.uncertainty`; the labels are then the mean's). Every model package with a ``training_domain`` is checked by
the out-of-distribution guard (:mod:`.ood_guard`), whose sentences go into ``warnings``; the result is unchanged.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.device import pick_device
from cadcore.errors import CadError
from cadcore.preprocessing.input_grid import (
    labels_on_input_grid,
    labels_to_input_grid,
    paste,
    probabilities_to_input_grid,
)
from cadcore.preprocessing.working_space import prepare
from cadcore.progress import StagedProgress
from cadcore.registry.bundles import BundleModel
from cadcore.registry.networks import load_network
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.ood_guard import check as guard
from cadcore.segmentation.postprocess import clean_labels
from cadcore.segmentation.sliding_window import (
    count_windows,
    fold_batch_norm,
    predict_probabilities,
    tta_probabilities,
)
from cadcore.segmentation.uncertainty import entropy_on_input_grid, passes_for, uncertainty_summary


@dataclass
class SegmentationResult:
    labels: sitk.Image  # uint8, the input's exact grid
    probabilities: np.ndarray | None  # (C, I, J, K) float32 on the input grid, when asked for
    timings: dict[str, float] = field(default_factory=dict)
    cascade: dict[str, Any] | None = None
    working_spacing: list[float] | None = None  # the network's voxel size in mm (None: the input's own)
    fast: bool = False
    measures: dict[str, Any] | None = None  # a pipeline's own figures for the sidecar (e.g. hippodeep's eTIV)
    warnings: list[str] = field(default_factory=list)  # "this scan may not be what the model was made for"
    uncertainty: np.ndarray | None = None  # float32 normalised entropy, (z, y, x) as sitk.GetArrayFromImage
    uncertainty_summary: dict[str, Any] | None = None  # the sidecar's "uncertainty" object without "file"
    notes: list[str] = field(default_factory=list)  # how it was computed, when not the usual way (a bundle's path)


def check_uncertainty(package: ModelPackage | BundleModel) -> None:
    """Refuse ``--uncertainty`` where there are no voxel probabilities to average: a MONAI bundle (its
    postprocessing returns labels) or a model with its own pipeline."""
    if isinstance(package, BundleModel):
        raise CadError("--uncertainty is not available for MONAI bundles (their postprocessing returns labels)",
                       package.folder)
    if package.card.pipeline is not None:
        raise CadError(f"--uncertainty is not available for model {package.id}: it runs its own "
                       f"{package.card.pipeline.name} pipeline, without test-time augmentation", package.folder)


def check_automatic(package: ModelPackage) -> None:
    """Refuse a guided (interactive) network: its input holds click maps, so without a prompt it has nothing to
    segment (``cad segment``, ``cad evaluate`` and batches would fail deep in the network, or answer nothing)."""
    if package.card.interactive is not None:
        raise CadError("is a guided (interactive) model: it segments the structure under a click, so run it with "
                       "cad interact (or the Segment Editor's CAD AI effect)", package.folder)


def check_options(package: ModelPackage | BundleModel, fast: bool = False, probabilities: bool = False,
                  uncertainty: bool = False) -> None:
    """What the options ask of the model, refused in one line: a classifier, a guided network, ``--fast``,
    probabilities or uncertainty where the model has none. Shared by :func:`segmentation_model` (before any image
    is read) and :func:`segment_image` (whoever calls it)."""
    if package.task != "segmentation":
        raise CadError(f"is a {package.task} model; cad segment needs a segmentation model", package.folder)
    if isinstance(package, BundleModel):
        if probabilities:
            raise CadError("--probabilities is not available for MONAI bundles (their postprocessing returns "
                           "labels)", package.folder)
        if fast:
            raise CadError("--fast needs a model package whose card names a fast resolution, not a MONAI bundle",
                           package.folder)
    else:
        check_automatic(package)
        pipeline = package.card.pipeline
        if pipeline is not None and (fast or probabilities):
            raise CadError(f"model {package.id} runs its own {pipeline.name} pipeline, which has no "
                           f"{'--fast mode' if fast else 'probability output'}", package.folder)
        if fast:
            package.card.fast_stage()  # a card without a fast resolution fails before any reading or computing
    if uncertainty:
        check_uncertainty(package)


def segmentation_model(model: str, overlap: float | None = None, fast: bool = False,
                       probabilities: bool = False, uncertainty: bool = False) -> ModelPackage | BundleModel:
    """The package or bundle ``cad segment`` (and the server's ``/segment``) will run with these options, refused
    in one line before any image is read (:func:`check_options`, and a bad overlap). One function, so the command
    and the server cannot drift apart."""
    from cadcore.registry import find_model_or_bundle

    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise CadError(f"--overlap must be in [0, 1), got {overlap}")
    package = find_model_or_bundle(model)
    check_options(package, fast, probabilities, uncertainty)
    return package


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
    uncertainty: bool = False,
    guard_warnings: list[str] | None = None,
) -> SegmentationResult:
    """Segment one volume with a segmentation package; the result lies on ``image``'s grid exactly.
    ``guard_warnings``: the out-of-distribution guard's sentences when the caller already has them (``--strict``
    checked them before), else they are computed here."""
    check_options(package, fast, keep_probabilities, uncertainty)
    if isinstance(package, BundleModel):  # a MONAI bundle runs its own transforms and inferer
        from cadcore.segmentation.bundle_inference import run_bundle_noted

        labels, timings, notes = run_bundle_noted(image, package, pick_device(device), overlap, sw_batch_size,
                                                  progress.update if progress else None)
        return SegmentationResult(labels, None, timings, notes=notes)
    torch_device = pick_device(device)
    card = package.card
    # cheap (header and a subsample); the result is computed all the same
    warnings = guard(image, card) if guard_warnings is None else list(guard_warnings)
    if card.pipeline is not None:  # its own conventions (conform, masks, template crops): its own module
        from cadcore.segmentation.pipelines import run_pipeline

        result = run_pipeline(image, package, torch_device, progress)
        result.warnings = warnings + result.warnings
        return result
    stage = card.fast_stage() if fast else card.main_stage
    overlap = stage.inference.overlap if overlap is None else overlap
    sw_batch_size = sw_batch_size or stage.inference.sw_batch_size
    timings: dict[str, float] = {}
    cascade_info = None

    if card.cascade is not None and use_cascade:
        from cadcore.segmentation.cascade import locate_roi

        started = time.perf_counter()
        roi, cascade_info = locate_roi(image, package, torch_device, sw_batch_size)
        timings["coarse_s"] = round(time.perf_counter() - started, 3)
        region = roi if roi is not None else None
    else:
        region = None
    target = image if region is None else sitk.RegionOfInterest(image, region[1], region[0])

    started = time.perf_counter()
    working = prepare(target, stage.preprocessing)
    timings["preprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("preprocess", 1.0)

    started = time.perf_counter()
    network = load_network(package, stage, torch_device)
    if torch_device.type == "cpu":
        fold_batch_norm(network)
    patch = list(stage.inference.patch_size or ())
    passes = passes_for(card.mirror_axes) if uncertainty else 1
    n_windows = passes * max(1, math.ceil(count_windows(working.array.shape, patch, overlap) / sw_batch_size))
    done = [0]

    def on_window(_: float) -> None:
        done[0] += 1
        if progress:
            progress.update("network", done[0] / n_windows)

    if uncertainty:  # the mean over mirrored passes: its entropy is the map, its argmax the labels
        probabilities = tta_probabilities(network, working.array, patch, torch_device, list(card.mirror_axes),
                                          overlap, sw_batch_size, stage.inference.mode, progress=on_window)
    else:
        probabilities = predict_probabilities(network, working.array, patch, torch_device, overlap, sw_batch_size,
                                              stage.inference.mode, progress=on_window,
                                              channels_last=torch_device.type == "cpu")
    timings["network_s"] = round(time.perf_counter() - started, 3)

    started = time.perf_counter()
    if keep_probabilities:
        on_grid = probabilities_to_input_grid(probabilities, working)
        labels = on_grid.argmax(0).astype(np.uint8)
    else:  # labels without a full-resolution float map per class (the same labels, far less time and memory)
        labels = labels_to_input_grid(probabilities, working)
    entropy = entropy_on_input_grid(probabilities, working) if uncertainty else None
    n_classes = len(probabilities)
    del probabilities
    labels = clean_labels(labels, card.postprocessing)
    if region is not None:  # back from the cascade's region to the whole image
        index, size = region
        window = tuple(slice(i, i + s) for i, s in zip(index, size))
        labels = paste(labels, window, image.GetSize())
        entropy = None if entropy is None else paste(entropy, window, image.GetSize())
        if keep_probabilities:
            on_grid = paste(on_grid.astype(np.float32, copy=False), window, image.GetSize(), background_channel=True)
    timings["postprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("postprocess", 1.0)
    summary = None if entropy is None else uncertainty_summary(labels, entropy, package.labels, card.mirror_axes,
                                                               n_classes)
    return SegmentationResult(labels_on_input_grid(labels, image), on_grid.astype(np.float32) if keep_probabilities
                              else None, timings, cascade_info,
                              [round(v, 6) for v in working.grid.GetSpacing()] if working.resampled else None, fast,
                              warnings=warnings,
                              uncertainty=None if entropy is None else np.ascontiguousarray(entropy.transpose(2, 1, 0)),
                              uncertainty_summary=summary)
