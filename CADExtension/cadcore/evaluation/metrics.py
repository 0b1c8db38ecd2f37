"""Classifier scores used by training (model selection), the model card and ``cad evaluate``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cadcore.classification.calibration import expected_calibration_error


def auc(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC: positive class for two classes, macro one-vs-rest otherwise; NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro",
                               labels=list(range(probabilities.shape[1]))))


def classification_metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    predicted = probabilities.argmax(1)
    n_classes = probabilities.shape[1]
    matrix = confusion_matrix(labels, predicted, labels=list(range(n_classes)))
    result: dict[str, Any] = {
        "n": int(len(labels)),
        "acc": round(float((predicted == labels).mean()), 5),
        "auc": round(auc(probabilities, labels), 5),
        "balanced_accuracy": round(float(balanced_accuracy_score(labels, predicted)), 5),
        "ece": round(expected_calibration_error(probabilities, labels), 5),
        "confusion_matrix": matrix.tolist(),
    }
    if n_classes == 2:
        tn, fp, fn, tp = matrix.ravel()
        result["sensitivity"] = round(float(tp / max(1, tp + fn)), 5)
        result["specificity"] = round(float(tn / max(1, tn + fp)), 5)
    else:
        recalls = matrix.diagonal() / np.maximum(1, matrix.sum(1))
        result["sensitivity"] = round(float(recalls.mean()), 5)  # macro recall
        result["specificity"] = None
    return result


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    denominator = int(prediction.sum()) + int(truth.sum())
    return 1.0 if denominator == 0 else 2.0 * float((prediction & truth).sum()) / denominator


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float | None:
    """95th-percentile symmetric Hausdorff distance in mm; None when either mask is empty (undefined)."""
    from monai.metrics import compute_hausdorff_distance

    if not prediction.any() or not truth.any():
        return None
    as_tensor = [torch.from_numpy(m[None, None].astype(np.float32)) for m in (prediction, truth)]
    value = compute_hausdorff_distance(as_tensor[0], as_tensor[1], percentile=95, spacing=list(spacing))
    return float(value.item())
