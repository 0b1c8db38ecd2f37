"""``cad evaluate``: run a model over a dataset exactly as ``cad segment`` would, and score it.

Scores are computed on the input's own grid (after the round trip through working space and post-processing),
so they measure what a user gets. Dice per label; HD95 in millimetres (MONAI, with the image spacing).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cadcore.data import load_dataset, select_split
from cadcore.errors import CadError
from cadcore.inference import configure_cpu_threads
from cadcore.io import atomic_path, read_image, read_volume, same_grid
from cadcore.models import find_model
from cadcore.preprocess import to_array
from cadcore.segment import segment_image


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


def score_case(prediction: np.ndarray, truth: np.ndarray, spacing, values: list[int]) -> dict[str, dict[str, Any]]:
    scores: dict[str, dict[str, Any]] = {"dice": {}, "hd95": {}}
    for value in values:
        p, t = prediction == value, truth == value
        scores["dice"][str(value)] = round(dice(p, t), 5)
        distance = hd95(p, t, spacing)
        scores["hd95"][str(value)] = None if distance is None else round(distance, 4)
    return scores


def summarise(cases: list[dict[str, Any]], names: dict[int, str]) -> dict[str, Any]:
    per_label = {}
    for value, name in names.items():
        dices = [c["dice"][str(value)] for c in cases]
        distances = [c["hd95"][str(value)] for c in cases if c["hd95"][str(value)] is not None]
        per_label[str(value)] = {
            "name": name,
            "dice_mean": round(float(np.mean(dices)), 5),
            "dice_std": round(float(np.std(dices)), 5),
            "dice_median": round(float(np.median(dices)), 5),
            "hd95_mean": round(float(np.mean(distances)), 4) if distances else None,
            "hd95_median": round(float(np.median(distances)), 4) if distances else None,
            "hd95_undefined_cases": len(dices) - len(distances),
        }
    return per_label


def evaluate(model: str, data: str, split: str = "val", device: str = "auto", fast: bool = False) -> dict[str, Any]:
    package = find_model(model)
    if package.task != "segmentation":
        raise CadError(f"is a {package.task} model; this evaluation scores segmentation models", package.folder)
    if fast:
        from cadcore.segment import fast_mode

        fast_mode(package)  # no fast resolution: fail before scoring anything
    package.verify()
    dataset = load_dataset(data)
    val_ids = package.card.get("training", {}).get("split", {}).get("val")
    cases = select_split(dataset, split, val_ids)
    names = package.label_names()
    started = time.perf_counter()
    results = []
    for case in tqdm(cases, desc="evaluating", unit="case"):
        image = read_volume(case.image)
        if case.label is None:
            raise CadError("case has no label to score against", case.image)
        truth_image = read_image(case.label)
        if not same_grid(image, truth_image, tolerance=1e-3):
            raise CadError(f"label grid differs from its image {case.image.name}", case.label)
        case_started = time.perf_counter()
        result = segment_image(image, package, device, fast=fast)
        prediction = to_array(result.labels)
        truth = np.rint(to_array(truth_image)).astype(np.int64)
        scores = score_case(prediction, truth, image.GetSpacing(), sorted(names))
        results.append({"id": case.id, **scores, "seconds": round(time.perf_counter() - case_started, 3)})
    per_label = summarise(results, names)
    return {
        "model": package.id,
        "model_version": package.card.get("version"),
        "dataset": str(dataset.root),
        "split": split,
        "fast": fast,
        "n_cases": len(results),
        "mean_dice": round(float(np.mean([v["dice_mean"] for v in per_label.values()])), 5),
        "per_label": per_label,
        "seconds": round(time.perf_counter() - started, 2),
        "cases": results,
    }


def evaluate_command(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not args.force:
        raise CadError("report exists; pass --force to overwrite it", output)
    if not output.parent.exists():
        raise CadError("output folder does not exist", output.parent)
    configure_cpu_threads()
    package = find_model(args.model)
    if package.task == "classification":
        return _evaluate_classifier_command(args, package, output)
    if args.split == "test":
        raise CadError("--split test is for .npz classification data; segmentation uses val or all")
    report = evaluate(args.model, args.data, args.split, args.device, getattr(args, "fast", False))
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {output}")
    print(f"{report['model']} on {report['n_cases']} {report['split']} cases: mean Dice {report['mean_dice']:.4f}")
    for value, row in report["per_label"].items():
        hd = "n/a" if row["hd95_mean"] is None else f"{row['hd95_mean']:.2f} mm"
        print(f"  {value:>3} {row['name']:<36} Dice {row['dice_mean']:.4f}  HD95 {hd}")
    return 0


def _evaluate_classifier_command(args: argparse.Namespace, package, output: Path) -> int:
    from cadcore.evaluate_classify import evaluate_classifier

    package.verify()
    roc_path = output.with_name(output.name.removesuffix(".json") + "_roc.png")
    report = evaluate_classifier(package, args.data, args.split, args.device, roc_path)
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"report: {output}")
    sens = report["sensitivity"]
    spec = report["specificity"]
    print(f"{report['model']} on {report['n']} {report['split']} samples: AUC {report['auc']:.4f}"
          f"  ACC {report['acc']:.4f}  sensitivity {sens:.4f}  specificity {spec if spec is None else round(spec, 4)}"
          f"  ECE {report['ece']:.4f}")
    return 0
