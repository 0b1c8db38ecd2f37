"""The CADSegment panel's Batch section, uncertainty option and warning label (issues 18 and 20) in its ``.ui``.

The generic checks of ``test_ui_files.py`` already prove every ``self.ui.X`` exists and the file loads; these add the
layout the code relies on: the Batch widgets live in the collapsed Batch section (so the section's enable/disable
reaches them), the uncertainty box sits in Outputs and is bound to the ``uncertainty`` parameter, and the warning
label sits between the progress bar and the log, styled to stand out, and loads in PySide6 offscreen.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET

import pytest
from test_ui_files import REPO, load, ui_path, ui_xml, unexpected
from test_ui_files import qt as offscreen_qt  # noqa: F401 (the offscreen-Qt fixture, registered under this name)

SECTION = REPO / "CADSegment" / "CADSegmentWidgets" / "BatchSection.py"


def section_ui_names() -> set[str]:
    tree = ast.parse(SECTION.read_text(encoding="utf-8"))
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and ast.unparse(node.value) == "self.ui"}


def descendants(root: ET.Element, name: str) -> set[str]:
    element = next(w for w in root.iter("widget") if w.get("name") == name)
    return {w.get("name") for w in element.iter("widget")} - {name}


def test_batch_widgets_are_inside_the_batch_section():
    root = ui_xml("CADSegment")
    used = section_ui_names()
    assert {"batchRunButton", "batchProgressBar", "batchLogTextEdit", "batchSummaryLabel", "batchFormatComboBox",
            "batchWorkersSpinBox", "batchModelSelector", "batchInputFolderButton", "batchOutputFolderButton",
            "batchVolumesListWidget", "batchLoadResultsCheckBox"} <= used
    assert used - descendants(root, "batchCollapsibleButton") == set()
    section = next(w for w in root.iter("widget") if w.get("name") == "batchCollapsibleButton")
    assert section.find("property[@name='collapsed']/bool").text == "true"
    tabs = next(w for w in root.iter("widget") if w.get("name") == "batchInputTabWidget")
    assert [w.get("name") for w in tabs.findall("widget")] == ["batchFolderTab", "batchSceneTab"]  # index 0: folder
    workers = next(w for w in root.iter("widget") if w.get("name") == "batchWorkersSpinBox")
    assert workers.find("property[@name='minimum']/number").text == "1"


def test_uncertainty_option_is_in_outputs_and_bound():
    root = ui_xml("CADSegment")
    assert "uncertaintyCheckBox" in descendants(root, "outputsCollapsibleButton")
    box = next(w for w in root.iter("widget") if w.get("name") == "uncertaintyCheckBox")
    assert box.get("class") == "QCheckBox"
    assert box.find("property[@name='SlicerParameterName']/string").text == "uncertainty"


def test_warning_label_sits_between_progress_and_log():
    root = ui_xml("CADSegment")
    top = root.find("widget/layout")
    order = [item.find("widget").get("name") for item in top.findall("item") if item.find("widget") is not None]
    assert order.index("progressBar") + 1 == order.index("warningLabel") == order.index("logCollapsibleButton") - 1
    label = next(w for w in root.iter("widget") if w.get("name") == "warningLabel")
    style = label.find("property[@name='styleSheet']/string").text
    assert "background-color" in style and "color" in style


def test_panel_loads_with_the_new_widgets(request):
    qt = request.getfixturevalue("offscreen_qt")
    root = ui_xml("CADSegment")
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    widget, warnings = load(qt, ui_path("CADSegment").read_bytes())
    assert unexpected(warnings, declared) == []
    find = widget.findChild
    qobject = qt["core"].QObject
    for name in section_ui_names() | {"uncertaintyCheckBox", "warningLabel"}:
        assert find(qobject, name) is not None, name
    widgets = pytest.importorskip("PySide6.QtWidgets")
    assert isinstance(find(qobject, "batchVolumesListWidget"), widgets.QListWidget)
    assert isinstance(find(qobject, "batchFormatComboBox"), widgets.QComboBox)
    assert isinstance(find(qobject, "batchLogTextEdit"), widgets.QPlainTextEdit)
    assert find(qobject, "batchLogTextEdit").isReadOnly()
    assert find(qobject, "uncertaintyCheckBox").property("SlicerParameterName") == "uncertainty"
    assert "background-color" in find(qobject, "warningLabel").styleSheet()
    widget.deleteLater()
