"""Smoke test of benchmarks/weak_localisation.py: patch extraction and localisation scores on a synthetic volume with a
known "tumour" (no data, no training), plus the orientation of cadcore's Grad-CAM (1 = most relevant)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "weak_localisation.py"


@pytest.fixture(scope="module")
def wl():
    spec = importlib.util.spec_from_file_location("weak_localisation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["weak_localisation"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def case(wl):
    """A 120x120x12 'head' (a bright box with a noisy dark background) with a 10x10x4 tumour at (71:81, 60:70, 5:9)."""
    rng = np.random.default_rng(0)
    volume = rng.normal(30, 5, (120, 120, 12)).astype(np.float32)
    volume[10:110, 10:110, :] += 500
    mask = np.zeros(volume.shape, dtype=bool)
    mask[71:81, 60:70, 5:9] = True  # patches starting at I=24 clip 1 row of it
    volume[mask] += 400
    head = wl.head_mask(volume)
    return wl.Case("synthetic_1", "P1", wl.normalise(volume, head), mask, head)


def test_head_and_normalisation(wl, case):
    assert case.head[10:110, 10:110].all() and not case.head[:10].any()
    assert abs(float(case.image[case.head].mean())) < 1e-3 and abs(float(case.image[case.head].std()) - 1) < 1e-3


def test_patch_labels(wl, case):
    starts, labels = wl.extract_patches(case)
    assert len(starts) == len(labels) > 0 and set(np.unique(labels)) == {0, 1}
    for start, label in zip(starts, labels):
        tumour = int(wl.cut(case.mask, tuple(start)).sum())
        assert (label == 1 and tumour >= wl.MIN_TUMOUR) or (label == 0 and tumour == 0)  # ambiguous ones dropped
        assert wl.cut(case.head, tuple(start)).mean() >= wl.HEAD_FRACTION
        assert wl.cut(case.image, tuple(start)).shape == wl.PATCH
    # a patch cutting the tumour's corner (1..29 voxels) is dropped, not labelled
    all_starts = {tuple(s) for s in wl.patch_starts(case.mask.shape)}
    corner = next(s for s in all_starts if 0 < wl.cut(case.mask, s).sum() < wl.MIN_TUMOUR)
    assert corner not in {tuple(s) for s in starts}
    keep = wl.subsample_negatives(labels, 2.0, np.random.default_rng(0))
    assert labels[keep].sum() == labels.sum() and (labels[keep] == 0).sum() <= max(4, 2 * labels.sum())


def test_scores_on_known_maps(wl, case):
    starts, labels = wl.extract_patches(case)
    masks = np.stack([wl.cut(case.mask, tuple(s)) for s in starts[labels == 1]])
    exact = masks.astype(np.float32)
    assert wl.score_maps(exact, masks, 0.5) == {"n": len(masks), "hit_rate": 1.0, "dice": 1.0, "iou": 1.0}
    # a map peaked inside the tumour, smooth elsewhere: hit rate 1
    peaked = []
    for m in masks:
        values = np.full(m.shape, 0.2, dtype=np.float32)
        values[tuple(np.argwhere(m)[0])] = 1.0
        peaked.append(values)
    assert wl.score_maps(np.stack(peaked), masks, None)["hit_rate"] == 1.0
    # the inverted map never hits; a constant map is a miss, not a lucky argmax
    assert wl.score_maps(1.0 - exact, masks, 0.5) == {"n": len(masks), "hit_rate": 0.0, "dice": 0.0, "iou": 0.0}
    assert not wl.hit(np.zeros(wl.PATCH, dtype=np.float32), masks[0])
    threshold, curve = wl.choose_threshold(0.3 + 0.5 * exact, masks)
    assert 0.3 < threshold <= 0.8 and curve[str(threshold)] == 1.0 and curve["0.1"] < 1.0
    whole = wl.whole_patch_scores(masks)
    assert whole["hit_rate"] == pytest.approx(float(masks.mean()), abs=1e-4) and 0 < whole["dice"] < 1


def test_centre_map_and_peak_ties(wl):
    centre = wl.centre_map(wl.PATCH)
    assert centre.max() == 1.0 and centre.min() == 0.0
    assert wl.peak_index(centre) in {(i, j, k) for i in (23, 24) for j in (23, 24) for k in (1, 2)}
    flat_in_k = np.zeros(wl.PATCH, dtype=np.float32)
    flat_in_k[10, 30, :] = 1.0  # a CAM constant along K: the tie is broken towards the centre slices
    assert wl.peak_index(flat_in_k) in {(10, 30, 1), (10, 30, 2)}
    assert wl.split_patients([f"P{i}" for i in range(11)], 0) == wl.split_patients([f"P{i}" for i in range(11)], 0)
    parts = wl.split_patients([f"P{i}" for i in range(11)], 0)
    assert (len(parts["test"]), len(parts["val"]), len(parts["train"])) == (3, 2, 6)
    assert not set(parts["test"]) & set(parts["val"]) and not set(parts["train"]) & set(parts["test"] + parts["val"])


def test_gradcam_peak_is_the_relevant_voxel(wl):
    """cadcore's Grad-CAM must put 1 where the class evidence is (MONAI's default normaliser flips the map)."""
    import torch

    from cadcore.classification.gradcam import gradcam_on_roi

    class Sum(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = torch.nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            evidence = self.features(x).mean((2, 3, 4))
            return torch.cat([-evidence, evidence], 1)

    x = torch.zeros(1, 1, 8, 8, 4)
    x[0, 0, 5, 2, 3] = 5.0
    x[0, 0, 1, 1, 1] = 1.0
    cam = gradcam_on_roi(Sum(), x, class_index=1, layer="features")
    assert cam.shape == (8, 8, 4) and wl.peak_index(cam) == (5, 2, 3) and cam.max() == 1.0 and cam.min() == 0.0
    aug = wl.augment(np.arange(2 * 48 * 48 * 4, dtype=np.float32).reshape(2, 1, 48, 48, 4), np.random.default_rng(0))
    assert aug.shape == (2, 1, 48, 48, 4) and np.allclose(np.sort(aug[0].ravel()), np.arange(48 * 48 * 4))


def test_batched_gradcam_is_gradcam_on_roi(wl):
    """The benchmark's batched CAMs (frozen copy, eval mode) equal cadcore's one-patch gradcam_on_roi."""
    import torch

    from cadcore.classification.gradcam import gradcam_on_roi

    torch.manual_seed(0)
    network = wl.build("aniso").eval()
    x = np.random.default_rng(0).normal(size=(2, 1, 24, 24, 4)).astype(np.float32)  # small: batch 1 is slow on CPU
    batched = wl.gradcams(network, x, "layer3")
    assert batched.shape == (2, 24, 24, 4) and all(p.requires_grad for p in network.parameters())
    for n in range(2):
        single = wl.minmax(gradcam_on_roi(network, torch.from_numpy(x[n:n + 1]), 1, "layer3"))
        assert np.allclose(batched[n], single, atol=1e-4)
