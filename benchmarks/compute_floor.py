"""Compute floor of a segmentation run: the network's convolution FLOPs over this CPU's measured conv3d throughput.

Used by ``benchmarks/inference.py``; the floor says how far the measured network time is from what the arithmetic
alone needs on this machine.
"""

from __future__ import annotations

import time

import numpy as np


def network_flops(model: str, patch: list[int]) -> float:
    """Conv and transposed-conv FLOPs (2 per multiply-add) of one forward pass on one window."""
    import torch

    from cadcore.registry.networks import load_network
    from cadcore.registry.packages import find_model

    package = find_model(model)
    network = load_network(package, package.card.main_stage, torch.device("cpu"))
    total = [0.0]

    def count(module, inputs, output) -> None:
        voxels = np.prod((inputs[0] if module.transposed else output).shape[2:])
        kernel = np.prod(module.kernel_size) * module.in_channels / module.groups
        total[0] += 2.0 * kernel * module.out_channels * voxels

    convs = [m for m in network.modules() if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    for module in convs:
        module.register_forward_hook(count)
    with torch.inference_mode():
        network(torch.zeros(1, convs[0].in_channels, *patch))
    return total[0]


def conv_gflops(threads: int | None) -> float:
    """Best of 5: a 64->64-channel 3x3x3 conv3d on 2x48³, channels-last fp32 (oneDNN's best case here)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    conv = torch.nn.Conv3d(64, 64, 3, padding=1).eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 64, 48, 48, 48).contiguous(memory_format=torch.channels_last_3d)
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(5):
            started = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - started)
    return 2.0 * 64 * 64 * 27 * 2 * 48 ** 3 / best / 1e9


def compute_floor(case: dict, gflops: float) -> dict:
    from cadcore.io.images import read_volume
    from cadcore.preprocessing.working_space import prepare
    from cadcore.registry.packages import find_model
    from cadcore.segmentation.sliding_window import count_windows

    card = find_model(case["model"]).card.raw
    patch, overlap = card["inference"]["patch_size"], card["inference"].get("overlap", 0.5)
    shape = prepare(read_volume(case["image"]), card["preprocessing"]).array.shape
    windows = count_windows(shape, patch, overlap)
    per_window = network_flops(case["model"], patch)
    flops = windows * per_window
    return {"working_shape": list(shape), "windows": windows, "gflop_per_window": per_window / 1e9,
            "flop_per_voxel": per_window / float(np.prod(patch)),
            "overlap_factor": windows * np.prod(patch) / np.prod(shape),
            "tflop": flops / 1e12, "conv_gflops": gflops, "floor_s": flops / gflops / 1e9}
