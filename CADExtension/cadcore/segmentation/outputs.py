"""What ``cad segment`` writes besides the labelmap: the per-class probability image and the JSON sidecar.

The sidecar describes the result for the Slicer module and for scripts (model id and version, labels with volumes in
mL, the input's geometry, the working spacing, cascade and fast-mode facts, timings); it is built from plain values,
never from the command line's parsed arguments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from cadcore.io.dicom import series_source
from cadcore.io.writing import write_image
from cadcore.registry.bundles import BundleModel
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.predict import SegmentationResult

PROBABILITY_SUFFIXES = (".nii.gz", ".nrrd", ".mha")


def write_probabilities(probabilities: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """(C, I, J, K) → a vector image (one component per class) with the reference's geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(probabilities.transpose(3, 2, 1, 0)), isVector=True)
    image.CopyInformation(reference)
    write_image(image, path)


def write_uncertainty(uncertainty: np.ndarray, reference: sitk.Image, path: Path) -> None:
    """(z, y, x) float32 normalised entropy -> an image with the reference's exact geometry."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(uncertainty, dtype=np.float32))
    image.CopyInformation(reference)
    write_image(image, path)


def sidecar(package: ModelPackage | BundleModel, result: SegmentationResult, image: sitk.Image, seconds: float,
            paths: dict[str, str | None]) -> dict[str, Any]:
    """The sidecar JSON; ``paths`` names what was read and written (``input``, ``output``, ``probabilities``,
    ``overlay_png``, ``uncertainty``; None for an output not asked for). ``uncertainty`` (the file and its summary)
    and ``warnings`` appear only when there is something to say."""
    from cadcore.io.labelmaps import label_volumes_ml

    volumes = label_volumes_ml(result.labels, package.labels)
    array = sitk.GetArrayViewFromImage(result.labels)
    return {
        "model": package.id,  # the registry id, so callers (the Slicer module) can find the model again
        "model_name": package.name,
        "model_version": package.version,
        **{key: paths.get(key) for key in ("input", "output", "probabilities", "overlay_png")},
        "source": series_source(image),  # the DICOM series segmented (UID, description); None for a file
        "labels": [
            {**{k: label[k] for k in ("value", "name", "color") if k in label},
             "terminology": label.get("terminology"),
             "voxels": int((array == int(label["value"])).sum()),
             "volume_ml": round(volumes.get(int(label["value"]), 0.0), 4)}
            for label in package.labels
        ],
        "geometry": {"size": list(image.GetSize()), "spacing": list(image.GetSpacing()),
                     "origin": list(image.GetOrigin()), "direction": list(image.GetDirection())},
        "cascade": result.cascade,
        "fast": result.fast,
        "working_spacing": result.working_spacing,
        **({"measures": result.measures} if result.measures else {}),
        **({"warnings": list(result.warnings)} if result.warnings else {}),  # absent: nothing to warn about
        **({"notes": list(result.notes)} if result.notes else {}),  # e.g. why a bundle ran through monai.bundle
        **({"uncertainty": {"file": paths.get("uncertainty"), **result.uncertainty_summary}}
           if result.uncertainty_summary is not None else {}),
        "timings": {**result.timings, "total_s": round(seconds, 3)},
    }
