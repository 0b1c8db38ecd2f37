"""CADClassify's GUI-free logic (the module widget and scripts call it; tests drive it on slicer-core).

Needs the CADExtension and CADSegment module folders on ``sys.path`` (Slicer adds every module folder): the engine
glue comes from ``CADExtensionLib`` and the in-process runner is CADSegment's, which runs any ``cad`` command.
"""

from CADExtensionLib.overlays import HEATMAP_COLOR_NODE_IDS, heatmapColorNode
from CADSegmentLib.InProcessRunner import InProcessRunner

from CADClassifyLib.ClassificationLogic import (
    ClassificationCancelled,
    ClassificationLogic,
    ClassificationResult,
    pointInVolumeRAS,
)
from CADClassifyLib.ResultNodes import showHeatmapOverlay

__all__ = [
    "HEATMAP_COLOR_NODE_IDS",
    "ClassificationCancelled",
    "ClassificationLogic",
    "ClassificationResult",
    "InProcessRunner",
    "heatmapColorNode",
    "pointInVolumeRAS",
    "showHeatmapOverlay",
]
