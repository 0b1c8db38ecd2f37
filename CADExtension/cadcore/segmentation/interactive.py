"""Interactive segmentation with any segmentation model: the prompts say *where*, the network says *what*.

A click (or box, or scribble) defines a region; the model's main network (a cascade's fine stage) runs only there, at
its own working spacing; of the chosen label, the connected components holding a positive prompt are kept and those
under a negative prompt removed. This makes crop-trained models usable on whole scans (the hippocampus model given a
whole head) and lets a cascade's fine stage work where its coarse stage fails, without retraining anything. A MONAI
bundle runs on the region too: the crop goes through the bundle's own transforms and inferer (as ``cad segment``
runs it) and its labels come back on the crop's exact grid; the session asks either kind of model the same thing
("your output on this region", :class:`PackageRegions` / :class:`BundleRegions`) and selects components alike.

:class:`InteractiveSession` is the in-process API a warm server or the Segment Editor effect keeps between prompts: it
holds the network and, per region, the working-space probabilities, so a second prompt in the same region runs no
network and reads nothing again. ``cad interact`` is its cold path (one prompt per process).

Geometry: prompts are RAS millimetres (as ``cad classify --center``); the region is a box of input voxels cut with
``RegionOfInterest`` (so oblique directions are kept), and every output lies on the input's exact grid.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from cadcore.errors import CadError
from cadcore.preprocessing.input_grid import probabilities_to_input_grid
from cadcore.preprocessing.working_space import prepare, to_array
from cadcore.registry.bundles import BundleModel
from cadcore.registry.networks import load_network
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.prompt_maps import guided_input
from cadcore.segmentation.sliding_window import fold_batch_norm, predict_probabilities, tta_probabilities
from cadcore.segmentation.uncertainty import normalised_entropy

Region = tuple[tuple[int, int, int], tuple[int, int, int]]  # (index, size) in the input's I, J, K voxels
CONNECTIVITY = np.ones((3, 3, 3), bool)
CACHE_BYTES = 512 * 2 ** 20  # region outputs a session keeps (least recently used dropped first): a warm server
# holds one session per image, so this bounds what a long annotation session costs in memory
REGION_MARGIN_MM = 5.0  # around clicks, scribbles and the previous segment, so a structure at the edge is whole
# A bundle that states no window size (no plain roi_size / spatial_shape): 96 mm a side holds an organ-sized structure
# and is the window of the Model Zoo's CT bundles at their usual ~1 mm working spacing.
BUNDLE_EXTENT_MM = 96.0
UNCERTAINTY_NEEDS_PROBABILITIES = ("--uncertainty needs voxel probabilities, which a MONAI bundle does not give "
                                   "(its postprocessing returns labels)")


@dataclass(frozen=True)
class Prompts:
    """What the user said: points in RAS mm, a box (two opposite RAS corners), scribbles and the current segment
    (both on the image's grid: scribble 1 = this is it, 2 = this is not; previous: the segment to refine)."""

    positive: tuple[tuple[float, float, float], ...] = ()
    negative: tuple[tuple[float, float, float], ...] = ()
    box: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    scribble: sitk.Image | None = None
    previous: sitk.Image | None = None

    def describe(self) -> dict[str, Any]:
        return {"positive": [list(p) for p in self.positive], "negative": [list(p) for p in self.negative],
                "box": [list(c) for c in self.box] if self.box else None,
                "scribble": self.scribble is not None, "previous": self.previous is not None}


@dataclass
class InteractiveResult:
    mask: sitk.Image  # uint8 0/1 on the image's exact grid
    region: Region
    uncertainty: sitk.Image | None  # float32 voxel entropy (0..1) on the image's grid, 0 outside the region
    suggested_click: list[float] | None  # RAS mm: the centre of the most uncertain blob
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    reused: bool = False  # the region's probabilities came from the session's cache


def ras_to_index(image: sitk.Image, ras: tuple[float, float, float]) -> np.ndarray:
    """Continuous (I, J, K) index of a RAS point (LPS = RAS with x and y negated)."""
    return np.array(image.TransformPhysicalPointToContinuousIndex((-float(ras[0]), -float(ras[1]), float(ras[2]))))


def index_to_ras(image: sitk.Image, index: np.ndarray) -> list[float]:
    point = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
    return [round(-point[0], 3), round(-point[1], 3), round(point[2], 3)]


def check_prompts(image: sitk.Image, prompts: Prompts, source: str) -> None:
    """Refuse prompts that cannot mean anything, before any computing: nothing positive, points outside the volume,
    scribbles or a previous segment on another grid."""
    size = np.array(image.GetSize())
    for kind, points in (("positive click", prompts.positive), ("negative click", prompts.negative),
                         ("box corner", prompts.box or ())):
        for point in points:
            index = ras_to_index(image, point)
            if np.any(index < -0.5) or np.any(index > size - 0.5):
                raise CadError(f"{kind} ({', '.join(f'{v:g}' for v in point)}) RAS mm is outside the volume", source)
    from cadcore.io.images import check_same_grid

    for what, other in (("scribble", prompts.scribble), ("previous segment", prompts.previous)):
        if other is not None:
            check_same_grid(image, other, what, source, what=what)
    has_strokes = prompts.scribble is not None and bool((sitk.GetArrayViewFromImage(prompts.scribble) == 1).any())
    if not (prompts.positive or prompts.box or has_strokes):
        raise CadError("give at least one positive click, a box or a foreground scribble (value 1)", source)


def prompt_region(image: sitk.Image, prompts: Prompts, extent_mm: np.ndarray) -> Region:
    """The box when given; else the model's window (``extent_mm``) centred on the prompts, grown to hold every click,
    stroke and the previous segment (plus a margin), clipped to the volume."""
    size = np.array(image.GetSize())
    spacing = np.array(image.GetSpacing())
    if prompts.box is not None:
        corners = np.array([ras_to_index(image, c) for c in prompts.box])
        low, high = corners.min(0), corners.max(0)
    else:
        points = [ras_to_index(image, p) for p in (*prompts.positive, *prompts.negative)]
        for other, values in ((prompts.scribble, (1, 2)), (prompts.previous, (1,))):
            if other is not None:
                hits = np.argwhere(np.isin(sitk.GetArrayViewFromImage(other), values))
                if len(hits):
                    points += [hits.min(0)[::-1].astype(float), hits.max(0)[::-1].astype(float)]
        points_array = np.array(points)
        low, high = points_array.min(0), points_array.max(0)
        margin = REGION_MARGIN_MM / spacing
        low, high = low - margin, high + margin
        half = extent_mm / spacing / 2
        centre = (low + high) / 2
        low, high = np.minimum(low, centre - half), np.maximum(high, centre + half)
    start = np.clip(np.floor(low), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(high) + 1, start + 1, size).astype(int)
    return tuple(int(v) for v in start), tuple(int(v) for v in stop - start)  # type: ignore[return-value]


def most_uncertain_blob(entropy: np.ndarray) -> np.ndarray | None:
    """(I, J, K) centre of the connected blob of high entropy (over half the maximum) holding the most entropy."""
    if entropy.max() <= 1e-3:
        return None
    blobs, count = ndimage.label(entropy > 0.5 * entropy.max(), structure=CONNECTIVITY)
    totals = ndimage.sum(entropy, blobs, index=range(1, count + 1))
    best = int(np.argmax(totals)) + 1
    return np.array(ndimage.center_of_mass(entropy, blobs, best))


class PackageRegions:
    """A model package on a region: its main network (a cascade's fine stage) at its working spacing, giving
    probabilities; a guided network also gets the prompts (and the previous segment) as input channels."""

    gives_probabilities = True

    def __init__(self, package: ModelPackage, device: torch.device) -> None:
        self.package, self.device = package, device
        self.stage = package.card.main_stage  # a cascade's fine network: the prompt replaces the coarse stage
        self.guided = package.card.interactive
        self.depends_on_prompts = self.guided is not None
        self.network = None
        self.working: dict[Region, Any] = {}  # the region's working-space image (guided networks reuse it)

    def extent_mm(self, image: sitk.Image) -> np.ndarray:
        """The physical size of the network's window: what the model was trained to see around its target."""
        patch = np.array(self.stage.inference.patch_size or (64, 64, 64), dtype=float)
        spacing = self.stage.preprocessing.get("spacing") or image.GetSpacing()
        return patch * np.array(spacing, dtype=float)

    def predict(self, image: sitk.Image, region: Region, tta: bool, prompts: Prompts) -> np.ndarray:
        """(C, I, J, K) probabilities on the region's input voxels."""
        if self.network is None:
            self.network = load_network(self.package, self.stage, self.device)
            if self.device.type == "cpu":
                fold_batch_norm(self.network)
        if region not in self.working:
            crop = sitk.RegionOfInterest(image, list(region[1]), list(region[0]))
            self.working = {region: prepare(crop, self.stage.preprocessing)}  # one region kept: the one in use
        working = self.working[region]
        array = working.array
        if self.guided is not None:
            previous = (sitk.RegionOfInterest(prompts.previous, list(region[1]), list(region[0]))
                        if prompts.previous is not None else None)
            array = guided_input(working, self.guided, prompts.positive, prompts.negative, previous,
                                 dict(self.stage.preprocessing))
        patch = list(self.stage.inference.patch_size or ())
        if tta:
            values = tta_probabilities(self.network, array, patch, self.device, list(self.package.card.mirror_axes),
                                       self.stage.inference.overlap, self.stage.inference.sw_batch_size,
                                       self.stage.inference.mode)
        else:
            values = predict_probabilities(self.network, array, patch, self.device, self.stage.inference.overlap,
                                           self.stage.inference.sw_batch_size, self.stage.inference.mode)
        return probabilities_to_input_grid(values, working).astype(np.float32)


class BundleRegions:
    """A MONAI bundle on a region: the crop runs through the bundle's own transforms, inferer and postprocessing
    exactly as ``cad segment`` runs a whole volume (:func:`run_bundle`), and comes back as labels on the crop's grid.
    Bundles give labels only (their postprocessing ends in an argmax), hence no uncertainty."""

    gives_probabilities = False
    depends_on_prompts = False

    def __init__(self, bundle: BundleModel, device: torch.device) -> None:
        self.bundle, self.device = bundle, device

    def extent_mm(self, image: sitk.Image) -> np.ndarray:
        """The bundle's window (``roi_size`` times its ``Spacingd`` spacing, else the image's) when it states one,
        else :data:`BUNDLE_EXTENT_MM` on each axis."""
        roi, pixdim = self.bundle.window()
        if roi is None:
            return np.full(3, BUNDLE_EXTENT_MM)
        return np.array(roi, dtype=float) * np.array(pixdim or image.GetSpacing(), dtype=float)

    def predict(self, image: sitk.Image, region: Region, tta: bool, prompts: Prompts) -> np.ndarray:
        """(I, J, K) labels on the region's input voxels."""
        from cadcore.segmentation.bundle_inference import run_bundle

        crop = sitk.RegionOfInterest(image, list(region[1]), list(region[0]))
        labels, _ = run_bundle(crop, self.bundle, self.device)
        return to_array(labels)


class InteractiveSession:
    """One model (a package or a MONAI bundle) on one image, prompt after prompt (see the module docstring)."""

    def __init__(self, package: ModelPackage | BundleModel, image: sitk.Image, device: Any = "cpu",
                 source: str = "input", cache_bytes: int = CACHE_BYTES) -> None:
        if package.task != "segmentation":
            raise CadError(f"is a {package.task} model; interactive segmentation needs a segmentation model",
                           package.folder)
        self.package, self.image, self.source = package, image, source
        self.device = torch.device(device) if isinstance(device, str) else device
        self.model: PackageRegions | BundleRegions = (
            BundleRegions(package, self.device) if isinstance(package, BundleModel)
            else PackageRegions(package, self.device))
        self.cache: OrderedDict[tuple[Region, bool], np.ndarray] = OrderedDict()  # least recently used first
        self.cache_bytes = cache_bytes
        self.network_runs = 0

    def extent_mm(self) -> np.ndarray:
        return self.model.extent_mm(self.image)

    def region_output(self, region: Region, tta: bool, prompts: Prompts) -> tuple[np.ndarray, bool]:
        """The model's output on the region's input voxels: (C, I, J, K) probabilities or (I, J, K) labels. An output
        that depends on the region alone is cached per region; a guided network's depends on the prompts."""
        key = (region, tta)
        if not self.model.depends_on_prompts and key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key], True
        values = self.model.predict(self.image, region, tta, prompts)
        self.network_runs += 1
        if not self.model.depends_on_prompts:
            self.cache[key] = values
            while len(self.cache) > 1 and sum(v.nbytes for v in self.cache.values()) > self.cache_bytes:
                self.cache.popitem(last=False)  # the region prompted longest ago; the newest is always kept
        return values, False

    def segment(self, prompts: Prompts, label: int, uncertainty: bool = False) -> InteractiveResult:
        if label not in self.package.label_names():
            raise CadError(f"label {label} is not one of the model's labels {sorted(self.package.label_names())}",
                           self.package.folder)
        if uncertainty and not self.model.gives_probabilities:
            raise CadError(UNCERTAINTY_NEEDS_PROBABILITIES, self.package.folder)
        check_prompts(self.image, prompts, self.source)
        started = time.perf_counter()
        region = prompt_region(self.image, prompts, self.extent_mm())
        values, reused = self.region_output(region, uncertainty, prompts)
        timings = {"network_s" if not reused else "cached_s": round(time.perf_counter() - started, 3)}
        started = time.perf_counter()
        index, size = region
        window = tuple(slice(i, i + s) for i, s in zip(index, size))
        mask, warnings = self.select((values.argmax(0) if values.ndim == 4 else values) == label, prompts, window)
        full = np.zeros(self.image.GetSize(), np.uint8)
        if prompts.previous is not None:  # outside the region the network looked at, the segment stays as it was
            full[:] = to_array(prompts.previous) > 0
        full[window] = mask
        result = sitk.GetImageFromArray(np.ascontiguousarray(full.transpose(2, 1, 0)))
        result.CopyInformation(self.image)
        uncertainty_image, suggestion = None, None
        if uncertainty:
            entropy = np.zeros(self.image.GetSize(), np.float32)
            entropy[window] = normalised_entropy(values)
            centre = most_uncertain_blob(entropy[window])
            suggestion = index_to_ras(self.image, centre + np.array(index)) if centre is not None else None
            uncertainty_image = sitk.GetImageFromArray(np.ascontiguousarray(entropy.transpose(2, 1, 0)))
            uncertainty_image.CopyInformation(self.image)
        timings["postprocess_s"] = round(time.perf_counter() - started, 3)
        return InteractiveResult(result, region, uncertainty_image, suggestion, timings, warnings, reused)

    def select(self, labelled: np.ndarray, prompts: Prompts, window: tuple[slice, ...]) -> tuple[np.ndarray, list[str]]:
        """Keep the components holding a positive prompt (all of them inside a box when no point is given), drop those
        under a negative one; foreground strokes are always in, background strokes always out."""
        offset = np.array([s.start for s in window])
        strokes = to_array(prompts.scribble)[window] if prompts.scribble is not None else None
        components, _ = ndimage.label(labelled, structure=CONNECTIVITY)

        def voxels(points) -> list[tuple[int, ...]]:
            found = []
            for point in points:
                voxel = np.rint(ras_to_index(self.image, point)).astype(int) - offset
                if np.all(voxel >= 0) and np.all(voxel < labelled.shape):
                    found.append(tuple(int(v) for v in voxel))
            return found

        positive, negative = voxels(prompts.positive), voxels(prompts.negative)
        keep = {components[v] for v in positive} - {0}
        if strokes is not None:
            keep |= set(np.unique(components[strokes == 1]).tolist()) - {0}
        if not prompts.positive and (strokes is None or not (strokes == 1).any()):  # a box alone: all it holds
            keep = set(np.unique(components).tolist()) - {0}
        drop = {components[v] for v in negative} - {0}
        if strokes is not None:
            drop |= set(np.unique(components[strokes == 2]).tolist()) - {0}
        shared = drop & {components[v] for v in positive}  # one component under both kinds of click
        mask = np.isin(components, sorted(keep - drop))
        warnings = []
        if self.model.depends_on_prompts:  # a guided network has weighed the "no" itself: its answer stands
            mask |= np.isin(components, sorted(shared))
            if shared:
                warnings.append("the guided network kept voxels under a negative click (its answer is kept there)")
        else:
            for component in shared:  # split it: each voxel follows the nearest click, so a "no" trims, not erases
                mask |= self.nearer_positive(components == component, positive, negative)
        if prompts.positive and not keep:
            warnings.append("no voxel of the label lies under the positive clicks: nothing was added there")
        if strokes is not None:
            mask |= strokes == 1
            mask &= strokes != 2
        return mask.astype(np.uint8), warnings

    def nearer_positive(self, component: np.ndarray, positive: list[tuple[int, ...]],
                        negative: list[tuple[int, ...]]) -> np.ndarray:
        """The voxels of ``component`` nearer (in mm) to a positive click than to every negative one."""
        spacing = np.array(self.image.GetSpacing())
        points = np.argwhere(component)
        nearest = {}
        for kind, clicks in (("+", positive), ("-", negative)):
            distances = [np.sqrt((((points - np.array(c)) * spacing) ** 2).sum(1)) for c in clicks]
            nearest[kind] = np.min(distances, axis=0) if distances else np.full(len(points), np.inf)
        kept = np.zeros(component.shape, bool)
        chosen = points[nearest["+"] < nearest["-"]]
        kept[tuple(chosen.T)] = True
        return kept
