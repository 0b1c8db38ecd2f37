"""Slicer glue shared by the CADExtension modules: volumes to files, the engine command, background processes,
the one-job-at-a-time run/wait/cancel plumbing every Logic shares, engine results into segmentation nodes (and
segments into mask files), the model registry (one typed ``ModelSummary`` per model) and the engine's Python
dependencies.

Imports ``slicer`` and ``vtk`` only (no ``qt``/``ctk``/``ScriptedLoadableModule``, no torch/MONAI/cadcore), so it
runs both inside the Slicer application and on the ``slicer-core`` wheel that the MRML test suite uses.
"""

from CADExtensionLib.command import (
    ENGINE_MODULE,
    classifyArgv,
    engineEnvironment,
    engineFolder,
    segmentArgv,
    trainArgv,
)
from CADExtensionLib.dependencies import DependencyError, DependencyLogic
from CADExtensionLib.engine_job import EngineJobLogic, EngineRun, defaultRunner, engineErrorLine
from CADExtensionLib.model_summary import ModelSummary, modelDescription
from CADExtensionLib.models import ModelError, ModelManagerLogic, downloadFile, isSafeModelId
from CADExtensionLib.process import (
    CANCELLED,
    LineSplitter,
    ProcessRunner,
    SubprocessRunner,
    TemporaryWorkspace,
    killProcessTree,
    parseProgress,
    pythonExecutable,
)
from CADExtensionLib.segmentations import (
    exportSegmentToLabelmapFile,
    importLabelmapToSegmentation,
    placeUnderStudy,
    removeNodeAndDependents,
    segmentIdFromNameOrId,
    terminologyEntry,
    uniqueSegmentName,
)
from CADExtensionLib.volumes import VolumeGeometry, exportVolumeToFile, ijkToRASArray, volumeGeometry

__all__ = [
    "CANCELLED",
    "ENGINE_MODULE",
    "DependencyError",
    "DependencyLogic",
    "EngineJobLogic",
    "EngineRun",
    "LineSplitter",
    "ModelError",
    "ModelManagerLogic",
    "ModelSummary",
    "ProcessRunner",
    "SubprocessRunner",
    "TemporaryWorkspace",
    "VolumeGeometry",
    "classifyArgv",
    "defaultRunner",
    "downloadFile",
    "engineEnvironment",
    "engineErrorLine",
    "engineFolder",
    "exportSegmentToLabelmapFile",
    "exportVolumeToFile",
    "ijkToRASArray",
    "importLabelmapToSegmentation",
    "isSafeModelId",
    "killProcessTree",
    "modelDescription",
    "parseProgress",
    "placeUnderStudy",
    "pythonExecutable",
    "removeNodeAndDependents",
    "segmentArgv",
    "segmentIdFromNameOrId",
    "terminologyEntry",
    "trainArgv",
    "uniqueSegmentName",
    "volumeGeometry",
]
