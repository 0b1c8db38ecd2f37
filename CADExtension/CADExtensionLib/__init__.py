"""Slicer glue shared by the CADExtension modules: volumes to files, the engine command, background processes,
and engine results into segmentation nodes.

Imports ``slicer`` and ``vtk`` only (no ``qt``/``ctk``/``ScriptedLoadableModule``, no torch/MONAI/cadcore), so it
runs both inside the Slicer application and on the ``slicer-core`` wheel that the MRML test suite uses.
"""

from CADExtensionLib.command import ENGINE_MODULE, engineEnvironment, engineFolder, segmentArgv
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
    importLabelmapToSegmentation,
    placeUnderStudy,
    removeNodeAndDependents,
    terminologyEntry,
    uniqueSegmentName,
)
from CADExtensionLib.volumes import VolumeGeometry, exportVolumeToFile, ijkToRASArray, volumeGeometry

__all__ = [
    "CANCELLED",
    "ENGINE_MODULE",
    "LineSplitter",
    "ProcessRunner",
    "SubprocessRunner",
    "TemporaryWorkspace",
    "VolumeGeometry",
    "engineEnvironment",
    "engineFolder",
    "exportVolumeToFile",
    "ijkToRASArray",
    "importLabelmapToSegmentation",
    "killProcessTree",
    "parseProgress",
    "placeUnderStudy",
    "pythonExecutable",
    "removeNodeAndDependents",
    "segmentArgv",
    "terminologyEntry",
    "uniqueSegmentName",
    "volumeGeometry",
]
