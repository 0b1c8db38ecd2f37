"""Does ``cad segment --uncertainty`` mean anything? Two figures on a model's validation cases (never trained on).

1. **Voxel AUROC**: how well the voxel uncertainty (normalised entropy of the mirror-TTA mean softmax) separates
   wrong voxels (predicted label != truth) from right ones, among the voxels within ``--band-mm`` (3 mm) of either
   surface (any label boundary of the prediction or of the truth). Far from every surface almost every voxel is
   right and certain, which would make any map look good; the band is where errors happen. Reported pooled over the
   cases' band voxels and as the mean of the per-case AUROCs. 0.5 = no better than chance, 1 = every wrong voxel is
   more uncertain than every right one.
2. **Case-level rank correlation**: Spearman's rho between a case's mean uncertainty (the sidecar's ``mean``: over
   the voxels it labels) and its Dice (mean over labels). A useful map gives a negative rho against Dice, i.e. a
   positive one against the error 1 - Dice (both are reported). A second case score is also ranked: the map's sum
   over the whole image per labelled voxel, which also counts uncertain voxels the prediction left unlabelled.

Everything runs through the engine exactly as ``cad segment --uncertainty`` does (``segment_image(...,
uncertainty=True)``), on each case's own grid. The validation cases are the card's held-out list
(``training.split.val``).

    PYTHONPATH=CADExtension .venv/bin/python benchmarks/uncertainty_quality.py \\
        [--model hippocampus-unet] [--data ../shared/data/msd_task04_hippocampus] [--max-cases N] [--device cpu] \\
        [-o benchmarks/results/uncertainty_quality_hippocampus-unet.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (:func:`cadcore.evaluation.metrics.auc`); None
    without both classes."""
    from cadcore.evaluation.metrics import auc

    value = auc(np.stack([-scores, scores], axis=1), positive.astype(int))
    return None if np.isnan(value) else value


def surface(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from one of their 6 neighbours' (every label boundary, background included)."""
    edge = np.zeros(labels.shape, bool)
    for axis in range(3):
        differs = np.diff(labels, axis=axis) != 0
        low = [slice(None)] * 3
        high = [slice(None)] * 3
        low[axis], high[axis] = slice(0, -1), slice(1, None)
        edge[tuple(low)] |= differs
        edge[tuple(high)] |= differs
    return edge


def near_surfaces(prediction: np.ndarray, truth: np.ndarray, spacing_zyx: tuple[float, ...], band_mm: float):
    """Voxels within ``band_mm`` of the prediction's or the truth's surface (arrays in (z, y, x) order)."""
    from scipy.ndimage import distance_transform_edt

    edges = surface(prediction) | surface(truth)
    if not edges.any():
        return np.zeros(prediction.shape, bool)
    return distance_transform_edt(~edges, sampling=spacing_zyx) <= band_mm


def score_case(case, package, device: str, band_mm: float) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    from cadcore.evaluation.metrics import dice
    from cadcore.io.images import check_same_grid, read_image, read_volume
    from cadcore.segmentation.predict import segment_image

    image = read_volume(case.image)
    truth_image = read_image(case.label)
    check_same_grid(image, truth_image, case.label, case.image)
    started = time.perf_counter()
    result = segment_image(image, package, device, uncertainty=True)
    seconds = time.perf_counter() - started
    prediction = sitk.GetArrayFromImage(result.labels)
    truth = np.rint(sitk.GetArrayFromImage(truth_image)).astype(np.uint8)
    values = [int(label["value"]) for label in package.labels]
    dices = {str(v): round(dice(prediction == v, truth == v), 5) for v in values}
    band = near_surfaces(prediction, truth, tuple(image.GetSpacing())[::-1], band_mm)
    wrong = (prediction != truth)[band]
    scores = result.uncertainty[band]
    case_auroc = auroc(scores, wrong)
    labelled = max(1, int((prediction > 0).sum()))
    row = {"id": case.id, "dice": dices, "mean_dice": round(float(np.mean(list(dices.values()))), 5),
           "mean_uncertainty": result.uncertainty_summary["mean"],
           "uncertainty_per_labelled_voxel": round(float(result.uncertainty.sum()) / labelled, 5),
           "label_uncertainty": {str(e["value"]): e["mean"] for e in result.uncertainty_summary["labels"]},
           "band_voxels": int(band.sum()), "wrong_voxels": int(wrong.sum()),
           "auroc": None if case_auroc is None else round(case_auroc, 4), "seconds": round(seconds, 2)}
    return row, scores, wrong


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="hippocampus-unet")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "msd_task04_hippocampus"))
    parser.add_argument("--max-cases", type=int, default=None, help="only the first N validation cases (smoke runs)")
    parser.add_argument("--band-mm", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", default=None,
                        help="JSON (default benchmarks/results/uncertainty_quality_<model>.json)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "CADExtension"))
    from scipy.stats import spearmanr

    from cadcore.device import configure_cpu_threads
    from cadcore.io.datasets import load_dataset, select_split
    from cadcore.registry.packages import find_model
    from cadcore.segmentation.uncertainty import method_text

    configure_cpu_threads()
    package = find_model(args.model)
    cases = select_split(load_dataset(args.data), "val", package.card.validation_ids)[:args.max_cases]
    output = Path(args.output or REPO / "benchmarks" / "results" / f"uncertainty_quality_{package.id}.json")
    started = time.perf_counter()
    rows, all_scores, all_wrong = [], [], []
    for case in cases:
        row, scores, wrong = score_case(case, package, args.device, args.band_mm)
        rows.append(row)
        all_scores.append(scores)
        all_wrong.append(wrong)
        print(f"{row['id']}: Dice {row['mean_dice']:.4f}, mean uncertainty {row['mean_uncertainty']:.4f}, "
              f"AUROC {row['auroc']}, {row['wrong_voxels']}/{row['band_voxels']} band voxels wrong", flush=True)
    pooled = auroc(np.concatenate(all_scores), np.concatenate(all_wrong))
    per_case = [r["auroc"] for r in rows if r["auroc"] is not None]
    def rank_correlation(key: str) -> float | None:
        if len(rows) < 3:
            return None
        value = spearmanr([r[key] for r in rows], [r["mean_dice"] for r in rows]).statistic
        return None if np.isnan(value) else round(float(value), 4)

    rho, rho_total = rank_correlation("mean_uncertainty"), rank_correlation("uncertainty_per_labelled_voxel")
    report = {
        "model": package.id, "model_version": package.version, "data": args.data, "split": "val (card's held-out)",
        "n_cases": len(rows), "smoke": args.max_cases is not None, "band_mm": args.band_mm,
        "method": method_text(package.card.mirror_axes, len(package.labels) + 1),
        "voxel_auroc_pooled": None if pooled is None else round(pooled, 4),
        "voxel_auroc_case_mean": round(float(np.mean(per_case)), 4) if per_case else None,
        "spearman_uncertainty_vs_dice": rho,
        "spearman_uncertainty_vs_error": None if rho is None else -rho,
        "spearman_uncertainty_per_labelled_voxel_vs_dice": rho_total,
        "mean_dice": round(float(np.mean([r["mean_dice"] for r in rows])), 5),
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["benchmarks/uncertainty_quality.py", *sys.argv[1:]]),
        "cases": rows,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"voxel AUROC (pooled, {args.band_mm:g} mm band): {report['voxel_auroc_pooled']}; per-case mean "
          f"{report['voxel_auroc_case_mean']}; Spearman(mean uncertainty, Dice) "
          f"{report['spearman_uncertainty_vs_dice']}; written {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
