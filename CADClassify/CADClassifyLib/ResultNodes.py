"""MRML nodes that show a classification result: the probability and feature tables, and the heatmap volume with
its colour map and slice-view overlay (split from ``ClassificationLogic`` to keep each file small; the heatmap is
read and shown by ``CADExtensionLib.overlays``, shared with CADSegment's uncertainty map)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import vtk
from CADExtensionLib.overlays import loadMapOnVolumeGrid, showOverlay


def showHeatmapOverlay(heatmapNode, volumeNode, opacity: float = 0.5) -> bool:
    """Show ``volumeNode`` as background and ``heatmapNode`` as foreground
    (:func:`CADExtensionLib.overlays.showOverlay`); False when there is no heatmap (baseline models) or no slice
    view."""
    return showOverlay(heatmapNode, volumeNode, opacity)


def makeTableNode(scene, name: str, report: Mapping[str, Any], probabilities: Mapping[str, float],
               uncalibrated: Mapping[str, float]):
    """Class | Probability | Uncalibrated probability, one row per class in the model's order."""
    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    classes = vtk.vtkStringArray()
    classes.SetName("Class")
    calibrated = vtk.vtkDoubleArray()
    calibrated.SetName("Probability")
    raw = vtk.vtkDoubleArray()
    raw.SetName("Uncalibrated probability")
    for className, probability in probabilities.items():
        classes.InsertNextValue(className)
        calibrated.InsertNextValue(probability)
        raw.InsertNextValue(uncalibrated.get(className, float("nan")))
    for column in (classes, calibrated, raw):
        tableNode.AddColumn(column)
    temperature = report.get("temperature")
    tableNode.SetColumnDescription("Probability", f"calibrated (temperature {temperature})" if report.get(
        "calibrated") else "not calibrated (the model card has no temperature)")
    tableNode.SetColumnDescription("Uncalibrated probability", "softmax of the network's logits")
    tableNode.SetAttribute("CADClassify.model", str(report.get("model")))
    tableNode.SetAttribute("CADClassify.modelVersion", str(report.get("model_version")))
    tableNode.SetAttribute("CADClassify.predicted", str(report["predicted"]))
    tableNode.SetAttribute("CADClassify.roi", json.dumps(report.get("roi")))
    return tableNode

def makeFeatureTableNode(scene, name: str, report: Mapping[str, Any]):
    """Feature | Group | Value for the ROI's hand-crafted features, in the engine's order."""
    tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    names, groups, values = vtk.vtkStringArray(), vtk.vtkStringArray(), vtk.vtkDoubleArray()
    names.SetName("Feature")
    groups.SetName("Group")
    values.SetName("Value")
    for feature, value in report["features"].items():
        group, _, short = feature.partition("_")
        names.InsertNextValue(short or feature)
        groups.InsertNextValue(group)
        values.InsertNextValue(float(value))
    for column in (names, groups, values):
        tableNode.AddColumn(column)
    tableNode.SetAttribute("CADClassify.model", str(report.get("model")))
    return tableNode

def makeHeatmapNode(volumeNode, path: Path, name: str):
    """Read the engine's heatmap into a new scalar volume with exactly the volume's geometry and a heat colour map
    (:func:`CADExtensionLib.overlays.loadMapOnVolumeGrid`; 0 outside the ROI is transparent)."""
    try:
        return loadMapOnVolumeGrid(volumeNode, path, name, what="heatmap")
    except RuntimeError as error:
        raise RuntimeError(f"classification failed: {error}") from error
