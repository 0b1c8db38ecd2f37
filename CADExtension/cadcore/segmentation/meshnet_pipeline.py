"""The ``meshnet`` pipeline: brainchop's conventions (conform, percentile scaling, argmax) run fast on a CPU.

The labels are those of the plain full-volume forward (``MeshNet.forward`` on the conformed cube), computed with
less work:

* only the head's box is labelled (voxels above ``box_threshold`` of the scaled intensity, plus ``box_margin``):
  outside it lies air, background in the full forward too;
* the box is streamed through the layers along its first axis, ``tile_depth`` slices at a time: each layer
  runs as a 'valid' convolution on the slices it needs (its dilation on each side) and keeps only those a later
  slice still needs, so every voxel of every layer is computed once and each layer holds a few slices, not the
  cube. Each layer's output covers the box grown by the halo the later layers still need (the sum of their
  dilations), and its activations that fall outside the conformed cube are set to zero: exactly the zero padding
  the full forward's 'same' convolutions see at the cube's faces. Inside the box the logits are thus those of the
  full forward (up to float summation order);
* channels-last tensors (oneDNN's fast path for 3D convolutions, about 3× on CPU) and ``inference_mode``.

A network with an instance norm (MindGrab) normalises over the whole cube, so its statistics need every voxel of
every layer: it runs layer by layer on the whole cube (same result as ``forward``), still channels-last. Its
dilations (five cycles of 16-8-4-2-1) reach 155 voxels each way, so no box would be smaller than the cube anyway:
25 layers × 16.8 M voxels × 15 × 15 × 27 multiply-adds = 2.5 × 10¹² per scan, about 150 s at the ~35 GFLOP/s
oneDNN reaches here on 2 cores (docs/benchmarks.md). On an accelerator (``--device cuda``) every model runs the
plain forward on the whole cube.

``mask_model`` (a card option) names another meshnet model; its labels > 0, in the same conformed cube, keep this
model's labels, and its box (plus the halo rule above) bounds the work.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from cadcore.errors import CadError
from cadcore.preprocessing.conform import conform, labels_to_input, percentile_scale
from cadcore.progress import StagedProgress
from cadcore.registry.meshnet import GROUPNORM_EPS, MeshNet
from cadcore.registry.meshnet_card import MeshNetOptions
from cadcore.registry.networks import load_network
from cadcore.registry.packages import ModelPackage

CHANNELS_LAST = torch.channels_last_3d
Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


def head_box(scaled: np.ndarray, threshold: float, margin: int, min_voxels: int = 20) -> Box | None:
    """The box of the voxels above ``threshold`` (each plane of the box holding at least ``min_voxels`` of them, so
    stray noise in the air does not widen it), grown by ``margin`` and kept inside the volume; None: nothing."""
    above = scaled > threshold
    box = []
    for axis in range(3):
        profile = above.sum(axis=tuple(a for a in range(3) if a != axis))
        kept = np.flatnonzero(profile >= min_voxels)
        if kept.size == 0:
            return None
        box.append((max(0, int(kept[0]) - margin), min(scaled.shape[axis], int(kept[-1]) + 1 + margin)))
    return tuple(box)  # type: ignore[return-value]


def _take(volume: torch.Tensor, lo: list[int], hi: list[int]) -> torch.Tensor:
    """``volume[..., lo:hi]`` per spatial axis with zeros where the range leaves the volume."""
    shape = volume.shape[2:]
    inside = [(min(max(0, a), n), max(min(n, b), 0)) for a, b, n in zip(lo, hi, shape)]
    part = volume[:, :, inside[0][0]:inside[0][1], inside[1][0]:inside[1][1], inside[2][0]:inside[2][1]]
    if [ia - a for a, (ia, _) in zip(lo, inside)] == [0, 0, 0] and list(part.shape[2:]) == [b - a for a, b in
                                                                                             zip(lo, hi)]:
        return part
    out = volume.new_zeros((*volume.shape[:2], *[b - a for a, b in zip(lo, hi)]))
    if part.numel():
        out[:, :, inside[0][0] - lo[0]:inside[0][1] - lo[0], inside[1][0] - lo[1]:inside[1][1] - lo[1],
            inside[2][0] - lo[2]:inside[2][1] - lo[2]] = part
    return out


def _zero_outside(x: torch.Tensor, lo: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Zero the activations of ``x`` (whose first voxel sits at ``lo``) that lie outside a volume of ``shape``."""
    for axis in range(3):
        before = min(x.shape[2 + axis], max(0, -lo[axis]))
        after = min(x.shape[2 + axis], max(0, lo[axis] + x.shape[2 + axis] - shape[axis]))
        if before:
            x.narrow(2 + axis, 0, before).zero_()
        if after:
            x.narrow(2 + axis, x.shape[2 + axis] - after, after).zero_()
    return x


class _Layer:
    """One hidden layer streamed along the first axis: it hands out its output ``step`` slices at a time, pulling
    from ``source`` only the input slices those need (its dilation on each side). The input slices live in one
    buffer allocated once, with some slack: new slices are appended, and only when the slack is used up are the
    slices still needed moved to its front (about 2 × dilation / slack copies of the data per layer, where a
    concatenation per step would copy the whole buffer every step). Its output covers the box grown by ``halo``
    (what the later layers still need)."""

    def __init__(self, network: MeshNet, index: int, source: Any, lo: list[int], hi: list[int], halo: int,
                 shape: tuple[int, ...], step: int) -> None:
        self.network, self.index, self.source, self.shape, self.step = network, index, source, shape, step
        self.dilation = network.dilations[index]
        self.lo = [a - halo for a in lo]  # first output voxel, in cube coordinates
        self.stop = hi[0] + halo  # output slices end here
        self.next = self.lo[0]  # next output slice to hand out
        # the window (2d + step), one block's overshoot (step), and slack: moves cost ~2d/slack copies per layer
        self.capacity = 2 * self.dilation + 2 * step + max(step, self.dilation // 4)
        self.buffer: torch.Tensor | None = None
        self.length = 0  # valid slices at the buffer's front
        self.buffer_start = self.lo[0] - self.dilation  # cube slice of the buffer's first slice

    def _append(self, block: torch.Tensor, needed_from: int) -> None:
        if self.buffer is None:
            self.buffer = torch.empty((1, block.shape[1], self.capacity, *block.shape[3:]), dtype=block.dtype,
                                      memory_format=CHANNELS_LAST)
        count = block.shape[2]
        if self.length + count > self.capacity:  # slack used up: keep only what is still needed, at the front
            drop = needed_from - self.buffer_start
            kept = self.buffer[:, :, drop:self.length]
            if drop < kept.shape[2]:  # the ranges overlap
                kept = kept.clone()
            self.buffer[:, :, :kept.shape[2]] = kept
            self.buffer_start += drop
            self.length -= drop
        self.buffer[:, :, self.length:self.length + count] = block
        self.length += count

    def pull(self) -> torch.Tensor | None:
        if self.next >= self.stop:
            return None
        first, last = self.next, min(self.stop, self.next + self.step)
        d = self.dilation
        while self.buffer_start + self.length < last + d:
            self._append(self.source.pull(), first - d)
        window = self.buffer[:, :, first - d - self.buffer_start:last + d - self.buffer_start]
        out = self.network.hidden(self.index, window, padding=False)
        _zero_outside(out, [first, self.lo[1], self.lo[2]], self.shape)
        self.next = last
        return out


class _Input:
    """The scaled cube as a stream of slices over the box grown by the whole halo (zeros outside the cube)."""

    def __init__(self, volume: torch.Tensor, lo: list[int], hi: list[int], halo: int, step: int) -> None:
        self.volume, self.step = volume, step
        self.lo, self.hi = [a - halo for a in lo], [b + halo for b in hi]
        self.next = self.lo[0]

    def pull(self) -> torch.Tensor:
        last = min(self.hi[0], self.next + self.step)
        block = _take(self.volume, [self.next, self.lo[1], self.lo[2]], [last, self.hi[1], self.hi[2]])
        self.next = last
        return block.contiguous(memory_format=CHANNELS_LAST)


def boxed_labels(network: MeshNet, scaled: np.ndarray, box: Box, step: int, tick: Any = None,
                 dtype: torch.dtype = torch.float32) -> np.ndarray:
    """uint8 labels of the whole cube: the box streamed through the layers ``step`` slices at a time (exact: see the
    module's doc), background elsewhere. Memory: each layer holds about ``2.5 × dilation + 3 × step`` slices."""
    volume = torch.from_numpy(scaled)[None, None].to(dtype)
    shape = tuple(scaled.shape)
    lo, hi = [b[0] for b in box], [b[1] for b in box]
    halos = np.cumsum([0, *reversed(network.dilations)])[::-1].tolist()  # halo still needed before each layer
    stream: Any = _Input(volume, lo, hi, halos[0], step)
    for index in range(len(network.dilations)):
        stream = _Layer(network, index, stream, lo, hi, halos[index + 1], shape, step)
    labels = np.zeros(shape, dtype=np.uint8)
    while (block := stream.pull()) is not None:
        first = stream.next - block.shape[2]
        labels[first:stream.next, lo[1]:hi[1], lo[2]:hi[2]] = network.output(block)[0].argmax(0).to(torch.uint8).numpy()
        if tick:
            tick((stream.next - lo[0]) / (hi[0] - lo[0]))
    return labels


def whole_volume_labels(network: MeshNet, scaled: np.ndarray, tick: Any = None, chunk: int = 32,
                        dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The plain forward, layer by layer, channels-last, for networks normalised over the whole volume: each
    convolution is written slab by slab into one buffer, then normalised and activated in place, so two
    activations are alive at a time (not the four a plain ``forward`` can hold)."""
    x = torch.from_numpy(scaled)[None, None].to(dtype).contiguous(memory_format=CHANNELS_LAST)
    depth = x.shape[2]
    for index, dilation in enumerate(network.dilations):
        conv = network.layers[index]
        out = torch.empty((1, conv.out_channels, *x.shape[2:]), dtype=dtype, memory_format=CHANNELS_LAST)
        for start in range(0, depth, chunk):
            stop = min(depth, start + chunk)
            window = _take(x, [start - dilation, 0, 0], [stop + dilation, x.shape[3], x.shape[4]])
            out[:, :, start:stop] = F.conv3d(window.contiguous(memory_format=CHANNELS_LAST), conv.weight, conv.bias,
                                             padding=(0, dilation, dilation), dilation=conv.dilation)
        del x
        if network.norm == "instance":
            # one pass over the buffer (channels are its fastest axis), sums in float64 whatever the precision
            total = torch.zeros(out.shape[1], dtype=torch.float64)
            squares = torch.zeros(out.shape[1], dtype=torch.float64)
            for start in range(0, depth, 8):
                part = out[:, :, start:start + 8].double()
                total += part.sum(dim=(0, 2, 3, 4))
                squares += (part * part).sum(dim=(0, 2, 3, 4))
            count = out[0, 0].numel()
            mean = total / count
            rstd = 1.0 / torch.sqrt(squares / count - mean * mean + GROUPNORM_EPS)
            out.sub_(mean.to(dtype).view(1, -1, 1, 1, 1)).mul_(rstd.to(dtype).view(1, -1, 1, 1, 1))
        for start in range(0, depth, chunk):
            out[:, :, start:start + chunk] = network.act(out[:, :, start:start + chunk])
        x = out
        if tick:
            tick((index + 1) / (len(network.dilations) + 1))
    labels = np.empty(tuple(scaled.shape), dtype=np.uint8)
    for start in range(0, depth, chunk):
        labels[start:start + chunk] = network.output(x[:, :, start:start + chunk])[0].argmax(0).to(torch.uint8).numpy()
    return labels


def device_labels(network: MeshNet, scaled: np.ndarray, device: torch.device, chunk: int = 32) -> np.ndarray:
    """The plain forward on an accelerator, whose memory holds the whole cube's activations (about 16.8 M voxels ×
    channels × 4 bytes, twice: 2 GB for 30 channels): seconds there, where the CPU needs the streamed paths."""
    network = network.to(device)
    x = torch.from_numpy(scaled)[None, None].to(device)
    logits = network(x)
    del x
    labels = np.empty(tuple(scaled.shape), dtype=np.uint8)
    for start in range(0, labels.shape[0], chunk):
        labels[start:start + chunk] = logits[0, :, start:start + chunk].argmax(0).to(torch.uint8).cpu().numpy()
    return labels


def meshnet_of(package: ModelPackage, device: torch.device) -> MeshNet:
    """The package's MeshNet, weights verified, on ``device`` (loaded before any work, once per batch worker inside
    :func:`cadcore.registry.networks.reuse_networks`)."""
    network = load_network(package, package.card.main_stage, device)
    if not isinstance(network, MeshNet):
        raise CadError("the meshnet pipeline runs a MeshNet network only", package.folder)
    return network


def conformed_labels(network: MeshNet, scaled: np.ndarray, device: torch.device, options: MeshNetOptions,
                     box: Box | None, tick: Any = None) -> np.ndarray:
    """The network's labels on the conformed cube (z, y, x) from the scaled cube: on ``device`` when it is an
    accelerator (the plain forward), else by the CPU's streamed or layer-by-layer paths."""
    if device.type != "cpu":
        with torch.inference_mode():
            labels = device_labels(network, scaled, device)
        if tick:
            tick(1.0)
        return labels
    dtype = torch.bfloat16 if options.precision == "bfloat16" else torch.float32
    network = network.to(dtype=dtype, memory_format=CHANNELS_LAST)
    with torch.inference_mode():
        if network.norm != "none":
            return whole_volume_labels(network, scaled, tick, dtype=dtype)
        if box is None:
            return np.zeros(scaled.shape, dtype=np.uint8)
        return boxed_labels(network, scaled, box, options.tile_depth, tick, dtype=dtype)


def mask_package(package: ModelPackage, options: MeshNetOptions) -> ModelPackage | None:
    """The package named by ``mask_model``, checked to share this model's conformed space (before any work)."""
    if options.mask_model is None:
        return None
    from cadcore.registry.packages import find_model

    mask = find_model(options.mask_model)
    pipeline = mask.card.pipeline
    if pipeline is None or pipeline.name != "meshnet":
        raise CadError(f"pipeline.mask_model {options.mask_model!r} is not a meshnet model", package.folder)
    theirs = pipeline.options
    if (theirs.conform_size, theirs.conform_spacing, theirs.orientation, theirs.uint8_percentile,
            theirs.percentiles) != (options.conform_size, options.conform_spacing, options.orientation,
                                    options.uint8_percentile, options.percentiles):
        raise CadError(f"pipeline.mask_model {options.mask_model!r} conforms images differently", package.folder)
    if theirs.mask_model is not None:
        raise CadError(f"pipeline.mask_model {options.mask_model!r} has a mask model of its own", package.folder)
    return mask


def segment(image: sitk.Image, package: ModelPackage, device: Any, progress: StagedProgress | None = None):
    """Labels of ``package`` on ``image``'s exact grid (the contract of :mod:`cadcore.segmentation.pipelines`)."""
    from cadcore.segmentation.predict import SegmentationResult

    options: MeshNetOptions = package.card.pipeline.options
    mask = mask_package(package, options)
    device = torch.device(device) if device is not None else torch.device("cpu")
    network = meshnet_of(package, device)  # weights verified (once) before any work
    mask_network = meshnet_of(mask, device) if mask is not None else None
    timings: dict[str, float] = {}
    started = time.perf_counter()
    conformed = conform(image, options.conform_size, options.conform_spacing, options.orientation,
                        options.uint8_percentile)
    # the networks read the cube as (i, j, k) (nibabel's order, the one they were trained in), not ITK's (k, j, i)
    scaled = np.ascontiguousarray(percentile_scale(sitk.GetArrayViewFromImage(conformed), options.percentiles).T)
    box = head_box(scaled, options.box_threshold, options.box_margin)
    timings["preprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("preprocess", 1.0)

    def ticker(stage: str):
        return (lambda fraction: progress.update(stage, fraction)) if progress else None

    if mask is not None:
        started = time.perf_counter()
        brain = conformed_labels(mask_network, scaled, device, mask.card.pipeline.options, box, ticker("network"))
        timings["mask_s"] = round(time.perf_counter() - started, 3)
        box = head_box((brain > 0).astype(np.float32), 0.5, options.box_margin, min_voxels=1)
    started = time.perf_counter()
    labels = conformed_labels(network, scaled, device, options, box, ticker("network"))
    if mask is not None:
        labels[brain == 0] = 0
    timings["inference_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    result = labels_to_input(labels.T, conformed, image)
    timings["postprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("postprocess", 1.0)
    return SegmentationResult(result, None, timings, working_spacing=[options.conform_spacing] * 3)
