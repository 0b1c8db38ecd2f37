"""Each CPU speed-up of ``cad segment`` measured alone (before / after, same process, same data), on the CT case of
``benchmarks/inference.py`` (run that first: it builds ``runs/bench/``).

    .venv/bin/python benchmarks/inference_ablation.py [--repeats 3] [--json runs/bench/ablation.json]

Stages: the B-spline resampling to the working grid; the network (memory layout, sw_batch_size, threads, batch norm
folded into the convolutions, bf16); the labels back on the input grid; the label clean-up with nothing to clean.
Best and median of ``--repeats``; agreement is with the "before" variant (labels identical fraction, Dice of label 1;
for the network, argmax on the working grid).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from cadcore.preprocessing.input_grid import labels_to_input_grid, probabilities_to_input_grid
from cadcore.preprocessing.working_space import normalise, orient, prepare
from cadcore.registry.networks import load_network
from cadcore.registry.packages import find_model
from cadcore.segmentation.postprocess import STRUCTURE, clean_labels
from cadcore.segmentation.sliding_window import fold_batch_norm

BENCH = Path(__file__).resolve().parents[1] / "runs" / "bench"


def timed(function, repeats: int) -> tuple[dict, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return {"min_s": round(min(times), 3), "median_s": round(statistics.median(times), 3)}, result


def agreement(labels: np.ndarray, reference: np.ndarray) -> dict:
    a, b = labels == 1, reference == 1
    return {"identical": float(np.mean(labels == reference)),
            "dice": 2.0 * float(np.count_nonzero(a & b)) / max(1, np.count_nonzero(a) + np.count_nonzero(b))}


def old_clean_labels(labels: np.ndarray) -> np.ndarray:
    """``clean_labels(labels, {})`` before: every value's components labelled even with nothing to clean."""
    result = labels.copy()
    for value in (int(v) for v in np.unique(labels) if v != 0):
        ndimage.label(result == value, structure=STRUCTURE)
    return result


def network_variant(network, array: np.ndarray, batch: int, channels_last: bool, bf16: bool, threads: int,
                    fold: bool = False):
    torch.set_num_threads(threads)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = copy.deepcopy(network)
    model = (fold_batch_norm(model) if fold else model).to(memory_format=layout)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(window.contiguous(memory_format=layout)).float()

    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(array)[None, None], [96, 96, 96], batch, predictor, 0.25,
                                          mode="gaussian")
    return torch.softmax(logits[0], 0).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    package = find_model(BENCH / "spleen-random")
    pre = package.card.raw["preprocessing"]
    image = sitk.ReadImage(str(BENCH / "ct_512x512x300.nii.gz"))
    oriented = orient(image, "RAS")
    results: dict = {"load_before": os.getloadavg(), "threads": threads}

    size = [int(s) for s in np.round(np.array(oriented.GetSize()) * np.array(oriented.GetSpacing()) / pre["spacing"])]
    before, itk = timed(lambda: sitk.Resample(oriented, size, sitk.Transform(), sitk.sitkBSpline, oriented.GetOrigin(),
                                              pre["spacing"], oriented.GetDirection(), 0.0, oriented.GetPixelID()),
                        args.repeats)
    working = prepare(image, pre)
    after, _ = timed(lambda: prepare(image, pre), args.repeats)
    same_input = np.array_equal(normalise(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), pre["normalization"]),
                                working.array)
    results["bspline"] = {"before_simpleitk": before, "after_separable_prepare": after,
                          "network_input_identical": same_input}

    network = load_network(package, torch.device("cpu"))
    variants = {"fp32 contiguous b2 (before)": (2, False, False, threads, False),
                "fp32 contiguous b4": (4, False, False, threads, False),
                "fp32 channels-last b2": (2, True, False, threads, False),
                "fp32 channels-last b4": (4, True, False, threads, False),
                "fp32 channels-last b1": (1, True, False, threads, False),
                "fp32 channels-last b2, 1 thread": (2, True, False, 1, False),
                "fp32 channels-last b2 + folded BN (after)": (2, True, False, threads, True),
                "bf16 channels-last b2 + folded BN": (2, True, True, threads, True)}
    results["network"], reference = {}, None
    for name, (batch, last, bf16, count, fold) in variants.items():
        def run(batch=batch, last=last, bf16=bf16, count=count, fold=fold):
            return network_variant(network, working.array, batch, last, bf16, count, fold)

        stats, probabilities = timed(run, args.repeats)
        labels = probabilities.argmax(0)
        reference = labels if reference is None else reference
        results["network"][name] = stats | agreement(labels, reference)
        print(name, results["network"][name], flush=True)
    torch.set_num_threads(threads)
    probabilities = network_variant(network, working.array, 2, True, False, threads, True)

    before, expected = timed(lambda: probabilities_to_input_grid(probabilities, working).argmax(0).astype(np.uint8),
                             args.repeats)
    after, labels = timed(lambda: labels_to_input_grid(probabilities, working), args.repeats)
    results["to_input_grid"] = {"before_every_class_simpleitk_argmax": before, "after_labels_to_input_grid": after,
                                **agreement(labels, expected)}
    before, _ = timed(lambda: old_clean_labels(labels), args.repeats)
    after, cleaned = timed(lambda: clean_labels(labels, {}), args.repeats)
    results["clean_labels_nothing_to_do"] = {"before": before, "after": after, "identical": bool(np.array_equal(
        cleaned, labels))}
    results["load_after"] = os.getloadavg()
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
