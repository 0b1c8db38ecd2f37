"""Static checks of the CAD AI Segment Editor effect (AST only: the effect needs the Slicer application to import).

What they prove: every call on ``scriptedEffect`` exists in Slicer's effect adaptor API (a misspelt
``modifySelectedSegmentByLabelmap`` would otherwise fail only in a user's hands), every parameter the effect reads
has a default, every widget and slot it uses is created and defined, the write goes through the adaptor's undo and
masking path and never around it, and ``CADSegment`` registers the file that exists. What they do not prove: that
the effect works in Slicer; the in-Slicer test (CADSegment/Testing/Python/SegmentEditorCADAIEffectTest.py) and the
MRML tests of ``PromptLogic`` (the write path on the real ``vtkSlicerSegmentEditorLogic``) cover that.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EFFECT = REPO / "CADSegment" / "CADSegmentEffects" / "SegmentEditorEffect.py"
MODULE = REPO / "CADSegment" / "CADSegment.py"

# Read from Slicer's Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorAbstractEffect.h (Slicer main,
# 2026): the Q_INVOKABLE methods, slots and Q_PROPERTYs Python reaches on an effect's ``scriptedEffect``, plus
# qSlicerSegmentEditorScriptedEffect's own ``setPythonSource``/``self``.
ADAPTOR_API = {
    # properties
    "name", "title", "perSegment", "requireSegments", "showEffectCursorInSliceView", "showEffectCursorInThreeDView",
    "captureMouseMoveEventsInSliceView", "captureMouseMoveEventsInThreeDView",
    # invokables and slots
    "helpText", "activate", "deactivate", "active", "modifySelectedSegmentByLabelmap", "modifySegmentByLabelmap",
    "applyImageMask", "createCursor", "cleanup", "updateGUIFromMRML", "updateMRMLFromGUI", "parameterSetNode",
    "setParameterSetNode", "scene", "optionsFrame", "optionsLayout", "addActor2D", "removeActor2D", "addActor3D",
    "removeActor3D", "addOptionsWidget", "addLabeledOptionsWidget", "cursorOff", "cursorOn", "selectEffect",
    "parameter", "integerParameter", "doubleParameter", "nodeReference", "setParameter", "setParameterDefault",
    "setCommonParameter", "setCommonParameterDefault", "setNodeReference", "setCommonNodeReference",
    "parameterDefined", "commonParameterDefined", "confirmCurrentSegmentVisible", "modifierLabelmap",
    "defaultModifierLabelmap", "maskLabelmap", "selectedSegmentLabelmap", "referenceGeometryImage",
    "sourceVolumeImageData", "masterVolumeImageData", "saveStateForUndo", "renderWindow", "renderer", "viewNode",
    "rasToXy", "xyzToRas", "xyToRas", "xyzToIjk", "xyToIjk", "forceRender", "scheduleRender", "sliceSpacing",
    "segmentationDisplayableInView",
    # qSlicerSegmentEditorScriptedEffect
    "setPythonSource", "pythonSource", "self",
}
# Methods of AbstractScriptedSegmentEditorEffect an effect overrides (Slicer's effect template and the docs).
REQUIRED_METHODS = {"__init__", "clone", "icon", "helpText", "setupOptionsFrame", "setMRMLDefaults",
                    "updateGUIFromMRML", "updateMRMLFromGUI", "activate", "deactivate", "cleanup",
                    "processInteractionEvents"}


@pytest.fixture(scope="module")
def effect_class() -> ast.ClassDef:
    tree = ast.parse(EFFECT.read_text(encoding="utf-8"), str(EFFECT))
    compile(tree, str(EFFECT), "exec")  # the file loads (syntax) the way Slicer's setPythonSource will read it
    found = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SegmentEditorEffect"]
    assert found, "Slicer looks for the class named like the file: SegmentEditorEffect"
    return found[0]


def scripted_effect_uses(node: ast.AST) -> list[tuple[str, int]]:
    """(attribute, line) of every ``self.scriptedEffect.X`` and ``scriptedEffect.X`` in the code."""
    uses = []
    for item in ast.walk(node):
        if isinstance(item, ast.Attribute) and ast.unparse(item.value) in ("self.scriptedEffect", "scriptedEffect"):
            uses.append((item.attr, item.lineno))
    return uses


def test_effect_class_follows_the_template(effect_class):
    assert {ast.unparse(base) for base in effect_class.bases} == {"AbstractScriptedSegmentEditorEffect"}
    defined = {item.name for item in effect_class.body if isinstance(item, ast.FunctionDef)}
    assert REQUIRED_METHODS <= defined, f"missing: {sorted(REQUIRED_METHODS - defined)}"
    clone = next(item for item in effect_class.body if isinstance(item, ast.FunctionDef) and item.name == "clone")
    assert "setPythonSource(__file__" in ast.unparse(clone)
    assert (EFFECT.parent / "SegmentEditorEffect.png").is_file(), "icon() names a file that is not there"


def test_every_scripted_effect_call_exists_in_slicers_api(effect_class):
    unknown = [f"line {line}: scriptedEffect.{name}" for name, line in scripted_effect_uses(effect_class)
               if name not in ADAPTOR_API]
    assert unknown == []


def test_the_write_goes_through_undo_and_masking(effect_class):
    """The write step saves the undo state, then modifies through the adaptor (masking, overwrite, intensity range);
    nothing in the effect writes segments around it."""
    source = ast.unparse(effect_class)
    write = next(item for item in effect_class.body if isinstance(item, ast.FunctionDef) and item.name == "_write")
    calls = [name for name, _ in scripted_effect_uses(write)]
    assert calls[:2] == ["saveStateForUndo", "modifySelectedSegmentByLabelmap"]
    assert "bypassMasking" not in ast.unparse(write) and "True" not in ast.unparse(write)
    for forbidden in ("updateSegmentBinaryLabelmapFromArray", "SetBinaryLabelmapToSegment", "ImportLabelmapTo"):
        assert forbidden not in source


def test_every_parameter_read_has_a_default(effect_class):
    def names(method: str) -> set[str]:
        return {node.args[0].value for node in ast.walk(effect_class) if isinstance(node, ast.Call)
                and ast.unparse(node.func) == f"self.scriptedEffect.{method}"
                and node.args and isinstance(node.args[0], ast.Constant)}

    read = names("parameter") | names("integerParameter") | names("doubleParameter")
    assert read, "the effect reads no parameter?"
    assert read <= names("setParameterDefault"), f"no default for {sorted(read - names('setParameterDefault'))}"
    assert read <= names("setParameter"), "a parameter the GUI never writes"


def test_widgets_and_slots_exist(effect_class):
    """Every ``self.X`` the effect reads is assigned somewhere in the class or is a method; every ``connect`` slot
    is a method of the class."""
    methods = {item.name for item in effect_class.body if isinstance(item, ast.FunctionDef)}
    assigned = set()
    for node in ast.walk(effect_class):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            for item in ast.walk(target):
                if isinstance(item, ast.Attribute) and ast.unparse(item.value) == "self":
                    assigned.add(item.attr)
    read = {node.attr for node in ast.walk(effect_class) if isinstance(node, ast.Attribute)
            and ast.unparse(node.value) == "self" and isinstance(node.ctx, ast.Load)}
    assert read - assigned - methods - {"scriptedEffect"} == set()
    setup = next(item for item in effect_class.body if isinstance(item, ast.FunctionDef)
                 and item.name == "setupOptionsFrame")
    created = {item.attr for node in ast.walk(setup) if isinstance(node, ast.Assign) for target in node.targets
               for item in ast.walk(target) if isinstance(item, ast.Attribute) and ast.unparse(item.value) == "self"}
    gui = next(item for item in effect_class.body if isinstance(item, ast.FunctionDef)
               and item.name == "updateGUIFromMRML")
    widgets = {node.attr for node in ast.walk(gui) if isinstance(node, ast.Attribute)
               and ast.unparse(node.value) == "self" and node.attr.endswith(("Selector", "CheckBox", "Slider",
                                                                             "Buttons", "Button"))}
    assert widgets and widgets <= created, f"updateGUIFromMRML uses widgets setupOptionsFrame never makes: " \
                                           f"{sorted(widgets - created)}"
    slots = [node.args[1] for node in ast.walk(effect_class) if isinstance(node, ast.Call)
             and ast.unparse(node.func).endswith(".connect") and len(node.args) == 2]
    for slot in slots:
        text = ast.unparse(slot)
        assert text.startswith("self.") and text.removeprefix("self.") in methods, f"slot {text} is not a method"


def test_glue_names_the_effect_imports_exist(effect_class):
    """``from CADSegmentLib.X import a, b`` inside the effect names functions that module defines."""
    tree = ast.parse(EFFECT.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("CADSegmentLib."):
            path = REPO / "CADSegment" / (node.module.replace(".", "/") + ".py")
            assert path.is_file(), node.module
            defined = {item.name for item in ast.parse(path.read_text()).body
                       if isinstance(item, (ast.FunctionDef, ast.ClassDef))}
            defined |= {target.id for item in ast.parse(path.read_text()).body if isinstance(item, ast.Assign)
                        for target in item.targets if isinstance(target, ast.Name)}
            defined |= {elt.id for item in ast.parse(path.read_text()).body if isinstance(item, ast.Assign)
                        for target in item.targets if isinstance(target, ast.Tuple) for elt in target.elts
                        if isinstance(elt, ast.Name)}
            defined |= {alias.asname or alias.name for item in ast.parse(path.read_text()).body
                        if isinstance(item, ast.ImportFrom) for alias in item.names}  # re-exported names
            missing = {alias.name for alias in node.names} - defined
            assert not missing, f"{node.module} has no {sorted(missing)}"


def test_cadsegment_registers_the_effect_at_startup():
    """Template pattern: ``startupCompleted()`` → a function that loads this file into a scripted effect and
    registers it."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    connects = {ast.unparse(node.args[1]) for node in ast.walk(tree) if isinstance(node, ast.Call)
                and ast.unparse(node.func) == "slicer.app.connect" and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "startupCompleted()"}
    assert "registerCADAIEffect" in connects
    register = next(node for node in tree.body if isinstance(node, ast.FunctionDef)
                    and node.name == "registerCADAIEffect")
    text = ast.unparse(register)
    assert "qSlicerSegmentEditorScriptedEffect(None)" in text and ".self().register()" in text
    joined = [node for node in ast.walk(register) if isinstance(node, ast.Call)
              and ast.unparse(node.func) == "os.path.join"]
    parts = [arg.value for arg in joined[0].args if isinstance(arg, ast.Constant)]
    assert (MODULE.parent.joinpath(*parts)) == EFFECT and EFFECT.is_file()


def test_server_setting_keys_agree():
    """The settings panel (CADExtension.py, Qt) and the effect's engine choice (glue) read the same QSettings keys."""
    def constants(path: Path) -> dict[str, str]:
        return {target.id: node.value.value for node in ast.parse(path.read_text()).body
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                for target in node.targets if isinstance(target, ast.Name)}

    panel = constants(REPO / "CADExtension" / "CADExtension.py")
    glue = constants(REPO / "CADExtension" / "CADExtensionLib" / "engine_server.py")
    for key in ("SERVER_URL_SETTING", "SERVER_TOKEN_FILE_SETTING"):
        assert panel[key] == glue[key]


def test_effect_calls_prompt_logic_with_its_real_parameters(effect_class):
    """The effect's ``self.logic.run(...)`` keywords are parameters of ``PromptLogic.run`` (read from its source, so
    a renamed parameter fails here rather than in a user's Segment Editor)."""
    logic = ast.parse((REPO / "CADSegment" / "CADSegmentLib" / "PromptLogic.py").read_text())
    run = next(node for node in ast.walk(logic) if isinstance(node, ast.FunctionDef) and node.name == "run")
    parameters = {arg.arg for arg in run.args.args + run.args.kwonlyargs}
    calls = [node for node in ast.walk(effect_class) if isinstance(node, ast.Call)
             and ast.unparse(node.func) == "self.logic.run"]
    assert calls
    for call in calls:
        assert {keyword.arg for keyword in call.keywords} <= parameters
        assert len(call.args) <= len(run.args.args) - 1
    engine = ast.parse((REPO / "CADSegment" / "CADSegmentLib" / "PromptEngine.py").read_text())
    prompt_logic = next(node for node in ast.walk(engine) if isinstance(node, ast.FunctionDef)
                        and node.name == "promptLogic")
    assert "writer" in {arg.arg for arg in prompt_logic.args.args}
