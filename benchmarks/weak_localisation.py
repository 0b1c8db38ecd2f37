"""Weakly supervised tumour localisation, scored: a patch classifier trained on patch labels only, Grad-CAM vs masks.

Data: ``tcia_brain_tumor_progression`` (T1 post-contrast MR + binary tumour masks, 11 patients, 22 scans; the native
copy of PGBM-006_19961210 is skipped so that both PGBM-006 scans share the resampled256 voxel space). Everything is
done in each volume's voxel space (I, J, K); native scans finer than 0.6 mm in-plane are subsampled 2x in-plane (as
the resampled256 set was), so all in-plane voxels are ~0.7-0.95 mm and slices ~6.5 mm. Per case: head = voxels above
10 % of the 99.5th percentile (the background is noisy, not 0), z-score over the head. Patches of 48x48x4 voxels on a
grid (stride 24, 24, 2) with >= 50 % head; label tumour if >= 30 tumour voxels, absent if 0, else dropped. Train and
validation negatives are subsampled 2:1 per case (every positive kept); test patients keep every patch.

Split BY PATIENT (seeded, printed): 3 test, 2 validation, the rest train. Classifier: cadcore's MONAI ResNet
(basic, [1,1,1,1], [16,32,64,128]), class-balanced sampling, in-plane flips and 90-degree rotations, AdamW with a
cosine schedule, fixed epochs, best epoch by validation AUC. Two architectures (``--archs``):

* ``iso``: the spec as it is; its strides are isotropic, so K (4 slices) is 1 voxel from layer2 on and every CAM is
  constant along K;
* ``aniso``: the same network with the K stride set to 1 in the stem max-pool, layer2 and layer3 (in-plane-only
  downsampling until voxels are ~isotropic, as nnU-Net does): layer3 is 6x6x4, layer4 3x3x2.

Grad-CAM (``cadcore.classification.gradcam.gradcam``, i.e. ``gradcam_on_roi`` in batches; class "tumour", layers 3 and
4), min-max normalised per patch, is scored on tumour-positive test patches: hit rate (the peak voxel, ties broken
towards the patch centre, lies in the tumour), and mean Dice / IoU of the map thresholded at t, t from 0.1..0.9
chosen by mean Dice on validation positives. Reported on all positives and on true positives (p(tumour) >= 0.5)
only, plus the classifier's patch AUC / ACC on the test patients. Baselines, no learning: the patch centre (map =
1 - ellipsoidal distance, tuned threshold), the whole patch (Dice of an all-ones map; hit = tumour fraction, the
chance of a random voxel), and the image itself (min-max normalised T1post intensity; enhancing tumour is bright).

    nice -n 5 .venv/bin/python benchmarks/weak_localisation.py [--archs iso aniso] [--epochs 10] [--max-minutes 9]
        [--seed 0] [--threads 2] [--json runs/weak_localisation.json]

``--max-minutes`` caps the training wall time of all architectures together (each gets an equal share of what is
left; no epoch is started that would not fit), so a run takes about 10-11 minutes on 2 free cores.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cadcore.evaluation.metrics import dice  # cad evaluate's Dice (1.0 when both are empty)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "tcia_brain_tumor_progression"
PATCH = (48, 48, 4)
STRIDE = (24, 24, 2)
MIN_TUMOUR = 30
HEAD_FRACTION = 0.5
THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
LAYERS = ("layer3", "layer4")
NETWORK = {"name": "ResNet", "params": {"block": "basic", "layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128],
                                        "spatial_dims": 3, "n_input_channels": 1, "conv1_t_size": 3,
                                        "conv1_t_stride": 1, "num_classes": 2}}


@dataclass
class Case:
    name: str
    patient: str
    image: np.ndarray  # float32 (I, J, K), z-scored over the head
    mask: np.ndarray  # bool (I, J, K)
    head: np.ndarray  # bool (I, J, K)


def head_mask(volume: np.ndarray) -> np.ndarray:
    return volume > 0.1 * np.percentile(volume, 99.5)


def normalise(volume: np.ndarray, head: np.ndarray) -> np.ndarray:
    values = volume[head]
    return ((volume - values.mean()) / max(float(values.std()), 1e-6)).astype(np.float32)


def load_cases(data: Path) -> list[Case]:
    import SimpleITK as sitk

    cases = []
    with open(data / "cases.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["subset"] == "native" and row["also_in_other_subset"]:
                continue  # PGBM-006_19961210: keep the resampled256 copy, next to the patient's other scan
            image = sitk.ReadImage(str(data / row["image"]))
            volume = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
            mask = sitk.GetArrayFromImage(sitk.ReadImage(str(data / row["mask"]))).transpose(2, 1, 0) > 0
            if row["subset"] == "native" and image.GetSpacing()[0] < 0.6:
                volume, mask = volume[::2, ::2], mask[::2, ::2]
            head = head_mask(volume)
            cases.append(Case(row["case"], row["patient"], normalise(volume, head), mask, head))
    return cases


def patch_starts(shape: tuple[int, ...], patch: tuple[int, ...] = PATCH,
                 stride: tuple[int, ...] = STRIDE) -> list[tuple[int, int, int]]:
    axes = [range(0, size - p + 1, s) for size, p, s in zip(shape, patch, stride)]
    return [(i, j, k) for i in axes[0] for j in axes[1] for k in axes[2]]


def cut(volume: np.ndarray, start: tuple[int, ...], patch: tuple[int, ...] = PATCH) -> np.ndarray:
    return volume[tuple(slice(s, s + p) for s, p in zip(start, patch))]


def extract_patches(case: Case, patch: tuple[int, ...] = PATCH, stride: tuple[int, ...] = STRIDE,
                    min_tumour: int = MIN_TUMOUR, head_fraction: float = HEAD_FRACTION
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Grid patches inside the head: (starts (n, 3), labels (n,)); 1..min_tumour-1 tumour voxels are dropped."""
    starts, labels = [], []
    for start in patch_starts(case.mask.shape, patch, stride):
        if cut(case.head, start, patch).mean() < head_fraction:
            continue
        tumour = int(cut(case.mask, start, patch).sum())
        if tumour == 0 or tumour >= min_tumour:
            starts.append(start)
            labels.append(int(tumour > 0))
    return np.array(starts, dtype=int).reshape(-1, 3), np.array(labels, dtype=int)


def subsample_negatives(labels: np.ndarray, ratio: float, rng: np.random.Generator, floor: int = 4) -> np.ndarray:
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    keep = min(len(negatives), max(floor, int(round(ratio * len(positives)))))
    return np.sort(np.concatenate([positives, rng.choice(negatives, keep, replace=False)]))


def split_patients(patients: list[str], seed: int, n_test: int = 3, n_val: int = 2) -> dict[str, list[str]]:
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def gather(cases: list[Case], patients: list[str], rng: np.random.Generator | None, ratio: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Inputs (n, 1, I, J, K), labels, masks (n, I, J, K) and case names; negatives subsampled when rng is given."""
    inputs, labels, masks, names = [], [], [], []
    for case in cases:
        if case.patient not in patients:
            continue
        starts, case_labels = extract_patches(case)
        keep = subsample_negatives(case_labels, ratio, rng) if rng is not None else np.arange(len(case_labels))
        for index in keep:
            inputs.append(cut(case.image, tuple(starts[index]))[None])
            masks.append(cut(case.mask, tuple(starts[index])))
            labels.append(case_labels[index])
            names.append(case.name)
    return np.stack(inputs), np.array(labels), np.stack(masks), names


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random in-plane flips and 90-degree in-plane rotations of (n, 1, I, J, K) patches (I = J)."""
    out = np.empty_like(batch)
    for n, x in enumerate(batch):
        x = np.rot90(x, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            x = x[:, ::-1]
        if rng.random() < 0.5:
            x = x[:, :, ::-1]
        out[n] = x
    return out


def build(arch: str):
    from cadcore.registry.networks import build_network

    network = build_network(NETWORK)
    if arch == "aniso":  # keep K (4 slices of ~6.5 mm) until layer4
        network.maxpool.stride = (2, 2, 1)
        for name in ("layer2", "layer3"):
            block = getattr(network, name)[0]
            block.conv1.stride = (2, 2, 1)
            block.downsample[0].stride = (2, 2, 1)
    return network


def layer_grids(network, patch: tuple[int, ...] = PATCH) -> dict[str, list[int]]:
    """The (I, J, K) size of each Grad-CAM layer's feature map for one patch."""
    import torch

    grids: dict[str, list[int]] = {}
    hooks = [getattr(network, name).register_forward_hook(
        lambda _m, _i, out, name=name: grids.__setitem__(name, list(out.shape[2:]))) for name in LAYERS]
    with torch.inference_mode():
        network.eval()(torch.zeros(1, 1, *patch))
    for hook in hooks:
        hook.remove()
    return grids


def probabilities(network, inputs: np.ndarray, batch: int = 128) -> np.ndarray:
    import torch

    from cadcore.classification.calibration import softmax
    from cadcore.training.classification import predict_logits

    return softmax(predict_logits(network, inputs, torch.device("cpu"), batch))


def train(arch: str, train_set: tuple[np.ndarray, np.ndarray], val_set: tuple[np.ndarray, np.ndarray], epochs: int,
          seed: int, budget_s: float, batch: int = 32, lr: float = 1e-3) -> tuple[Any, dict[str, Any]]:
    import torch

    from cadcore.evaluation.metrics import auc

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = build(arch)
    inputs, labels = train_set
    weights = (1.0 / np.bincount(labels, minlength=2))[labels]
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    best: dict[str, Any] = {"auc": -1.0, "epoch": 0}
    state: dict[str, Any] = {}
    history = []
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        network.train()
        order = rng.choice(len(labels), len(labels), replace=True, p=weights / weights.sum())  # class-balanced
        losses = []
        for i in range(0, len(order), batch):
            x = torch.from_numpy(augment(inputs[order[i:i + batch]], rng))
            y = torch.from_numpy(labels[order[i:i + batch]])
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(network(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scheduler.step()
        val_auc = auc(probabilities(network, val_set[0]), val_set[1])
        history.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "val_auc": round(val_auc, 4),
                        "seconds": round(time.perf_counter() - started, 1)})
        print(f"  [{arch}] epoch {epoch:2d} loss {history[-1]['loss']:.3f} val AUC {val_auc:.3f}", flush=True)
        if val_auc > best["auc"]:
            best = {"auc": round(val_auc, 4), "epoch": epoch}
            state = {k: v.detach().clone() for k, v in network.state_dict().items()}
        elapsed = time.perf_counter() - started
        if elapsed * (epoch + 1) / epoch > budget_s and epoch < epochs:  # the next epoch would not fit
            print(f"  [{arch}] time budget ({budget_s:.0f} s) reached after epoch {epoch}", flush=True)
            break
    network.load_state_dict(state)
    return network.eval(), {"best": best, "history": history, "epochs_run": len(history),
                            "train_seconds": round(time.perf_counter() - started, 1)}


def gradcams(network, inputs: np.ndarray, layer: str, batch: int = 16) -> np.ndarray:
    """Grad-CAM of class 1 per patch (``cadcore.classification.gradcam.gradcam``, which ``gradcam_on_roi`` wraps, in
    eval-mode batches: the same maps, ~10x faster on CPU than batch 1), min-max per patch. Each batch runs on a copy of
    the network with frozen weights: MONAI's hooks stay on the module they wrap, and weight gradients are not needed."""
    import torch

    from cadcore.classification.gradcam import gradcam

    maps = []
    for i in range(0, len(inputs), batch):
        frozen = copy.deepcopy(network).requires_grad_(False)
        maps.extend(minmax(m) for m in gradcam(frozen, torch.from_numpy(inputs[i:i + batch]), 1, layer))
    return np.stack(maps) if maps else np.zeros((0, *inputs.shape[2:]), dtype=np.float32)


# ---- scoring (no torch) ----

def minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    return ((values - low) / (high - low) if high > low else np.zeros_like(values)).astype(np.float32)


def peak_index(values: np.ndarray) -> tuple[int, ...]:
    """Argmax; among (near-)equal maxima the one closest to the patch centre (deterministic, no axis bias)."""
    candidates = np.argwhere(values >= values.max() - 1e-6)
    centre = (np.array(values.shape) - 1) / 2.0
    return tuple(int(v) for v in candidates[int(np.argmin(((candidates - centre) ** 2).sum(1)))])


def hit(values: np.ndarray, mask: np.ndarray) -> bool:
    return bool(mask[peak_index(values)]) if values.max() > values.min() else False


def iou(prediction: np.ndarray, mask: np.ndarray) -> float:
    union = int(np.logical_or(prediction, mask).sum())
    return int(np.logical_and(prediction, mask).sum()) / union if union else 1.0


def centre_map(shape: tuple[int, ...]) -> np.ndarray:
    """1 at the patch centre falling to 0 at the corners, ellipsoidal (each axis scaled by its half-extent)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2.0) / (n / 2.0) for n in shape], indexing="ij")
    return minmax(-np.sqrt(sum(g ** 2 for g in grids)))


def score_maps(maps: np.ndarray, masks: np.ndarray, threshold: float | None) -> dict[str, Any]:
    """Hit rate and mean Dice / IoU of maps >= threshold over patches (threshold None: no Dice / IoU)."""
    if len(maps) == 0:
        return {"n": 0, "hit_rate": None, "dice": None, "iou": None}
    hits = [hit(m, k) for m, k in zip(maps, masks)]
    result: dict[str, Any] = {"n": len(maps), "hit_rate": round(float(np.mean(hits)), 4)}
    if threshold is not None:
        result["dice"] = round(float(np.mean([dice(m >= threshold, k) for m, k in zip(maps, masks)])), 4)
        result["iou"] = round(float(np.mean([iou(m >= threshold, k) for m, k in zip(maps, masks)])), 4)
    return result


def choose_threshold(maps: np.ndarray, masks: np.ndarray, grid: tuple[float, ...] = THRESHOLDS
                     ) -> tuple[float, dict[str, float]]:
    curve = {str(t): float(np.mean([dice(m >= t, k) for m, k in zip(maps, masks)])) for t in grid}
    return float(max(grid, key=lambda t: curve[str(t)])), {t: round(v, 4) for t, v in curve.items()}


def whole_patch_scores(masks: np.ndarray) -> dict[str, Any]:
    """All-ones map: Dice / IoU of the whole patch; 'hit rate' = the tumour fraction (a random voxel's chance)."""
    if len(masks) == 0:
        return {"n": 0, "hit_rate": None, "dice": None, "iou": None}
    full = np.ones(masks.shape[1:], dtype=bool)
    return {"n": len(masks), "hit_rate": round(float(masks.mean()), 4),
            "dice": round(float(np.mean([dice(full, k) for k in masks])), 4),
            "iou": round(float(np.mean([iou(full, k) for k in masks])), 4)}


def evaluate_maps(val_maps: np.ndarray, val_masks: np.ndarray, test_maps: np.ndarray, test_masks: np.ndarray,
                  tp: np.ndarray) -> dict[str, Any]:
    threshold, curve = choose_threshold(val_maps, val_masks)
    return {"threshold": threshold, "val_dice_curve": curve, "val": score_maps(val_maps, val_masks, threshold),
            "test_all": score_maps(test_maps, test_masks, threshold),
            "test_tp": score_maps(test_maps[tp], test_masks[tp], threshold)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--archs", nargs="+", choices=("aniso", "iso"), default=["iso", "aniso"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-minutes", type=float, default=9.0, help="training wall time, all archs together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--neg-ratio", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    from cadcore.evaluation.metrics import classification_metrics

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    cases = load_cases(args.data)
    split = split_patients(sorted({c.patient for c in cases}), args.seed)
    for part in ("train", "val", "test"):
        print(f"{part:5s}: {', '.join(split[part])}")
    rng = np.random.default_rng(args.seed)
    train_x, train_y, _, _ = gather(cases, split["train"], rng, args.neg_ratio)
    # validation (epoch selection, CAM thresholds): every positive, negatives subsampled like train; test: every patch
    sets = {"val": gather(cases, split["val"], rng, args.neg_ratio), "test": gather(cases, split["test"], None, 0)}
    counts = {"train": {"pos": int(train_y.sum()), "neg": int((train_y == 0).sum())}}
    counts.update({p: {"pos": int(s[1].sum()), "neg": int((s[1] == 0).sum())} for p, s in sets.items()})
    print("patches:", json.dumps(counts), f"(loaded in {time.perf_counter() - started:.0f} s)", flush=True)
    positives = {p: s[1] == 1 for p, s in sets.items()}
    masks = {p: sets[p][2][positives[p]] for p in sets}
    intensity = {p: np.stack([minmax(x[0]) for x in sets[p][0][positives[p]]]) for p in sets}
    results: dict[str, Any] = {"archs": {}}
    budget_s = 60 * args.max_minutes
    for n, arch in enumerate(args.archs):  # an equal share of what is left: unused time carries over
        network, log = train(arch, (train_x, train_y), sets["val"][:2], args.epochs, args.seed,
                             max(0.0, budget_s) / (len(args.archs) - n))
        budget_s -= log["train_seconds"]
        prob = {p: probabilities(network, sets[p][0]) for p in sets}
        tp = prob["test"][positives["test"], 1] >= 0.5
        entry: dict[str, Any] = {"training": log, "val_classification": classification_metrics(prob["val"],
                                                                                                sets["val"][1]),
                                 "test_classification": classification_metrics(prob["test"], sets["test"][1]),
                                 "test_true_positives": int(tp.sum()), "cam_grids": layer_grids(network),
                                 "maps": {}}
        for layer in LAYERS:
            cams = {p: gradcams(network, sets[p][0][positives[p]], layer) for p in sets}
            entry["maps"][f"Grad-CAM {layer}"] = evaluate_maps(cams["val"], masks["val"], cams["test"], masks["test"],
                                                               tp)
            entry["maps"][f"Grad-CAM {layer}"]["degenerate_test_maps"] = int(sum(m.max() == 0 for m in cams["test"]))
        entry["maps"]["image intensity"] = evaluate_maps(intensity["val"], masks["val"], intensity["test"],
                                                         masks["test"], tp)
        entry["maps"]["centre of patch"] = evaluate_maps(
            np.repeat(centre_map(PATCH)[None], len(masks["val"]), 0), masks["val"],
            np.repeat(centre_map(PATCH)[None], len(masks["test"]), 0), masks["test"], tp)
        entry["maps"]["whole patch"] = {"threshold": None, "test_all": whole_patch_scores(masks["test"]),
                                        "test_tp": whole_patch_scores(masks["test"][tp])}
        results["archs"][arch] = entry
    results.update({"split": split, "patch_counts": counts,
                    "settings": {"patch": PATCH, "stride": STRIDE, "min_tumour_voxels": MIN_TUMOUR,
                                 "head_fraction": HEAD_FRACTION, "neg_ratio": args.neg_ratio, "epochs": args.epochs,
                                 "max_minutes": args.max_minutes, "seed": args.seed, "threads": args.threads,
                                 "thresholds": THRESHOLDS, "network": NETWORK},
                    "platform": {"python": platform.python_version(), "torch": torch.__version__,
                                 "machine": platform.machine()},
                    "seconds": round(time.perf_counter() - started, 1)})
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def print_table(results: dict[str, Any]) -> None:
    def cells(score: dict[str, Any]) -> str:
        return "  ".join(f"{score.get(k):6.3f}" if score.get(k) is not None else "     -" for k in
                         ("hit_rate", "dice", "iou"))

    for arch, entry in results["archs"].items():
        test = entry["test_classification"]
        print(f"\n[{arch}] CAM grids {entry['cam_grids']}")
        print(f"[{arch}] test patches: AUC {test['auc']:.3f}  ACC {test['acc']:.3f}  sens {test['sensitivity']:.3f}"
              f"  spec {test['specificity']:.3f}  (n={test['n']}; best epoch {entry['training']['best']['epoch']},"
              f" val AUC {entry['training']['best']['auc']:.3f})")
        any_map = next(iter(entry["maps"].values()))
        print(f"{'map':18s} {'thr':>4s} | all positives (n={any_map['test_all']['n']}) hit/Dice/IoU"
              f" | true positives (n={any_map['test_tp']['n']}) hit/Dice/IoU")
        for name, score in entry["maps"].items():
            thr = f"{score['threshold']:.1f}" if score["threshold"] is not None else "-"
            print(f"{name:18s} {thr:>4s} | {cells(score['test_all'])}            | {cells(score['test_tp'])}")
    print(f"\ntotal {results['seconds']:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
