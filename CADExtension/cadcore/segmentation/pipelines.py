"""Running a model whose card names its own pipeline (``card.pipeline``; see :mod:`cadcore.registry.pipelines`).

Each pipeline is a module with ``segment(image, package, device, progress) -> SegmentationResult`` whose labels lie on
``image``'s exact grid, like the standard pipeline's; :func:`cadcore.segmentation.predict.segment_image` hands such
models here, so ``cad segment``, ``cad evaluate``, the server and batches run them unchanged.
"""

from __future__ import annotations

import importlib
from typing import Any

import SimpleITK as sitk

from cadcore.errors import CadError
from cadcore.progress import StagedProgress
from cadcore.registry.packages import ModelPackage

RUNNERS = {
    "meshnet": "cadcore.segmentation.meshnet_pipeline",
    "hippodeep": "cadcore.segmentation.hippodeep_pipeline",
}
"""Pipeline name → the module whose ``segment`` runs it (a fixed table, as the card readers are)."""


def run_pipeline(image: sitk.Image, package: ModelPackage, device: Any, progress: StagedProgress | None = None):
    name = package.card.pipeline.name
    if name not in RUNNERS:
        raise CadError(f"pipeline {name!r} cannot be run by this engine", package.folder)
    return importlib.import_module(RUNNERS[name]).segment(image, package, device, progress)
