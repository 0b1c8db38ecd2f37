"""Classical baselines on AdrenalMNIST3D: hand-crafted features + SVM / random forest (a benchmark, not a test).

Extracts :mod:`cadcore.classification.radiomics` from every train and val sample, read as ``cad train`` and
``cad evaluate`` read them (``cadcore.classification.datasets.load_npz_split``: shape masks scaled to [0, 1],
mask = value > 0.5), caches the matrices as .npz, trains both baselines on train with
:func:`cadcore.classification.baseline.train_baseline` and scores them on val: AUC, accuracy, sensitivity,
specificity, balanced accuracy (threshold: argmax, i.e. p(mass) >= 0.5) and the ECE of the positive-class probability
(10 equal-width bins), plus the top-label ECE that the CNN cards report. Two feature pipelines:

* ``direct``: the arrays as read, spacing (1, 1, 1): the same inputs as the CNN's card metrics;
* ``roi``: each sample goes through what ``cad classify`` does (``cadcore.classification.roi.extract_roi`` with the
  card's ROI spec, an extent-fitted 28^3/64^3 block resampled with linear/nearest interpolation, features in
  ROI-voxel units by :func:`cadcore.classification.baseline.roi_feature_spacing`). The resampling changes the shape
  features, so a model trained on ``direct`` features scores lower under ``cad classify``; the exported packages
  (``--export DIR``: ``adrenal-svm``, ``adrenal-rf``, the shipped packages) are trained on ``roi`` features for that
  reason, and ``cad evaluate -m DIR/adrenal-svm --data ... --split val`` reproduces their card metrics.

    nice -n 10 .venv/bin/python benchmarks/adrenal_baselines.py [--sizes 28 64] [--pipelines direct roi]
        [--cache runs/features] [--json runs/adrenal_baselines.json] [--export runs/models] [--export-size 28]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "medmnist3d"
FILES = {28: "adrenalmnist3d.npz", 64: "adrenalmnist3d_64.npz"}
CLASSES = [{"value": 0, "name": "normal adrenal"}, {"value": 1, "name": "adrenal mass"}]  # as adrenal-resnet
PACKAGE_VERSION = "1.1.0"  # 1.1.0: features version 2 (marching-cubes surface area); ids stay adrenal-svm/-rf
KINDS = ("svm", "rf")
PIPELINES = ("direct", "roi")
ROI_SPACING_RULE = 2  # bump when roi_feature_spacing changes: invalidates cached roi features
READER = "cadcore.classification.datasets.load_npz_split"  # intensities in [0, 1], as cad train/evaluate read them


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def roi_spec(train_images: np.ndarray, size: int) -> dict[str, Any]:
    """The card's ``roi`` section, as ``cad train --task classify`` writes it for MedMNIST data."""
    from cadcore.classification.datasets import extent_margin

    return {"size": [size] * 3, "spacing": None, "fit": "extent", "margin": extent_margin(train_images > 0),
            "input": "mask", "orientation": "RAS"}


def split_features(source: Path, split: str, spec: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """Features of one split, read exactly as ``cad train`` / ``cad evaluate`` read it (the packages must agree).

    :func:`cadcore.classification.datasets.load_npz_split` scales the uint8 arrays to [0, 1] (mask = value > 0.5) and
    ``roi`` cuts each sample through :func:`cadcore.classification.datasets.through_roi`, what ``cad classify`` does.
    The first-order features scale with the intensities, so reading the raw 0-255 arrays instead (this script did
    before features version 2) gives the same metrics after standardisation but a package whose stored training
    features do not match what the engine computes.
    """
    from cadcore.classification.datasets import load_npz_split, through_roi
    from cadcore.classification.radiomics import feature_matrix

    data = load_npz_split(source, split)
    if spec is not None:
        started = time.perf_counter()
        data = through_roi(data, spec)
        print(f"  {split}: ROI cut ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return feature_matrix(zip(data.images, data.masks, [data.spacing] * len(data.labels))), data.labels


def load_features(data: Path, size: int, cache: Path, pipeline: str) -> dict[str, Any]:
    """Feature matrices of one resolution and pipeline, from the cache when data, extractor and ROI spec match."""
    from cadcore.classification.radiomics import FEATURE_NAMES, FEATURES_VERSION

    source = data / FILES[size]
    digest = sha256(source)
    archive = np.load(source)
    spec = roi_spec(archive["train_images"], size) if pipeline == "roi" else None
    key = json.dumps({"source_sha256": digest, "features_version": FEATURES_VERSION, "names": list(FEATURE_NAMES),
                      "roi": spec, "roi_spacing_rule": ROI_SPACING_RULE, "reader": READER}, sort_keys=True)
    cached = cache / f"adrenalmnist3d_{size}_{pipeline}_features.npz"
    if cached.exists():
        stored = np.load(cached)
        if str(stored["key"]) == key:
            print(f"{size}^3 {pipeline}: features from cache {cached}", file=sys.stderr)
            return {name: stored[name] for name in ("train_x", "train_y", "val_x", "val_y")} | {
                "source_sha256": digest, "roi": spec, "seconds": 0.0}
    print(f"{size}^3 {pipeline}: extracting features from {source}", file=sys.stderr)
    started = time.perf_counter()
    train_x, train_y = split_features(source, "train", spec)
    val_x, val_y = split_features(source, "val", spec)
    seconds = time.perf_counter() - started
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, train_x=train_x, train_y=train_y, val_x=val_x, val_y=val_y, key=key)
    tmp.replace(cached)
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y, "source_sha256": digest,
            "roi": spec, "seconds": seconds}


def positive_ece(p_positive: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Equal-width-bin ECE of p(class 1) against the observed frequency of class 1 (bins [0, .1), ..., [.9, 1])."""
    index = np.minimum((p_positive * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            error += in_bin.mean() * abs(float(labels[in_bin].mean()) - float(p_positive[in_bin].mean()))
    return float(error)


def metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score

    from cadcore.classification.calibration import expected_calibration_error

    predicted = probabilities.argmax(1)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    return {
        "n": int(len(labels)),
        "auc": round(float(roc_auc_score(labels, probabilities[:, 1])), 4),
        "acc": round(float((predicted == labels).mean()), 4),
        "sensitivity": round(float(tp / max(1, tp + fn)), 4),
        "specificity": round(float(tn / max(1, tn + fp)), 4),
        "balanced_accuracy": round(float(balanced_accuracy_score(labels, predicted)), 4),
        "ece": round(positive_ece(probabilities[:, 1], labels), 4),
        "ece_top_label": round(expected_calibration_error(probabilities, labels), 4),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def export(folder: Path, classifier: Any, size: int, features: dict[str, Any]) -> Path:
    """One baseline package, with a card that says what it was trained on, under which licence, and how well.

    The card's validation metrics are the engine's :func:`cadcore.evaluation.metrics.classification_metrics` (what
    ``cad train`` and ``cad evaluate`` report: ECE on the predicted class's probability), not this script's table.
    """
    from cadcore.evaluation.metrics import classification_metrics
    from cadcore.registry.packages import save_package

    kind = classifier.kind
    card = {
        "format_version": 1,
        "id": f"adrenal-{kind}",
        "version": PACKAGE_VERSION,
        "task": "classification",
        "description": (f"Classical baseline for CADClassify: {len(classifier.feature_names)} hand-crafted shape, "
                        f"first-order and GLCM features + {'RBF SVM' if kind == 'svm' else 'random forest'}, "
                        f"trained on AdrenalMNIST3D {size}^3 adrenal shape masks (normal vs mass/hyperplasia)."),
        "modality": "CT (shape mask)",
        "classes": CLASSES,
        "roi": features["roi"],
        "preprocessing": {"normalization": {"kind": "none"}},
        "network": classifier.card_section(),
        "training": {
            "data": f"AdrenalMNIST3D {size}^3 ({FILES[size]}, sha256 {features['source_sha256']})",
            "licence": "CC BY 4.0 (MedMNIST v2, Zenodo record 10519652; cite Yang et al., Sci Data 10, 41, 2023)",
            "split": "official MedMNIST train (fit and CV model selection) / val (metrics); official test held out",
            "n_train": int(len(features["train_y"])), "n_val": int(len(features["val_y"])),
            "seed": classifier.seed,
            "feature_input": ("each sample through cadcore.classification.roi.extract_roi with this card's roi "
                              "(mask = array > 0, 1 mm voxels), features with "
                              "cadcore.classification.baseline.roi_feature_spacing (ROI-voxel units): "
                              "what cad classify computes"),
            "script": "benchmarks/adrenal_baselines.py",
            "command": ("nice -n 10 .venv/bin/python benchmarks/adrenal_baselines.py --sizes 28 --pipelines roi "
                        f"--export DIR --export-size {size} --seed {classifier.seed}"),
            "citation": "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023)",
        },
        "licence": "CC-BY-4.0 (derived from AdrenalMNIST3D, MedMNIST v2, CC BY 4.0); code Apache-2.0",
        "metrics": {"validation": classification_metrics(classifier.predict_proba(features["val_x"]),
                                                         features["val_y"])},
    }
    return save_package(folder / card["id"], card, classifier.state_tensors()).folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the AdrenalMNIST3D .npz files")
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64], choices=sorted(FILES))
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=PIPELINES)
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument("--export", type=Path, default=None, help="write adrenal-svm and adrenal-rf packages here")
    parser.add_argument("--export-size", type=int, default=28, choices=sorted(FILES))
    args = parser.parse_args()

    from cadcore.classification.baseline import train_baseline
    from cadcore.classification.radiomics import FEATURE_NAMES

    runs = [(size, pipeline) for size in sorted(args.sizes) for pipeline in args.pipelines]
    if args.export and (args.export_size, "roi") not in runs:
        runs.append((args.export_size, "roi"))
    table: dict[str, Any] = {"dataset": "AdrenalMNIST3D", "seed": args.seed, "n_features": len(FEATURE_NAMES),
                             "threshold": "argmax (p(mass) >= 0.5)", "machine": platform.machine(),
                             "python": platform.python_version(), "results": {}}
    exported = []
    for size, pipeline in runs:
        features = load_features(args.data, size, args.cache, pipeline)
        row = table["results"].setdefault(f"{size}^3", {})[pipeline] = {
            "feature_seconds": round(features["seconds"], 1)}
        for kind in KINDS:
            started = time.perf_counter()
            classifier = train_baseline(features["train_x"], features["train_y"], kind, list(FEATURE_NAMES),
                                        args.seed)
            result = metrics(classifier.predict_proba(features["val_x"]), features["val_y"])
            result |= {"hyperparameters": classifier.params, "cv_auc": classifier.selection["best_cv_score"],
                       "train_seconds": round(time.perf_counter() - started, 1)}
            row[kind] = result
            print(f"{size}^3 {pipeline} {kind}: AUC {result['auc']:.3f}  ACC {result['acc']:.3f}  sens "
                  f"{result['sensitivity']:.3f}  spec {result['specificity']:.3f}  BA {result['balanced_accuracy']:.3f}"
                  f"  ECE {result['ece']:.3f}  ({classifier.params}, CV AUC {result['cv_auc']:.3f})", file=sys.stderr)
            if args.export and (size, pipeline) == (args.export_size, "roi"):
                exported.append(str(export(args.export, classifier, size, features)))
    if exported:
        table["exported"] = exported
    text = json.dumps(table, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
