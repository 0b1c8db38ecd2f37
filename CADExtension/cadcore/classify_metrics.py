"""Classifier scores used by training (model selection), the model card and ``cad evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cadcore.calibration import expected_calibration_error


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


def plot_roc(probabilities: np.ndarray, labels: np.ndarray, names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axis = plt.subplots(figsize=(4.5, 4.5))
    positives = [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1])
    for index in positives:
        if len(np.unique(labels == index)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels == index, probabilities[:, index])
        axis.plot(fpr, tpr, label=names[index])
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    axis.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
