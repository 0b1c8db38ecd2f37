"""The engine's sliding window (``cadcore.segmentation.windows``) equals MONAI's ``sliding_window_inference``.

MONAI is the reference here (tests may import it); the engine's module must not, so ``cad segment`` starts without
it. Covered: window positions and their order (recorded through MONAI's ``with_coord``), the importance maps, the
blended outputs of a content-dependent predictor (a small random conv net) for inputs smaller than, equal to and
larger than the window per axis, every overlap the engine uses, both modes, several window batch sizes, image batch
sizes and channel counts; ``predict_probabilities`` against the MONAI path it replaced; ``count_windows``; that the
windows' outputs are not kept; and that none of it imports MONAI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference

from cadcore.segmentation import sliding_window as engine_sw
from cadcore.segmentation.windows import (
    axis_starts,
    count_windows,
    importance_map,
    sliding_window,
    window_positions,
)

OVERLAPS = [0.0, 0.25, 0.5, 0.75]
MODES = ["gaussian", "constant"]
# (spatial shape, window): per axis smaller than, equal to and larger than the window, anisotropic windows
CASES = [
    ((20, 17, 9), (8, 8, 8)),      # larger, larger, larger (uneven tails)
    ((8, 8, 8), (8, 8, 8)),        # equal on every axis
    ((5, 30, 12), (8, 6, 12)),     # smaller, larger, equal
    ((3, 4, 25), (16, 6, 10)),     # smaller (odd split), smaller, larger
    ((33, 7, 14), (12, 16, 4)),    # larger, smaller, larger (thin window)
]


def conv_net(in_channels: int, out_channels: int, seed: int) -> torch.nn.Module:
    """A small random network whose output depends on the window's content and on its neighbourhood (3x3x3 kernels
    with zero padding, so the same voxel differs between windows: the blend really is exercised)."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1), torch.nn.LeakyReLU(0.1),
        torch.nn.Conv3d(4, out_channels, 3, padding=1),
    ).eval()


def monai_positions(shape, roi, overlap, sw_batch_size=1):
    """The window starts MONAI visits, in its order (its padded coordinates), recorded through ``with_coord``."""
    seen: list[tuple[int, ...]] = []

    def predictor(window, coords):
        seen.extend(tuple(s.start for s in c[2:]) for c in coords)
        return torch.zeros((window.shape[0], 1, *window.shape[2:]))

    sliding_window_inference(torch.zeros((1, 1, *shape)), list(roi), sw_batch_size, predictor, overlap=overlap,
                             with_coord=True)
    return seen


@pytest.mark.parametrize("overlap", OVERLAPS + [0.1, 0.6, 0.9])
def test_axis_starts_match_monai(overlap):
    for size in range(1, 31):
        for roi in range(1, 13):
            assert axis_starts(size, roi, overlap) == [p[0] for p in monai_positions((size, 1, 1), (roi, 1, 1),
                                                                                       overlap)], (size, roi)


@pytest.mark.parametrize("overlap", OVERLAPS)
def test_window_positions_order_and_count_match_monai(overlap):
    for shape, roi in CASES:
        expected = monai_positions(shape, roi, overlap, sw_batch_size=3)
        assert window_positions(shape, roi, overlap) == expected
        assert count_windows(shape, roi, overlap) == len(expected)
        assert engine_sw.count_windows(shape, list(roi), overlap) == len(expected)


@pytest.mark.parametrize("roi", [(8, 8, 8), (16, 6, 10), (1, 2, 3), (96, 96, 64), (5,), (7, 9)])
@pytest.mark.parametrize("mode", MODES)
def test_importance_map_matches_monai(roi, mode):
    ours = importance_map(roi, mode, 0.125)
    theirs = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device="cpu", dtype=torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    if mode == "gaussian" and len(roi) == 3 and min(roi) >= 8:
        assert float(ours.min()) == pytest.approx(1e-3)  # the clamp is active at the window's corners


@pytest.mark.parametrize("overlap", OVERLAPS)
@pytest.mark.parametrize("mode", MODES)
def test_blend_matches_monai(mode, overlap):
    for case, (shape, roi) in enumerate(CASES):
        for sw_batch_size, in_channels, batch in [(1, 1, 1), (2, 3, 1), (3, 1, 2), (4, 3, 1)]:
            net = conv_net(in_channels, 3, seed=case)
            inputs = torch.randn((batch, in_channels, *shape), generator=torch.Generator().manual_seed(case))
            before = inputs.clone()
            with torch.no_grad():
                expected = sliding_window_inference(inputs, list(roi), sw_batch_size, net, overlap=overlap, mode=mode)
                ours = sliding_window(inputs, roi, sw_batch_size, net, overlap=overlap, mode=mode)
            label = (shape, roi, sw_batch_size, in_channels, batch)
            assert ours.shape == expected.shape == (batch, 3, *shape), label
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5, msg=str(label))
            assert torch.equal(inputs, before), label  # the input is never written to


@pytest.mark.parametrize("shape, roi", CASES)
def test_identity_predictor_gives_back_the_input(shape, roi):
    """A weighted average of copies of the input is the input: fails if a window is misplaced, a weight is added
    twice or missing, or the padding leaks in (inputs smaller than the window)."""
    inputs = torch.rand((1, 2, *shape)) + 1.0
    out = sliding_window(inputs, roi, 2, lambda w: w, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(out, inputs, atol=1e-6, rtol=1e-6)


def test_visits_count_windows_windows_per_image():
    for shape, roi in CASES:
        for overlap in OVERLAPS:
            for sw_batch_size, batch in [(1, 1), (3, 2)]:
                calls: list[int] = []

                def predictor(window, calls=calls):
                    calls.append(window.shape[0])
                    return torch.zeros((window.shape[0], 1, *window.shape[2:]))

                sliding_window(torch.zeros((batch, 1, *shape)), roi, sw_batch_size, predictor, overlap=overlap)
                windows = count_windows(shape, roi, overlap)
                assert sum(calls) == batch * windows
                assert len(calls) == -(-batch * windows // sw_batch_size)
                assert max(calls) <= sw_batch_size


def test_windows_outputs_are_not_kept():
    """Accumulated in place: when a window batch is predicted, at most the previous batch's output is alive."""
    alive: list[weakref.ref] = []

    def predictor(window):  # tensors hold no reference cycles: reference counting frees them, no gc needed
        assert sum(ref() is not None for ref in alive) <= 1
        out = window * 2.0
        alive.append(weakref.ref(out))
        return out

    sliding_window(torch.rand((1, 1, 20, 20, 12)), (8, 8, 8), 1, predictor, overlap=0.5)
    assert len(alive) == count_windows((20, 20, 12), (8, 8, 8), 0.5) == 32


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_predict_probabilities_matches_the_monai_path(channels_last, in_channels):
    """``predict_probabilities`` gives what it gave through MONAI: its sliding window, then ``torch.softmax``."""
    rng = np.random.default_rng(in_channels)
    shape = (23, 9, 14)
    array = rng.normal(size=(in_channels, *shape) if in_channels > 1 else shape).astype(np.float32)
    original = array.copy()
    net = conv_net(in_channels, 4, seed=7)
    ticks: list[float] = []
    ours = engine_sw.predict_probabilities(net, array, [10, 12, 8], torch.device("cpu"), overlap=0.5,
                                           sw_batch_size=2, progress=ticks.append, channels_last=channels_last)
    net = conv_net(in_channels, 4, seed=7)
    volume = torch.from_numpy(original if in_channels > 1 else original[None])[None]
    with torch.no_grad():
        logits = sliding_window_inference(volume, [10, 12, 8], 2, net, overlap=0.5, mode="gaussian")
    expected = torch.softmax(logits[0], dim=0).numpy()
    assert ours.shape == expected.shape == (4, *shape) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-5)
    np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(array, original)
    windows = engine_sw.count_windows(shape, [10, 12, 8], 0.5)
    assert ticks[-1] == windows and len(ticks) == -(-windows // 2)


def test_softmax_in_place_matches_torch():
    logits = torch.randn((5, 7, 6, 4)) * 30
    expected = torch.softmax(logits, dim=0)
    result = engine_sw.softmax_(logits)
    assert result.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(result, expected, atol=1e-6, rtol=1e-5)


def test_bad_arguments_are_refused():
    inputs = torch.zeros((1, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(inputs, (4, 4, 4), 1, lambda w: w, overlap=1.0)
    with pytest.raises(ValueError, match="spatial axes"):
        sliding_window(inputs[0], (4, 4, 4), 1, lambda w: w)
    with pytest.raises(ValueError, match="mode"):
        sliding_window(inputs, (4, 4, 4), 1, lambda w: w, mode="triangle")
    with pytest.raises(ValueError, match="predictor must return"):
        sliding_window(inputs, (4, 4, 4), 1, lambda w: w[..., :2])


def test_the_engine_path_imports_no_monai():
    """``predict_probabilities`` (and so ``cad segment``'s sliding window) runs without importing MONAI."""
    code = (
        "import sys, numpy as np, torch\n"
        "from cadcore.segmentation.sliding_window import predict_probabilities, count_windows\n"
        "net = torch.nn.Conv3d(1, 2, 3, padding=1)\n"
        "p = predict_probabilities(net, np.zeros((12, 9, 5), np.float32), [8, 8, 8], torch.device('cpu'))\n"
        "assert p.shape == (2, 12, 9, 5) and count_windows((12, 9, 5), [8, 8, 8], 0.5) == 4\n"
        "print(sorted(m for m in sys.modules if m == 'monai' or m.startswith('monai.')))\n"
    )
    engine = Path(__file__).resolve().parents[3] / "CADExtension"
    env = {**os.environ, "PYTHONPATH": str(engine)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
