"""The panel's "Fast (low resolution)" option: ``--fast`` in the segment argv, and the rule that enables the check box
only for models whose card names a fast resolution (``"fast": {"spacing": [x, y, z]}``), read from the model list."""

from __future__ import annotations

import json

import pytest
from CADExtensionLib.command import segmentArgv
from CADExtensionLib.models import ModelManagerLogic
from CADSegmentLib import SegmentationLogic, fastOption, fastSpacing

from conftest import make_tiny_segmentation_package

from .test_segmentation_logic import SlowRunner, add_volume, oblique_case


def test_segment_argv_passes_fast_before_force():
    assert segmentArgv("/py", "/w/in.nrrd", "/w/out.nrrd", "m", device="cpu", fast=True) == [
        "/py", "-m", "cadcore", "segment", "/w/in.nrrd", "-m", "m", "-o", "/w/out.nrrd", "--device", "cpu", "--fast",
        "--force"]
    assert "--fast" not in segmentArgv("/py", "in.nrrd", "out.nrrd", "m")


def test_fast_argv_is_accepted_by_the_engine_parser():
    from cadcore.cli.parser import build_parser

    parser = build_parser()
    args = parser.parse_args(segmentArgv("py", "in.nrrd", "out.nrrd", "m", useCascade=False, fast=True)[3:])
    assert (args.command, args.fast, args.no_cascade, args.force) == ("segment", True, True, True)
    assert parser.parse_args(segmentArgv("py", "in.nrrd", "out.nrrd", "m")[3:]).fast is False


@pytest.mark.parametrize(("model", "enabled", "tooltip"), [
    (None, False, "Select a model first."),
    ({"id": "slow"}, False, "Model 'slow' has no fast (low-resolution) mode: its model card names no 'fast'"),
    ({"id": "x", "fast": None}, False, "names no 'fast' resolution"),
    ({"id": "x", "fast": {"spacing": [2, 2]}}, False, "names no 'fast' resolution"),
    ({"id": "x", "fast": {"spacing": [2, 0, 2]}}, False, "names no 'fast' resolution"),
    ({"id": "x", "fast": {"spacing": [2, True, 2]}}, False, "names no 'fast' resolution"),
    ({"id": "x", "fast": {"network": {}}}, False, "names no 'fast' resolution"),
    ({"id": "quick", "fast": {"spacing": [3, 3, 4.5]}}, True, "low resolution (3 × 3 × 4.5 mm)"),
])
def test_fast_check_box_rule(model, enabled, tooltip):
    state, text = fastOption(model)
    assert state is enabled and tooltip in text


def test_the_model_list_carries_the_cards_fast_section(tmp_path):
    """The rule reads what the model list gives the panel: the card's ``fast`` section, or None."""
    user, shipped = tmp_path / "user", tmp_path / "shipped"
    shipped.mkdir()
    make_tiny_segmentation_package(user / "plain")
    make_tiny_segmentation_package(user / "quick", fast={"spacing": [2.0, 2.0, 3.0]})
    models = {entry.id: entry for entry in ModelManagerLogic(user, shipped).listModels()}
    assert models["plain"].fast is None and fastOption(models["plain"]) == (
        False, "Model 'plain' has no fast (low-resolution) mode: its model card names no 'fast' resolution.")
    assert models["quick"].fast == {"spacing": [2.0, 2.0, 3.0]} and fastSpacing(models["quick"]) == [2.0, 2.0, 3.0]
    assert fastOption(models["quick"])[0] is True
    card = json.loads((user / "quick" / "model.json").read_text())  # the card itself answers the same
    assert fastSpacing(card) == fastSpacing(models["quick"])


def test_shipped_model_cards_agree_with_the_rule(tmp_path):
    """Whatever the shipped cards say, listing them never fails and the rule gives a tooltip for each."""
    for entry in ModelManagerLogic(tmp_path / "no-user-models").listModels():
        enabled, text = fastOption(entry)
        assert text and enabled == (fastSpacing(entry) is not None)


def test_segmentation_logic_runs_the_engine_with_fast(mrml, tmp_path):
    volume = add_volume(oblique_case()[0], "case")
    runner = SlowRunner()
    logic = SegmentationLogic(runner=runner, temporaryFolder=tmp_path)
    logic.run(volume, model="quick", device="cpu", fast=True, wait=False)
    try:
        assert runner.engineArgv[-2:] == ["--fast", "--force"]
    finally:
        assert logic.cancel() is True
    logic.run(volume, model="quick", device="cpu", wait=False)
    try:
        assert "--fast" not in runner.engineArgv
    finally:
        logic.cancel()
