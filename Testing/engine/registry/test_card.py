"""The typed model card: every shipped card reads, round-trips, and every bad field is one line naming the file and
the field; stages pick the right weights."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cadcore.cli import main
from cadcore.errors import CadError
from cadcore.registry.card import Inference, Stage
from cadcore.registry.card_reader import parse_card
from cadcore.registry.locations import SHIPPED_MODELS
from cadcore.registry.packages import find_model, read_card
from conftest import make_tiny_segmentation_package

SHIPPED = sorted(SHIPPED_MODELS.glob("*/model.json"))


@pytest.mark.parametrize("card_path", SHIPPED, ids=[p.parent.name for p in SHIPPED])
def test_shipped_cards_read_and_round_trip(card_path: Path):
    card = read_card(card_path.parent)
    assert card.to_dict() == json.loads(card_path.read_text())  # on disk nothing changes: format_version 1
    assert card.format_version == 1 and card.path == card_path
    if card.task == "segmentation":
        assert card.labels and card.main_stage.inference.patch_size
    else:
        assert card.class_names() and card.member_stages()


def test_the_card_is_read_only(tiny_model):
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny_model.card.id = "other"  # type: ignore[misc]
    copy = tiny_model.card.to_dict()
    copy["labels"][0]["name"] = "changed"
    assert tiny_model.card.labels[0].name == "anterior"  # to_dict is a copy, not a view


def edit(card: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        card = card[int(key)] if isinstance(card, list) else card[key]
    if value is DELETE:
        del card[last]
    elif isinstance(card, list):
        card[int(last)] = value
    else:
        card[last] = value


DELETE = object()
BAD_FIELDS = [
    ("id", DELETE, "lacks required fields: id"),
    ("task", "detection", "unknown task"),
    ("id", 7, "'id'"),
    ("format_version", 2, "'format_version'"),
    ("network", "DynUNet", "'network'"),
    ("network.params", [1], "'network.params'"),
    ("labels", {"1": "a"}, "'labels'"),
    ("labels.0.value", "one", "'labels[0].value'"),
    ("labels.0.color", [1, 2, 3], "'labels[0].color'"),
    ("labels.1.value", 1, "'labels' has repeated values"),
    ("preprocessing.spacing", [1.0, 0.0, 1.0], "'preprocessing.spacing'"),
    ("preprocessing.normalization", {"kind": "zscore"}, "'preprocessing.normalization'"),
    ("preprocessing.orientation", 3, "'preprocessing.orientation'"),
    ("inference.patch_size", [16, 16], "'inference.patch_size'"),
    ("inference.patch_size", DELETE, "'inference.patch_size' is missing"),
    ("inference.overlap", 1.5, "'inference.overlap'"),
    ("inference.sw_batch_size", 0, "'inference.sw_batch_size'"),
    ("fast", {"spacing": [2, 2]}, "'fast.spacing'"),
    ("fast", {"spacing": [2, 2, 2], "inference": {"overlap": 2}}, "'fast.inference.overlap'"),
    ("cascade", {"coarse": {"network": {"name": "DynUNet"}, "inference": {}}}, "'cascade.coarse.inference.patch_size'"),
    ("calibration", {"temperature": 0}, "'calibration.temperature'"),
    ("interactive", {"channels": ["positive", "image"]}, "'interactive.channels'"),
    ("interactive", {"channels": ["image", "positive", "negative"]}, "network takes 1"),
    ("interactive", {"kind": "square"}, "'interactive.kind'"),
]


@pytest.mark.parametrize(("field", "value", "words"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_a_bad_field_is_one_line_naming_the_card_and_the_field(tmp_path, capsys, tiny_model, field, value, words):
    card_path = tiny_model.folder / "model.json"
    card = json.loads(card_path.read_text())
    edit(card, field, value)
    card_path.write_text(json.dumps(card))
    assert main(["models", "show", str(tiny_model.folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(card_path) in err and words in err, err
    with pytest.raises(CadError) as raised:  # the library says the same as the command line
        parse_card(card, card_path)
    assert words in str(raised.value)


def test_stages_take_their_own_weights():
    state = {"a.w": torch.zeros(1), "fast.a.w": torch.ones(1), "fine.a.w": torch.full((1,), 3.0)}
    main_stage = Stage("main", {"name": "DynUNet"}, {}, Inference(), "", ("fast.",))
    assert set(main_stage.weights_of(state)) == {"a.w", "fine.a.w"}  # everything but the fast network's tensors
    fine = dataclasses.replace(main_stage, weight_prefix="fine.")
    assert list(fine.weights_of(state)) == ["a.w"] and float(fine.weights_of(state)["a.w"]) == 3.0


def test_ensemble_members_are_stages():
    card = parse_card({"id": "e", "version": "1", "task": "classification", "network": {"name": "ResNet"},
                            "classes": [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}],
                            "ensemble": {"members": ["m0", "m1"]}})
    assert [stage.weight_prefix for stage in card.member_stages()] == ["m0.", "m1."]


def test_fast_and_cascade_stages(tmp_path):
    package = make_tiny_segmentation_package(tmp_path / "tiny", fast={"spacing": [2, 2, 2],
                                                                      "inference": {"overlap": 0.1}})
    card = find_model(package.folder).card
    fast = card.fast_stage()
    assert fast.preprocessing["spacing"] == [2.0, 2.0, 2.0] and card.preprocessing["spacing"] == [1.0, 1.0, 1.0]
    assert fast.inference.overlap == 0.1 and fast.inference.patch_size == card.inference.patch_size
    assert fast.weight_prefix == "" and card.main_stage.foreign_prefixes == ()
    plain = make_tiny_segmentation_package(tmp_path / "tiny-plain").card
    with pytest.raises(CadError, match="names no fast resolution"):
        plain.fast_stage()


def test_shipped_cascade_stages():
    tumour = next((p for p in SHIPPED if p.parent.name == "brain-tumour-cascade"), None)
    if tumour is None:
        pytest.skip("brain-tumour-cascade is not shipped")
    card = read_card(tumour.parent)
    assert card.cascade is not None and card.cascade.coarse.weight_prefix == "coarse."
    written = json.loads(tumour.read_text())["cascade"]["coarse"]["inference"]
    assert card.main_stage.weight_prefix == "fine." and card.cascade.coarse.inference.overlap == written["overlap"]
