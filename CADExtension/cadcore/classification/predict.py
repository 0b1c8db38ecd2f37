"""``cad classify``: a lesion, ROI or whole volume in; calibrated class probabilities and a Grad-CAM heatmap out.

The heatmap is computed on the ROI grid (MONAI ``GradCAM`` on the card's target layer, upsampled to the ROI) and
resampled onto the *input's* grid, so it overlays the volume exactly in Slicer; its peak is reported in RAS mm.
Classical-baseline packages (hand-crafted features + SVM/RF) run through the same command, without a heatmap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from cadcore.classification.calibration import softmax
from cadcore.classification.gradcam import gradcam_on_roi
from cadcore.classification.roi import Roi, extract_roi, lps_to_ras, network_input
from cadcore.device import pick_device
from cadcore.errors import CadError
from cadcore.preprocessing.working_space import from_array
from cadcore.registry.packages import ModelPackage


@dataclass
class ClassificationResult:
    report: dict[str, Any]
    heatmap: sitk.Image | None  # float32 on the input grid


def roi_features(package: ModelPackage, roi: Roi) -> dict[str, float]:
    """Hand-crafted features of the ROI (lesion mask, or the whole ROI), shown beside the CNN's answer."""
    from cadcore.classification.baseline import roi_feature_spacing
    from cadcore.classification.radiomics import extract_features

    mask = roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool)
    values = extract_features(roi.image, mask, roi_feature_spacing(package.card.roi, roi.grid.GetSpacing()))
    return {name: round(float(value), 6) for name, value in values.items()}


def _baseline_logits(package: ModelPackage, roi: Roi) -> np.ndarray:
    from cadcore.classification.baseline import BaselineClassifier, roi_feature_spacing
    from cadcore.classification.radiomics import extract_features

    mask = roi.mask if roi.mask is not None else np.ones(roi.image.shape, dtype=bool)
    features = extract_features(roi.image, mask, roi_feature_spacing(package.card.roi, roi.grid.GetSpacing()))
    classifier = BaselineClassifier.from_package(package)
    probabilities = classifier.predict_proba(classifier.vector(features)[None])[0]
    return np.log(np.clip(probabilities, 1e-12, 1.0))


def classify_image(image: sitk.Image, package: ModelPackage, mask: sitk.Image | None = None,
                   label: int | None = None, centre_ras: list[float] | None = None, size_mm: list[float] | None = None,
                   heatmap: bool = False, target_class: int | None = None, device: str = "auto",
                   source: str = "input") -> ClassificationResult:
    if package.task != "classification":
        raise CadError(f"is a {package.task} model; cad classify needs a classification model", package.folder)
    card = package.card
    names = card.class_names()
    roi = extract_roi(image, card.roi, mask, label, centre_ras, size_mm, source)
    started = time.perf_counter()
    temperature = card.calibration.temperature
    features = roi_features(package, roi)
    heatmap_image = None
    peak_ras = None
    if card.is_baseline:
        uncalibrated = softmax(_baseline_logits(package, roi))
        probabilities, temperature = uncalibrated, 1.0
    else:
        from cadcore.classification.ensemble import calibrated_probabilities, load_members, member_logits

        torch_device = pick_device(device)
        members = load_members(package, torch_device)
        inputs = network_input(roi, card.roi, card.preprocessing.get("normalization", {"kind": "none"}))[None]
        stack = member_logits(members, inputs, torch_device, card.inference.tta == "flips")
        probabilities, uncalibrated = (p[0] for p in calibrated_probabilities(stack, card.calibration))
    predicted = int(np.argmax(probabilities))
    if heatmap and not card.is_baseline:
        target = predicted if target_class is None else target_class
        if not 0 <= target < len(names):
            raise CadError(f"--heatmap-class {target} is not a class of this model (0..{len(names) - 1})")
        x = torch.from_numpy(inputs).to(torch_device)
        cam = np.mean([gradcam_on_roi(network, x, target, card.gradcam_layer) for network in members], axis=0)
        heatmap_image = sitk.Resample(from_array(cam, roi.grid), image, sitk.Transform(), sitk.sitkLinear, 0.0,
                                      sitk.sitkFloat32)
        # the peak is taken on the input grid: a padded part of the ROI is not anatomy
        on_input = sitk.GetArrayViewFromImage(heatmap_image)
        peak_kji = np.unravel_index(int(np.argmax(on_input)), on_input.shape)
        peak_ras = lps_to_ras(image.TransformIndexToPhysicalPoint([int(i) for i in peak_kji[::-1]]))
    report = {
        "model": package.id,
        "model_version": card.version,
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
