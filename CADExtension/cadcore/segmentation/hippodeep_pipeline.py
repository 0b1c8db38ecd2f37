"""hippodeep's pipeline in the engine: left and right hippocampus and eTIV from a raw whole-head T1.

The steps are those of the published method (Thyreau et al. 2018; ``bthyreau/hippodeep_pytorch``), expressed as
SimpleITK grids and physical-space transforms so that any input geometry (oblique, anisotropic, LPS or RAS storage)
is handled by the same code and the labels come back on the input's exact grid:

1. the whole field of view, z-scored, is resampled (linear) to a ``head_grid``³ grid whose axes follow the input's
   own voxel axes, permuted and flipped to run towards Left, Anterior, Superior (the orientation the networks learnt);
2. the head network gives the intracranial map (eTIV: that map, brought back to the input grid, above
   ``brain_threshold``) and the tissue priors;
3. the affine network regresses the affine from its template grid to that grid, which gives one physical transform
   between template space and the input's space;
4. the input is resampled (linear) into the 1 mm crop box of template space, z-scored again, split into a right
   slab and a mirrored left slab, and the hippocampus network segments both in one batch;
5. each soft map is brought back to the input grid through the inverse transform (linear), floored at
   ``noise_floor``; its sum is hippodeep's volume, and ``label_threshold`` makes the labels (1 left, 2 right).
"""

from __future__ import annotations

import time

import numpy as np
import SimpleITK as sitk
import torch

from cadcore.errors import CadError
from cadcore.preprocessing.working_space import from_array, to_array
from cadcore.progress import StagedProgress
from cadcore.registry.card import Stage
from cadcore.registry.hippodeep_card import STEM_SHRINK, HippodeepOptions
from cadcore.registry.networks import load_networks
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.predict import SegmentationResult

LEFT, RIGHT = 1, 2
ROLES = ("head", "affine")  # the card's pipeline.networks; the hippocampus network is the card's main network
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
LAS_IN_LPS = (1.0, -1.0, 1.0)  # the sign, in LPS, of the directions Left, Anterior, Superior
MIN_EDGE = 8  # voxels per axis below which an image is not a head volume


def segment(image: sitk.Image, package: ModelPackage, device: torch.device,
            progress: StagedProgress | None = None) -> SegmentationResult:
    """Labels 1 (left) and 2 (right hippocampus) on ``image``'s grid; eTIV and hippodeep's volumes in ``measures``."""
    options: HippodeepOptions = package.card.pipeline.options
    stages = check_model(package, options)
    check_image(image, package)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    head, affine, hippo = load_networks(package, list(stages), device)
    normalised = zscored(image)
    head_grid = head_grid_of(image, options.head_grid)
    head_input = to_network(sitk.Resample(normalised, head_grid, sitk.Transform(), sitk.sitkLinear, 0.0,
                                          sitk.sitkFloat32), device)
    timings["preprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("preprocess", 1.0)

    started = time.perf_counter()
    with torch.inference_mode():
        priors = head(head_input)
        brain = priors[:, :1]
        template_to_grid = affine(torch.cat([priors[:, 1:2] * brain, priors[:, 3:4] * brain], 1))[0]
    to_native = template_to_native(template_to_grid.double().cpu().numpy(), head_grid, options)
    crop = crop_grid(options)
    cropped = to_array(sitk.Resample(normalised, crop, to_native, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    del normalised
    if progress:
        progress.update("network", 0.3)
    with torch.inference_mode():
        soft_crop = hippocampus_maps(cropped, hippo, options, device)
    timings["network_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("network", 1.0)

    started = time.perf_counter()
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    brain_map = from_array(brain[0, 0].float().cpu().numpy(), head_grid)
    inside = to_array(sitk.Resample(brain_map, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    etiv_ml = float((inside > options.brain_threshold).sum()) * voxel_ml
    del inside
    to_template = to_native.GetInverse()
    soft = {}
    for side, values in soft_crop.items():
        native = to_array(sitk.Resample(from_array(values, crop), image, to_template, sitk.sitkLinear, 0.0,
                                          sitk.sitkFloat32))
        native[native < options.noise_floor] = 0.0
        soft[side] = native
    labels = np.zeros(soft[LEFT].shape, np.uint8)
    labels[soft[LEFT] >= options.label_threshold] = LEFT
    labels[(soft[RIGHT] >= options.label_threshold) & (soft[RIGHT] > soft[LEFT])] = RIGHT
    result = from_array(labels, image)
    measures = {
        "etiv_ml": round(etiv_ml, 2),
        "hippocampus_left_ml": round(float(soft[LEFT].sum()) * voxel_ml, 4),  # hippodeep's own (soft) volumes
        "hippocampus_right_ml": round(float(soft[RIGHT].sum()) * voxel_ml, 4),
        "hippocampus_left_label_ml": round(float((labels == LEFT).sum()) * voxel_ml, 4),
        "hippocampus_right_label_ml": round(float((labels == RIGHT).sum()) * voxel_ml, 4),
    }
    timings["postprocess_s"] = round(time.perf_counter() - started, 3)
    if progress:
        progress.update("postprocess", 1.0)
    return SegmentationResult(result, None, timings, measures=measures,
                              warnings=plausibility_warnings(image, measures, package.id))


ETIV_RANGE_ML = (1000.0, 2300.0)  # adult eTIV lies well inside this (about 1.1-2.0 L); outside: not a head T1
HIPPOCAMPUS_RANGE_ML = (1.5, 6.5)  # one adult hippocampus (label volume), atrophy included
MAX_VOXEL_MM = 2.0  # the method was made on 3D T1s of about 1 mm; thick slices give implausible hippocampi


def plausibility_warnings(image: sitk.Image, measures: dict, model_id: str) -> list[str]:
    """Say when the answer is not to be trusted because the scan is not what hippodeep was made for (a whole-head
    3D T1 of an adult): an eTIV or a hippocampus volume outside the adult range, or thick voxels. Measured: on an
    abdominal MR it gave an eTIV of 2.7 L; on 6.5 mm-slice scans, hippocampi of 0.015-1.2 mL (docs/benchmarks.md)."""
    warnings = []
    etiv = measures["etiv_ml"]
    if not ETIV_RANGE_ML[0] <= etiv <= ETIV_RANGE_ML[1]:
        warnings.append(f"{model_id}: eTIV {etiv / 1000:.2f} L is outside the adult range "
                        f"{ETIV_RANGE_ML[0] / 1000:.1f}-{ETIV_RANGE_ML[1] / 1000:.1f} L: is this a whole-head T1 MR?")
    for side in ("left", "right"):
        volume = measures[f"hippocampus_{side}_label_ml"]
        if not HIPPOCAMPUS_RANGE_ML[0] <= volume <= HIPPOCAMPUS_RANGE_ML[1]:
            warnings.append(f"{model_id}: {side} hippocampus {volume:.2f} mL is outside the adult range "
                            f"{HIPPOCAMPUS_RANGE_ML[0]}-{HIPPOCAMPUS_RANGE_ML[1]} mL: check the result")
    thickest = max(image.GetSpacing())
    if thickest > MAX_VOXEL_MM:
        warnings.append(f"{model_id}: voxels up to {thickest:.1f} mm; it was made for 3D T1s of about 1 mm "
                        f"(at most {MAX_VOXEL_MM:g} mm): expect too small hippocampi")
    return warnings


def check_model(package: ModelPackage, options: HippodeepOptions) -> tuple[Stage, Stage, Stage]:
    """The head, affine and hippocampus stages, refused in one line if the card lacks one or they disagree."""
    card = package.card
    by_role = {stage.role: stage for stage in card.pipeline.stages}
    missing = [role for role in ROLES if role not in by_role]
    if missing:
        raise CadError(f"pipeline.networks: hippodeep needs the networks {', '.join(ROLES)} (missing "
                       f"{', '.join(missing)})", package.folder / "model.json")
    grid = by_role["affine"].network.get("params", {}).get("grid_size", options.head_grid)
    if grid != options.head_grid:
        raise CadError(f"pipeline.head_grid: {options.head_grid} but the affine network was built for a {grid}³ grid",
                       package.folder / "model.json")
    return by_role["head"], by_role["affine"], card.main_stage


def check_image(image: sitk.Image, package: ModelPackage) -> None:
    """Before any computation: one scalar 3D volume, big enough to be a head."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CadError(f"model {package.id} needs one scalar 3D volume (a whole-head T1), got a "
                       f"{image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} components")
    if min(image.GetSize()) < MIN_EDGE:
        raise CadError(f"model {package.id} needs a whole-head volume, got {'x'.join(map(str, image.GetSize()))} "
                       f"voxels")


def zscored(image: sitk.Image) -> sitk.Image:
    """The input as float32, zero mean and unit variance over the whole volume (outside the field of view the
    resamplers fill 0, the mean, as the method does)."""
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    std = float(values.std())
    if not np.isfinite(std) or std == 0:
        raise CadError("the image is constant (or not finite): nothing to segment")
    values -= values.mean()
    values /= std
    normalised = sitk.GetImageFromArray(values)  # SimpleITK's own (K, J, I) order, straight back
    normalised.CopyInformation(image)
    return normalised


def las_axes(direction: np.ndarray) -> list[tuple[int, bool]]:
    """For each of Left, Anterior, Superior, the input voxel axis closest to it and whether that axis runs the
    other way. Pairs are taken largest cosine first, so an oblique volume still maps each axis once."""
    cosines = np.abs(direction).astype(float)
    chosen: dict[int, tuple[int, bool]] = {}
    for _ in range(3):
        world, axis = np.unravel_index(int(np.argmax(cosines)), cosines.shape)
        chosen[int(world)] = (int(axis), bool(np.sign(direction[world, axis]) != LAS_IN_LPS[world]))
        cosines[world, :] = -1.0
        cosines[:, axis] = -1.0
    return [chosen[world] for world in range(3)]


def head_grid_of(image: sitk.Image, size: int) -> sitk.Image:
    """The ``size``³ grid spanning the input's field of view (first to last voxel centre on each axis), its axes
    the input's own, reordered and flipped to run towards L, A, S."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    extent = np.array(image.GetSize()) - 1
    start = np.zeros(3)
    columns, spacing = [], []
    for axis, flipped in las_axes(direction):
        start[axis] = extent[axis] if flipped else 0
        columns.append(direction[:, axis] * (-1.0 if flipped else 1.0))
        spacing.append(image.GetSpacing()[axis] * extent[axis] / (size - 1))
    grid = sitk.Image([size] * 3, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(np.column_stack(columns).ravel().tolist())
    grid.SetOrigin(image.TransformContinuousIndexToPhysicalPoint(start.tolist()))
    return grid


def index_to_physical(grid: sitk.Image) -> np.ndarray:
    """A grid's 4×4 voxel index → LPS point matrix."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    matrix[:3, 3] = grid.GetOrigin()
    return matrix


def unit_from_index(size: int) -> np.ndarray:
    """Index 0..size-1 → -1..1 on every axis (the networks' coordinates)."""
    matrix = np.eye(4) * (2.0 / (size - 1))
    matrix[:3, 3] = -1.0
    matrix[3, 3] = 1.0
    return matrix


def template_to_native(template_to_grid: np.ndarray, head_grid: sitk.Image, options: HippodeepOptions
                       ) -> sitk.AffineTransform:
    """The affine network's answer as one transform from template-space LPS points to the input's LPS points (the
    direction a resampler wants when it fills a template-space grid from the input)."""
    size = options.head_grid
    template = np.eye(4)  # the template grid's index → RAS point; axes towards L, A, S
    template[:3, :3] = np.diag(np.array(options.template_spacing) * np.array([-1.0, 1.0, 1.0]))
    template[:3, 3] = options.template_origin_ras
    unit = unit_from_index(size)
    matrix = (index_to_physical(head_grid) @ np.linalg.inv(unit) @ template_to_grid @ unit
              @ np.linalg.inv(template) @ LPS_FROM_RAS)
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        raise CadError("the affine to hippodeep's template is degenerate: the image is probably not a whole-head T1")
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(matrix[:3, :3].ravel().tolist())
    transform.SetTranslation(matrix[:3, 3].tolist())
    return transform


def crop_grid(options: HippodeepOptions) -> sitk.Image:
    """The hippocampus crop box of template space as an LPS grid (axes towards L, A, S)."""
    grid = sitk.Image(list(options.crop_shape), sitk.sitkFloat32)
    grid.SetSpacing([options.crop_spacing] * 3)
    grid.SetDirection([LAS_IN_LPS[0], 0, 0, 0, LAS_IN_LPS[1], 0, 0, 0, LAS_IN_LPS[2]])
    grid.SetOrigin((LPS_FROM_RAS[:3, :3] @ np.array(options.crop_origin_ras)).tolist())
    return grid


def hippocampus_maps(cropped: np.ndarray, network: torch.nn.Module, options: HippodeepOptions,
                     device: torch.device) -> dict[int, np.ndarray]:
    """The soft maps (0..1) of both sides on the crop grid, indexed (L-axis, A-axis, S-axis). Axis 0 runs towards
    the left, so the right slab comes first; the left slab is mirrored for the network and mirrored back."""
    cropped = (cropped - cropped.mean()) / max(float(cropped.std()), 1e-8)
    width, edge = options.side_width, options.crop_shape[0]
    right_start, left_start = options.side_margin, edge - options.side_margin - width
    trim = options.crop_trim
    inner = tuple(slice(t, n - t) for t, n in zip(trim[1:], options.crop_shape[1:]))
    right = cropped[(slice(right_start + trim[0], right_start + width - trim[0]), *inner)]
    left = cropped[(slice(left_start + trim[0], left_start + width - trim[0]), *inner)][::-1]
    batch = torch.from_numpy(np.stack([right, left])[:, None].copy()).to(device)
    output = network(batch)[:, 0].float().cpu().numpy()
    cut = options.hippocampus_threshold
    # hippodeep stretches the confident part: the threshold stays, and the output reaches 1 at half-way to 1
    output = np.clip((output - cut) * 2.0 + cut, 0.0, 1.0) * (output > cut)
    margin = STEM_SHRINK // 2
    maps = {}
    for side, start, values in ((RIGHT, right_start, output[0]), (LEFT, left_start, output[1][::-1])):
        full = np.zeros(options.crop_shape, np.float32)
        lead = start + trim[0] + margin
        full[lead:lead + values.shape[0], trim[1] + margin:trim[1] + margin + values.shape[1],
             trim[2] + margin:trim[2] + margin + values.shape[2]] = values
        maps[side] = full
    return maps


def to_network(image: sitk.Image, device: torch.device) -> torch.Tensor:
    """A grid's voxels as a (1, 1, I, J, K) tensor in index order (SimpleITK's arrays are K, J, I)."""
    return torch.from_numpy(np.ascontiguousarray(to_array(image)))[None, None].to(device)
