"""The modules' Qt Designer files against the code that uses them (docs/slicer-testing.md §5c, §5d).

Two levels:

* XML + AST (always run): every ``self.ui.X`` of a module file is a named object of its ``.ui``; every non-Qt class
  is declared in ``<customwidgets>``; every MRML widget gets the scene; the ``SlicerParameterName`` bindings equal the
  fields of the module's ``@parameterNodeWrapper`` class, each on a widget type that Slicer's GUI connectors accept
  for that field's type (``connectGui`` raises in Slicer otherwise).
* Real Qt (PySide6, offscreen; skipped without it): each ``.ui`` loads with ``QUiLoader``. Declared Slicer/CTK classes
  load as their ``<extends>`` base class; an *undeclared* class silently drops the widget, with only the Qt warning
  "unable to create a widget" (``errorString()`` stays empty), so a message handler turns that, and any other
  unexpected warning, into a failure. Loading proves the file is valid Designer XML with every child the code needs;
  it does not run the widget code (PythonQt idioms are not PySide) nor the Slicer widgets themselves.
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = ("CADExtension", "CADSegment", "CADClassify")
PARAMETER = "SlicerParameterName"
MRML_WIDGETS = ("qMRMLNodeComboBox", "qMRMLSegmentSelectorWidget", "qMRMLTableView", "qMRMLSubjectHierarchyTreeView")
# Qt warnings that loading a Slicer .ui outside Slicer always gives: declared custom classes fall back to their base,
# and the root's mrmlSceneChanged(vtkMRMLScene*) signal exists only on the real qMRMLWidget.
EXPECTED_WARNINGS = (
    re.compile(r"QFormBuilder was unable to create a custom widget of the class '(\w+)'; defaulting to base class"),
    re.compile(r"QObject::connect: No such signal \S+::mrmlSceneChanged\(vtkMRMLScene\*\)"),
    re.compile(r"QObject::connect:\s+\((sender|receiver) name:"),
)

# Slicer's GUI connectors (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py): widget class (exact type) ->
# the field kinds it can represent. "str+choice" is QComboBoxToStringableConnector, which raises without Choice;
# ctkComboBox + str is CADExtensionWidgets' ModelSelectorConnector (checked to exist below).
CONNECTORS = {
    "QCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "QSlider": {"int+bounded"},
    "QSpinBox": {"int"},
    "QDoubleSpinBox": {"float"},
    "ctkSliderWidget": {"float+bounded"},
    "QComboBox": {"str+choice", "int+choice", "float+choice", "bool+choice", "enum"},
    "QLineEdit": {"str"},
    "QTextEdit": {"str"},
    "ctkPathLineEdit": {"path"},
    "ctkDirectoryButton": {"path"},
    "qMRMLNodeComboBox": {"node"},
    "qMRMLSubjectHierarchyTreeView": {"node"},
    "ctkComboBox": {"str"},
}


def ui_path(module: str) -> Path:
    return REPO / module / "Resources" / "UI" / f"{module}.ui"


def module_tree(module: str) -> ast.Module:
    path = REPO / module / f"{module}.py"
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def ui_xml(module: str) -> ET.Element:
    return ET.parse(ui_path(module)).getroot()


def named_objects(root: ET.Element) -> dict[str, str]:
    """name -> class of every widget, layout and spacer (what ``childWidgetVariables`` can return)."""
    objects = {}
    for tag in ("widget", "layout"):
        for element in root.iter(tag):
            objects[element.get("name")] = element.get("class")
    for element in root.iter("spacer"):
        objects[element.get("name")] = "spacer"
    return objects


def bindings(root: ET.Element) -> dict[str, tuple[str, str]]:
    """SlicerParameterName value -> (widget name, widget class), refusing a parameter bound twice."""
    found: dict[str, tuple[str, str]] = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == PARAMETER:
                value = prop.findtext("string")
                assert value not in found, f"parameter {value} is bound twice"
                found[value] = (widget.get("name"), widget.get("class"))
    return found


def ui_attributes(tree: ast.Module) -> set[str]:
    """Every X of ``self.ui.X`` in the module file."""
    return {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and ast.unparse(node.value) == "self.ui"}


def panel_ui_attributes(module: str) -> set[str]:
    """``self.ui.X`` of the module file and of its ``<Module>Widgets`` package (panel sections kept out of the
    module file, which hold the same ``ui``)."""
    used = ui_attributes(module_tree(module))
    for path in sorted((REPO / module / f"{module}Widgets").glob("*.py")):
        used |= ui_attributes(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return used


def constants(tree: ast.Module) -> dict[str, object]:
    """Module-level literal constants (``DEVICES = (...)``), for resolving ``Choice(list(DEVICES))``."""
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def evaluate(node: ast.expr, names: dict[str, object]):
    """A literal, a module constant, or ``list(...)``/``tuple(...)`` of one."""
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.Call) and ast.unparse(node.func) in ("list", "tuple"):
        return list(evaluate(node.args[0], names))
    return ast.literal_eval(node)


def parameter_fields(tree: ast.Module) -> dict[str, dict]:
    """Fields of the ``@parameterNodeWrapper`` class: name -> {kind, validators, default}."""
    wrappers = [node for node in tree.body if isinstance(node, ast.ClassDef)
                and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list)]
    if not wrappers:
        return {}
    assert len(wrappers) == 1, "one parameter node class per module"
    names = constants(tree)
    fields = {}
    for item in wrappers[0].body:
        if not isinstance(item, ast.AnnAssign):
            continue
        annotation, validators = item.annotation, {}
        if isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value) == "Annotated":
            base, *metadata = annotation.slice.elts
            for call in metadata:
                validators[ast.unparse(call.func)] = [evaluate(arg, names) for arg in call.args]
            annotation = base
        text = ast.unparse(annotation)
        node_types = re.findall(r"vtkMRML\w+", text)
        if node_types and set(re.findall(r"\w+", text)) <= {*node_types, "Optional", "Union", "None"}:
            kind = "node"
        else:
            kind = {"bool": "bool", "int": "int", "float": "float", "str": "str", "pathlib.Path": "path",
                    "Path": "path"}.get(text, text)
        default = ast.literal_eval(item.value) if item.value is not None and kind != "node" else None
        fields[item.target.id] = {"kind": kind, "validators": validators, "default": default}
    return fields


def accepted_kinds(field: dict) -> set[str]:
    kind, validators = field["kind"], field["validators"]
    kinds = {kind}
    if "Choice" in validators:
        kinds.add(f"{kind}+choice")
    if "WithinRange" in validators or {"Minimum", "Maximum"} <= set(validators):
        kinds.add(f"{kind}+bounded")
    if kind in ("int", "float"):  # a bounded spin box is still a spin box
        kinds.add(kind)
    return kinds


@pytest.mark.parametrize("module", MODULES)
def test_ui_names_used_by_the_module_exist(module):
    """``self.ui.X`` is ``childWidgetVariables(loadUI(...))``: a name missing from the .ui is an AttributeError the
    first time that code path runs in Slicer."""
    used = panel_ui_attributes(module)
    assert used, f"{module}.py uses no self.ui attribute (did the widget code change?)"
    missing = sorted(used - set(named_objects(ui_xml(module))))
    assert missing == [], f"{module}.py uses self.ui.{missing} not in {ui_path(module).name}"


@pytest.mark.parametrize("module", MODULES)
def test_custom_widgets_are_declared(module):
    """Each non-Qt class used is declared (else Qt drops the widget), with Slicer's header naming and a base class
    that is Qt's own or another declared class; the root is a qMRMLWidget named after the module."""
    root = ui_xml(module)
    declared = {c.findtext("class"): c for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    undeclared = sorted(c for c in used if not c.startswith("Q") and c not in declared)
    assert undeclared == [], f"{module}.ui uses undeclared classes {undeclared}"
    for name, element in declared.items():
        assert element.findtext("header") == f"{name}.h"
        base = element.findtext("extends")
        assert base.startswith("Q") or base in declared, f"{name} extends unknown {base}"
    top = root.find("widget")
    assert (top.get("class"), top.get("name"), root.findtext("class")) == ("qMRMLWidget", module, module)


@pytest.mark.parametrize("module", MODULES)
def test_mrml_widgets_get_the_scene(module):
    """Every MRML widget receives the scene through the root's mrmlSceneChanged signal (uiWidget.setMRMLScene);
    a forgotten connection gives an empty node selector in Slicer, and no error."""
    root = ui_xml(module)
    mrml = {w.get("name") for w in root.iter("widget") if w.get("class") in MRML_WIDGETS}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == module and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml - connected == set(), f"{module}.ui: no scene for {sorted(mrml - connected)}"


@pytest.mark.parametrize("module", MODULES)
def test_parameter_bindings_match_the_parameter_node(module):
    """Each SlicerParameterName is a field of the module's @parameterNodeWrapper class, each field is bound, on a
    widget class Slicer can connect to that field's type, and each default satisfies its validators."""
    fields = parameter_fields(module_tree(module))
    bound = bindings(ui_xml(module))
    assert set(bound) == set(fields), f"bound {sorted(bound)} != fields {sorted(fields)}"
    for name, (widget, widget_class) in bound.items():
        field = fields[name]
        assert CONNECTORS.get(widget_class, set()) & accepted_kinds(field), (
            f"{module}.ui: {widget} ({widget_class}) cannot be connected to {name} ({field['kind']}, "
            f"{sorted(field['validators'])})")
        default, validators = field["default"], field["validators"]
        if "WithinRange" in validators and default is not None:
            low, high = validators["WithinRange"]
            assert low <= default <= high, f"{name} default {default} outside [{low}, {high}]"
        if "Choice" in validators and default is not None:
            assert default in validators["Choice"][0], f"{name} default {default!r} not a choice"


def test_model_selector_connector_exists():
    """ctkComboBox + str is not one of Slicer's own connectors: CADExtensionWidgets must register one for it, and
    the panels must import that package in ``setup``, before their ``connectGui``."""
    path = REPO / "CADExtension" / "CADExtensionWidgets" / "ModelSelector.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    connectors = [node for node in tree.body if isinstance(node, ast.ClassDef)
                  and any(ast.unparse(d) == "parameterNodeGuiConnector" for d in node.decorator_list)]
    assert connectors, f"no @parameterNodeGuiConnector class in {path.relative_to(REPO)}"
    can_represent = next(item for item in connectors[0].body if getattr(item, "name", "") == "canRepresent")
    assert "ctk.ctkComboBox" in ast.unparse(can_represent)
    package = (REPO / "CADExtension" / "CADExtensionWidgets" / "__init__.py").read_text(encoding="utf-8")
    assert connectors[0].name in package  # importing the package imports (and so registers) the connector
    for module in ("CADSegment", "CADClassify"):
        setup = next(node for node in ast.walk(module_tree(module)) if isinstance(node, ast.FunctionDef)
                     and node.name == "setup")
        assert any(isinstance(node, ast.Import) and node.names[0].name == "CADExtensionWidgets" for node in setup.body)


def test_panel_sections_are_checked_too():
    """The Improve model section's widgets are used from CADSegmentWidgets, not from CADSegment.py."""
    assert {"pairsTableWidget", "improveButton", "curvesLabel"} <= panel_ui_attributes("CADSegment") - ui_attributes(
        module_tree("CADSegment"))


def test_binding_checks_catch_mistakes():
    """The rules above are not vacuous: a QComboBox on a plain str (Slicer raises "requires the Choice
    annotation"), an unbounded float on a slider and a wrong node widget are all refused."""
    plain_str = {"kind": "str", "validators": {}, "default": ""}
    unbounded = {"kind": "float", "validators": {}, "default": 0.5}
    node = {"kind": "node", "validators": {}, "default": None}
    assert not CONNECTORS["QComboBox"] & accepted_kinds(plain_str)
    assert not CONNECTORS["ctkSliderWidget"] & accepted_kinds(unbounded)
    assert not CONNECTORS["QLineEdit"] & accepted_kinds(node)
    tree = ast.parse("DEVICES = ('a', 'b')\n@parameterNodeWrapper\nclass P:\n"
                     "    d: Annotated[str, Choice(list(DEVICES))] = 'a'\n"
                     "    v: Optional[Union[vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode]]\n")
    fields = parameter_fields(tree)
    assert fields["d"] == {"kind": "str", "validators": {"Choice": [["a", "b"]]}, "default": "a"}
    assert fields["v"]["kind"] == "node"


# --- real Qt -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qt():
    """PySide6 with an offscreen QApplication and a message handler collecting Qt's warnings."""
    os.environ["QT_QPA_PLATFORM"] = "offscreen"  # CI has no display; a local display is not needed either
    qtcore = pytest.importorskip("PySide6.QtCore", reason="PySide6 is not installed (pip install "
                                 "PySide6-Essentials==6.12.0, the 'dev' extra); the .ui files are not loaded")
    qtwidgets = pytest.importorskip("PySide6.QtWidgets")
    quitools = pytest.importorskip("PySide6.QtUiTools")
    app = qtwidgets.QApplication.instance() or qtwidgets.QApplication([])
    messages: list[str] = []
    previous = qtcore.qInstallMessageHandler(lambda mode, context, message: messages.append(message))
    yield {"core": qtcore, "uitools": quitools, "app": app, "messages": messages}
    qtcore.qInstallMessageHandler(previous)


def load(qt, data: bytes):
    """Load .ui bytes with a fresh QUiLoader; returns (widget, warnings)."""
    qt["messages"].clear()
    buffer = qt["core"].QBuffer()
    buffer.setData(qt["core"].QByteArray(data))
    buffer.open(qt["core"].QIODevice.ReadOnly)
    loader = qt["uitools"].QUiLoader()
    widget = loader.load(buffer)
    buffer.close()
    assert widget is not None, f"QUiLoader failed: {loader.errorString()}"
    return widget, list(qt["messages"])


def unexpected(warnings: list[str], declared: set[str]) -> list[str]:
    bad = []
    for message in warnings:
        match = next((m for m in (p.search(message) for p in EXPECTED_WARNINGS) if m), None)
        if match is None or (match.re is EXPECTED_WARNINGS[0] and match.group(1) not in declared):
            bad.append(message)
    return bad


@pytest.mark.parametrize("module", MODULES)
def test_ui_loads_with_qt(qt, module):
    """The file loads; no "unable to create a widget" nor any other unexpected warning; every name the module uses
    is a child of the loaded widget; the SlicerParameterName dynamic properties survive loading."""
    root = ui_xml(module)
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    widget, warnings = load(qt, ui_path(module).read_bytes())
    assert not [w for w in warnings if "unable to create a widget" in w], warnings
    assert unexpected(warnings, declared) == []
    qobject = qt["core"].QObject
    for name in panel_ui_attributes(module):
        assert widget.findChild(qobject, name) is not None, f"self.ui.{name}: no such child after loading"
    for parameter, (name, _class) in bindings(root).items():
        assert widget.findChild(qobject, name).property(PARAMETER) == parameter
    widget.deleteLater()


def test_undeclared_class_is_caught(qt):
    """Why the message handler: remove a <customwidget> declaration and Qt drops that widget with only a warning."""
    text = ui_path("CADSegment").read_text(encoding="utf-8")
    broken = re.sub(r"\s*<customwidget>\s*<class>ctkSliderWidget</class>.*?</customwidget>", "", text, flags=re.S)
    assert broken != text
    widget, warnings = load(qt, broken.encode("utf-8"))
    assert any("unable to create a widget of the class 'ctkSliderWidget'" in w for w in warnings)
    assert widget.findChild(qt["core"].QObject, "overlapSliderWidget") is None
    assert unexpected(warnings, {"ctkCollapsibleButton", "ctkComboBox", "qMRMLNodeComboBox", "qMRMLWidget"})
