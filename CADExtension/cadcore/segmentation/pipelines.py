"""Running a model whose card names its own pipeline (``card.pipeline``; see :mod:`cadcore.registry.pipelines`).

Each pipeline is a module with ``segment(image, package, device, progress) -> SegmentationResult`` whose labels lie on
``image``'s exact grid, like the standard pipeline's; :func:`cadcore.segmentation.predict.segment_image` hands such
models here, so ``cad segment``, ``cad evaluate``, the server and batches run them unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

import SimpleITK as sitk

from cadcore.progress import StagedProgress
from cadcore.registry.packages import ModelPackage
from cadcore.registry.pipelines import PIPELINES


def run_pipeline(image: sitk.Image, package: ModelPackage, device: Any, progress: StagedProgress | None = None):
    """Hand the model to its pipeline's runner (``PIPELINES``; the card reader refused any other name)."""
    return importlib.import_module(PIPELINES[package.card.pipeline.name][1]).segment(image, package, device, progress)
