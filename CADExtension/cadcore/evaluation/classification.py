"""``cad evaluate`` for classifiers: ACC, AUC, sensitivity, specificity, balanced accuracy, ECE, confusion matrix,
an ROC PNG beside the report and per-sample probabilities, on exactly the inputs ``cad classify`` would build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cadcore.classification.datasets import ClassificationSet, load_csv, load_npz_split, subset, through_roi
from cadcore.device import pick_device
from cadcore.errors import CadError
from cadcore.evaluation.metrics import classification_metrics
from cadcore.registry.packages import ModelPackage


def evaluation_set(package: ModelPackage, data: str, split: str) -> ClassificationSet:
    path = Path(data)
    if not path.exists():
        raise CadError("dataset not found", path)
    if path.suffix == ".npz":
        if split == "all":
            parts = [load_npz_split(path, name) for name in ("train", "val")]
            data = ClassificationSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                                       ("inputs", "labels", "images", "masks")), parts[0].spacing,
                                     parts[0].ids + parts[1].ids)
        else:
            data = load_npz_split(path, split)
        roi_spec = dict(package.card.roi)
        return through_roi(data, roi_spec) if roi_spec.get("fit") == "extent" else data
    if split == "test":
        raise CadError("--split test needs a .npz with test arrays; for CSV data use val or all", path)
    card = package.card
    full = load_csv(path, dict(card.roi), card.preprocessing.get("normalization", {}))
    if split == "all":
        return full
    held_out = set(card.validation_ids)
    if not held_out:
        raise CadError("model card lists no validation samples; use --split all", path)
    return subset(full, np.array([i for i, sample in enumerate(full.ids) if sample in held_out]))


def probabilities_for(package: ModelPackage, data: ClassificationSet, device: str) -> np.ndarray:
    if package.card.is_baseline:
        from cadcore.classification.baseline import BaselineClassifier
        from cadcore.classification.radiomics import feature_matrix

        features = feature_matrix(zip(data.images, data.masks, [data.spacing] * len(data.labels)))
        return BaselineClassifier.from_package(package).predict_proba(features)
    from cadcore.classification.ensemble import cnn_probabilities

    return cnn_probabilities(package, data.inputs, pick_device(device))[0]


def evaluate_classifier(package: ModelPackage, data: str, split: str, device: str, roc_path: Path) -> dict[str, Any]:
    dataset = evaluation_set(package, data, split)
    names = package.card.class_names()
    probabilities = probabilities_for(package, dataset, device)
    if probabilities.shape[1] != len(names) or dataset.labels.max() >= len(names):
        raise CadError(f"data has labels outside the model's {len(names)} classes", data)
    metrics = classification_metrics(probabilities, dataset.labels)
    plot_roc(probabilities, dataset.labels, names, roc_path, f"{package.id} ({split})")
    return {
        "model": package.id,
        "model_version": package.version,
        "dataset": str(data),
        "split": split,
        "classes": names,
        **metrics,
        "roc_png": str(roc_path),
        "samples": [{"id": sample, "label": int(label), "probabilities": [round(float(p), 6) for p in row]}
                    for sample, label, row in zip(dataset.ids, dataset.labels, probabilities)],
    }


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
