"""``cad classify``: a lesion, ROI or whole volume in; calibrated class probabilities and a Grad-CAM heatmap out.

The heatmap is computed on the ROI grid (MONAI ``GradCAM`` on the card's target layer, upsampled to the ROI) and
resampled onto the *input's* grid, so it overlays the volume exactly in Slicer; its peak is reported in RAS mm.
Classical-baseline packages (hand-crafted features + SVM/RF) run through the same command, without a heatmap.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from cadcore.calibration import softmax
from cadcore.errors import CadError
from cadcore.inference import configure_cpu_threads, pick_device
from cadcore.io import atomic_path, check_output_path, read_image, read_volume
from cadcore.models import ModelPackage, find_model
from cadcore.preprocess import from_array
from cadcore.roi import Roi, extract_roi, lps_to_ras, network_input

HEATMAP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class ClassificationResult:
    report: dict[str, Any]
    heatmap: sitk.Image | None  # float32 on the input grid


def class_names(package: ModelPackage) -> list[str]:
    classes = package.card.get("classes") or []
    return [str(c["name"]) for c in sorted(classes, key=lambda c: int(c["value"]))]


def is_baseline(package: ModelPackage) -> bool:
    return package.card["network"].get("name") == "baseline"


def roi_features(package: ModelPackage, roi: Roi) -> dict[str, float]:
    """Hand-crafted features of the ROI (lesion mask, or the whole ROI), shown beside the CNN's answer."""
    from cadcore.baseline import roi_feature_spacing
    from cadcore.features import extract_features

    mask = roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool)
    values = extract_features(roi.image, mask, roi_feature_spacing(package.card.get("roi", {}), roi.grid.GetSpacing()))
    return {name: round(float(value), 6) for name, value in values.items()}


def _baseline_logits(package: ModelPackage, roi: Roi) -> np.ndarray:
    from cadcore.baseline import BaselineClassifier, roi_feature_spacing
    from cadcore.features import extract_features

    mask = roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool)
    features = extract_features(roi.image, mask, roi_feature_spacing(package.card.get("roi", {}),
                                                                     roi.grid.GetSpacing()))
    classifier = BaselineClassifier.from_package(package)
    probabilities = classifier.predict_proba(classifier.vector(features)[None])[0]
    return np.log(np.clip(probabilities, 1e-12, 1.0))


def _minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max to [0, 1], 1 = most relevant; a constant map becomes 1 if positive, else 0 (no evidence).

    MONAI's ``default_normalizer`` maps (min, max) to (1, 0), i.e. it flips the map (Project-MONAI/tutorials#1796).
    """
    x = x.detach()
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    low, high = flat.min(1).values.view(shape), flat.max(1).values.view(shape)
    return torch.where(high > low, (x - low) / (high - low).clamp_min(1e-12), (x > 0).to(x.dtype))


def gradcam(network: torch.nn.Module, x: torch.Tensor, class_index: int, layer: str) -> np.ndarray:
    """Grad-CAM (MONAI) of one class for a batch (N, C, I, J, K): (N, I, J, K) in [0, 1], 1 = most relevant.

    The network runs in eval mode, so each sample's map is the one it gets alone. MONAI leaves its hooks on the
    module: pass a copy when calling this many times on one network.
    """
    from monai.visualize import GradCAM

    cam = GradCAM(nn_module=network, target_layers=layer, postprocessing=_minmax)
    with torch.enable_grad():
        values = cam(x.clone().requires_grad_(True), class_idx=class_index)
    return values[:, 0].detach().cpu().numpy().astype(np.float32)


def gradcam_on_roi(network: torch.nn.Module, x: torch.Tensor, class_index: int, layer: str) -> np.ndarray:
    """Grad-CAM (MONAI) for one class, (I, J, K) in [0, 1] on the ROI grid (1 = most relevant)."""
    return gradcam(network, x, class_index, layer)[0]


def classify_image(image: sitk.Image, package: ModelPackage, mask: sitk.Image | None = None,
                   label: int | None = None, centre_ras: list[float] | None = None, size_mm: list[float] | None = None,
                   heatmap: bool = False, target_class: int | None = None, device: str = "auto",
                   source: str = "input") -> ClassificationResult:
    if package.task != "classification":
        raise CadError(f"is a {package.task} model; cad classify needs a classification model", package.folder)
    card = package.card
    names = class_names(package)
    roi = extract_roi(image, card.get("roi", {}), mask, label, centre_ras, size_mm, source)
    started = time.perf_counter()
    temperature = float(card.get("calibration", {}).get("temperature", 1.0))
    features = roi_features(package, roi)
    heatmap_image = None
    peak_ras = None
    if is_baseline(package):
        uncalibrated = softmax(_baseline_logits(package, roi))
        probabilities, temperature = uncalibrated, 1.0
    else:
        from cadcore.cnn_predict import averaged_probabilities, load_members, member_logits

        torch_device = pick_device(device)
        members = load_members(package, torch_device)
        inputs = network_input(roi, card.get("roi", {}), card.get("preprocessing", {}).get(
            "normalization", {"kind": "none"}))[None]
        stack = member_logits(members, inputs, torch_device, card.get("inference", {}).get("tta") == "flips")
        prior = card.get("calibration", {}).get("prior")
        probabilities = averaged_probabilities(stack, temperature, prior)[0]
        uncalibrated = averaged_probabilities(stack)[0]
    predicted = int(np.argmax(probabilities))
    if heatmap and not is_baseline(package):
        target = predicted if target_class is None else target_class
        if not 0 <= target < len(names):
            raise CadError(f"--heatmap-class {target} is not a class of this model (0..{len(names) - 1})")
        x = torch.from_numpy(inputs).to(torch_device)
        layer = card.get("gradcam", {}).get("target_layer", "layer4")
        cam = np.mean([gradcam_on_roi(network, x, target, layer) for network in members], axis=0)
        heatmap_image = sitk.Resample(from_array(cam, roi.grid), image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                      sitk.sitkFloat32)
        # the peak is taken on the input grid: a padded part of the ROI is not anatomy
        on_input = sitk.GetArrayViewFromImage(heatmap_image)
        peak_kji = np.unravel_index(int(np.argmax(on_input)), on_input.shape)
        peak_ras = lps_to_ras(image.TransformIndexToPhysicalPoint([int(i) for i in peak_kji[::-1]]))
    report = {
        "model": package.id,
        "model_version": card.get("version"),
        "classes": names,
        "probabilities": {name: round(float(p), 6) for name, p in zip(names, probabilities)},
        "probabilities_uncalibrated": {name: round(float(p), 6) for name, p in zip(names, uncalibrated)},
        "predicted": names[predicted],
        "predicted_index": predicted,
        "calibrated": temperature != 1.0,
        "temperature": temperature,
        "roi": roi.info,
        "features": features,
        "heatmap": None,
        "heatmap_class": names[target_class if target_class is not None else predicted] if heatmap_image else None,
        "heatmap_peak_ras": [round(v, 3) for v in peak_ras] if peak_ras else None,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return ClassificationResult(report, heatmap_image)


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


def classify_command(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not args.force:
        raise CadError("output exists; pass --force to overwrite it", output)
    if not output.parent.exists():
        raise CadError("output folder does not exist", output.parent)
    if args.heatmap:
        check_output_path(args.heatmap, args.force, HEATMAP_SUFFIXES)
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
    written: list[Path] = []
    try:
        if result.heatmap is not None:
            with atomic_path(args.heatmap) as tmp:
                sitk.WriteImage(result.heatmap, str(tmp), True)
            written.append(Path(args.heatmap))
            result.report["heatmap"] = str(args.heatmap)
        with atomic_path(output) as tmp:
            tmp.write_text(json.dumps(result.report, indent=2) + "\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    report = result.report
    print(f"{report['model']}: {report['predicted']}  " + "  ".join(
        f"{name} {p:.3f}" for name, p in report["probabilities"].items()))
    if report["heatmap"]:
        peak = ", ".join(f"{v:.1f}" for v in report["heatmap_peak_ras"])
        print(f"heatmap: {report['heatmap']} (peak at RAS {peak} mm)")
    print(f"result: {output}")
    return 0
