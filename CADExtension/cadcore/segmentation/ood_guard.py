"""The out-of-distribution guard: say when an input lies far outside what a model was trained on.

A network returns confident labels on anything: ``hippocampus-unet`` (trained on ~35 x 50 x 35 mm crops around one
hippocampus) given a 256 mm whole-head T1 writes "hippocampus" segments somewhere in the head. The card's
``training_domain`` (measured from the training images by ``tools/training_domain.py``, and by ``cad train`` for
new models) records the field of view and voxel spacing per working axis, the modality, and intensity statistics
after the card's normalisation. :func:`check` compares an input with it and returns plain sentences (no "warning:"
prefix; the command adds it) that name what is far outside and suggest the interactive path. It never changes the
result; ``cad segment --strict`` turns a warning into a refusal.

"Far" is deliberately generous, so a model's own validation cases never warn (tested on hippocampus-unet's 42):
a field of view more than :data:`FOV_FACTOR` times the largest training one along an axis (or under 1 /
:data:`FOV_FACTOR` of the smallest), voxels more than :data:`SPACING_FACTOR` times the coarsest training voxel
(finer voxels are only resampled, so they are never a reason), another modality (a DICOM tag, or Hounsfield air in
the voxels when the model is MR), or normalised intensities shifted by more than :data:`INTENSITY_TOLERANCE`
training standard deviations. Everything is measured on the header and a regular subsample of at most
:data:`SAMPLE_VOXELS` voxels, so the guard costs milliseconds even on a 512^3 CT.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.io.dicom import MODALITY_KEY
from cadcore.preprocessing.working_space import normalise
from cadcore.registry.card import ModelCard, TrainingDomain

FOV_FACTOR = 2.0
SPACING_FACTOR = 2.5  # a 1.75 mm whole-head T1 is not far from brain-tumour-cascade's 0.86 mm in-plane
INTENSITY_TOLERANCE = 2.0  # training standard deviations (after normalisation)
STD_RATIO = 3.0  # an input's normalised spread more than 3 times wider or narrower than the training images'
SAMPLE_VOXELS = 1 << 20
HOUNSFIELD_AIR = -900.0  # a CT's air lies near -1000 HU; an MR's 1st percentile is never this low
MODALITY_KEYS = (MODALITY_KEY, "0008|0060")  # DICOM Modality, when the reader kept it on the image
INTERACTIVE_HINT = ("for a scan like this, segment interactively instead (cad interact, or the CAD AI effect in "
                    "Slicer's Segment Editor)")
PHYSICAL_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}


@dataclass(frozen=True)
class InputFacts:
    """An image as the guard sees it: per working axis (I, J, K of the card's orientation)."""

    field_of_view_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    modality: str | None  # "CT" / "MR" when the image says so (DICOM tag) or its voxels do (Hounsfield air)
    sample: np.ndarray | None  # normalised intensities of a regular subsample (flat float32), when asked for


def working_axes(image: sitk.Image, orientation: str | None) -> list[int]:
    """For each working axis, the input axis that runs along it (``DICOMOrient`` permutes axes this way)."""
    if not orientation:
        return [0, 1, 2]
    direction = np.abs(np.array(image.GetDirection()).reshape(3, 3))
    physical = [int(np.argmax(direction[:, a])) for a in range(3)]  # the physical axis each input axis follows
    order = [physical.index(PHYSICAL_AXIS[letter]) if PHYSICAL_AXIS[letter] in physical else w
             for w, letter in enumerate(orientation.upper())]
    return order if sorted(order) == [0, 1, 2] else [0, 1, 2]


def subsample(image: sitk.Image, voxels: int = SAMPLE_VOXELS) -> np.ndarray:
    """A regular subsample (every n-th voxel along each axis) of the image's voxels, as float32."""
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, math.ceil((array.size / voxels) ** (1 / 3)))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float32).ravel()


def image_modality(image: sitk.Image, raw: np.ndarray) -> str | None:
    """The DICOM Modality the image carries, else "CT" when 1 % of its voxels lie at Hounsfield air, else None."""
    for key in MODALITY_KEYS:
        if image.HasMetaDataKey(key) and image.GetMetaData(key).strip():
            return image.GetMetaData(key).strip().upper()
    if raw.size and float(np.percentile(raw, 1)) <= HOUNSFIELD_AIR:
        return "CT"
    return None


def measure(image: sitk.Image, preprocessing: Mapping[str, Any], intensities: bool = True) -> InputFacts:
    """What the guard compares: geometry from the header, modality and normalised intensities from a subsample."""
    order = working_axes(image, preprocessing.get("orientation"))
    size, spacing = image.GetSize(), image.GetSpacing()
    raw = subsample(image)
    sample = normalise(raw, dict(preprocessing.get("normalization", {}))) if intensities else None
    return InputFacts(tuple(float(size[a] * spacing[a]) for a in order),  # type: ignore[arg-type]
                      tuple(float(spacing[a]) for a in order),  # type: ignore[arg-type]
                      image_modality(image, raw), sample)


def statistics(values: np.ndarray) -> dict[str, float]:
    p01, p99 = np.percentile(values, [1, 99])
    return {"mean": float(values.mean()), "std": float(values.std()), "p01": float(p01), "p99": float(p99)}


def _mm(values: Iterable[float]) -> str:
    return " x ".join(f"{v:.0f}" if v >= 10 else f"{v:.2g}" for v in values)


def _modality_kind(text: str | None) -> str | None:
    word = (text or "").split(" ")[0].upper()
    return word if word in ("CT", "MR") else None


def reasons(facts: InputFacts, domain: TrainingDomain, card_modality: str | None) -> list[str]:
    """Each way the input lies far outside the domain, as a clause."""
    found = []
    fov = domain.field_of_view_mm
    if fov is not None:
        if any(v > FOV_FACTOR * high for v, high in zip(facts.field_of_view_mm, fov.max)):
            found.append(f"its field of view is {_mm(facts.field_of_view_mm)} mm, far larger than the training "
                         f"images' (at most {_mm(fov.max)} mm)")
        elif any(v < low / FOV_FACTOR for v, low in zip(facts.field_of_view_mm, fov.min)):
            found.append(f"its field of view is {_mm(facts.field_of_view_mm)} mm, far smaller than the training "
                         f"images' (at least {_mm(fov.min)} mm)")
    spacing = domain.spacing_mm
    if spacing is not None and any(v > SPACING_FACTOR * high for v, high in zip(facts.spacing_mm, spacing.max)):
        found.append(f"its voxels are {_mm(facts.spacing_mm)} mm, far coarser than the training images' (at most "
                     f"{_mm(spacing.max)} mm)")
    trained = _modality_kind(domain.modality or card_modality)
    if trained is not None:  # "ANY" is neither CT nor MR: not compared
        given = _modality_kind(facts.modality)
        if given is not None and given != trained:
            found.append(f"it is {given} but the model was trained on {trained}")
    stats = domain.intensity
    if stats is not None and facts.sample is not None and facts.sample.size:
        mine, tolerance = statistics(facts.sample), INTENSITY_TOLERANCE * stats.std
        ratio = mine["std"] / stats.std
        if (any(abs(mine[k] - getattr(stats, k)) > tolerance for k in ("mean", "p01", "p99"))
                or not 1 / STD_RATIO <= ratio <= STD_RATIO):
            found.append(f"its intensities after normalisation (mean {mine['mean']:.2f}, 1st-99th percentile "
                         f"{mine['p01']:.2f} to {mine['p99']:.2f}) differ from the training images' (mean "
                         f"{stats.mean:.2f}, {stats.p01:.2f} to {stats.p99:.2f})")
    return found


def check(image: sitk.Image, card: ModelCard) -> list[str]:
    """Plain-sentence warnings (none, or one naming every reason) for ``image`` given to ``card``'s model; a card
    without a ``training_domain`` is not guarded."""
    domain = card.training_domain
    if domain is None or image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        return []  # not a scalar volume: the pipeline refuses it in its own words
    found = reasons(measure(image, card.preprocessing, domain.intensity is not None), domain, card.modality)
    if not found:
        return []
    trained_on = f" ({domain.cases} training images)" if domain.cases else ""
    return [f"this scan is far outside what {card.id} was trained on{trained_on}: {'; '.join(found)}; its labels "
            f"may be wrong (they are kept as computed); {INTERACTIVE_HINT}"]


def measure_training_domain(images: Iterable[str | Path | sitk.Image], preprocessing: Mapping[str, Any],
                            modality: str | None, source: str, per_case: int = 200_000) -> dict[str, Any]:
    """The card's ``training_domain`` from the training images: per-axis field of view and spacing ranges in the
    card's working orientation, and intensity statistics after its normalisation pooled over the cases (at most
    ``per_case`` subsampled voxels each, so a big CT does not outweigh the rest)."""
    from cadcore.io.images import read_image

    fovs, spacings, samples = [], [], []
    rng = np.random.default_rng(0)
    for item in images:
        image = item if isinstance(item, sitk.Image) else read_image(item)
        facts = measure(image, preprocessing)
        fovs.append(facts.field_of_view_mm)
        spacings.append(facts.spacing_mm)
        sample = facts.sample if facts.sample is not None else np.zeros(0, np.float32)
        samples.append(sample if sample.size <= per_case else rng.choice(sample, per_case, replace=False))
    if not fovs:
        raise ValueError("no training images to measure")
    pooled = np.concatenate(samples)

    def axis_range(values: list[tuple[float, ...]]) -> dict[str, list[float]]:
        array = np.array(values)
        return {"min": [round(float(v), 4) for v in array.min(0)], "max": [round(float(v), 4) for v in array.max(0)]}

    domain: dict[str, Any] = {}
    if modality:
        domain["modality"] = modality
    domain.update({"field_of_view_mm": axis_range(fovs), "spacing_mm": axis_range(spacings)})
    if pooled.size and pooled.std() > 0:
        domain["intensity"] = {k: round(v, 4) for k, v in statistics(pooled).items()}
    domain.update({"cases": len(fovs), "source": source})
    return domain
