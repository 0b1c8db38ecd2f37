"""CADSegment's GUI-free logic (the module widget and scripts call it; tests drive it on slicer-core).

Needs the CADExtension module folder on ``sys.path`` (Slicer adds every module folder) for ``CADExtensionLib``.
"""

from CADSegmentLib.BatchLogic import BatchCancelled, BatchCase, BatchLogic, BatchResult, availableFormats
from CADSegmentLib.ImproveModelLogic import ImproveModelCancelled, ImproveModelLogic, ImproveModelResult
from CADSegmentLib.InProcessRunner import InProcessRunner
from CADSegmentLib.PromptBackends import (
    CommandBackend,
    PromptAnswer,
    PromptBackend,
    PromptCancelled,
    PromptRequest,
    VolumeFileCache,
)
from CADSegmentLib.PromptInputs import modelLabelForSegment, roiBoxInVolume
from CADSegmentLib.PromptLogic import PromptLogic
from CADSegmentLib.SegmentationLogic import (
    SegmentationCancelled,
    SegmentationLogic,
    defaultRunner,
    engineErrorLine,
    fastOption,
    fastSpacing,
    uncertaintyOption,
    uncertaintySummaryLines,
)

__all__ = [
    "BatchCancelled",
    "BatchCase",
    "BatchLogic",
    "BatchResult",
    "CommandBackend",
    "ImproveModelCancelled",
    "ImproveModelLogic",
    "ImproveModelResult",
    "InProcessRunner",
    "PromptAnswer",
    "PromptBackend",
    "PromptCancelled",
    "PromptLogic",
    "PromptRequest",
    "SegmentationCancelled",
    "SegmentationLogic",
    "VolumeFileCache",
    "availableFormats",
    "defaultRunner",
    "engineErrorLine",
    "fastOption",
    "fastSpacing",
    "modelLabelForSegment",
    "roiBoxInVolume",
    "uncertaintyOption",
    "uncertaintySummaryLines",
]
