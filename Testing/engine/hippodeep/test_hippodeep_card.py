"""The hippodeep card section: the shipped card reads into typed options, every impossible value is refused in one
line naming ``pipeline.<field>``, the networks build on the meta device and compute what their shapes promise."""

from __future__ import annotations

import copy
import json

import pytest
import SimpleITK as sitk
import torch

from cadcore.errors import CadError
from conftest import REPO

CARD = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-whole-head" / "model.json"


@pytest.fixture(scope="module")
def card_data() -> dict:
    return json.loads(CARD.read_text())


def parse(data: dict):
    from cadcore.registry.card_reader import parse_card

    return parse_card(data, CARD)


def test_shipped_card_reads_into_typed_options(card_data):
    from cadcore.registry.hippodeep_card import HippodeepOptions

    card = parse(card_data)
    options = card.pipeline.options
    assert isinstance(options, HippodeepOptions)
    assert options.side_shape() == (48, 72, 64) and options.crop_shape == (107, 72, 68)
    assert {stage.role: stage.weight_prefix for stage in card.pipeline.stages} == {"head": "head.",
                                                                                   "affine": "affine."}
    assert [label.name for label in card.labels] == ["Left hippocampus", "Right hippocampus"]


@pytest.mark.parametrize("field, value, problem", [
    ("head_grid", 60, "multiple of 16"),
    ("head_grid", "64", "must be an integer"),
    ("template_spacing", [2.8, 3.4], "list of 3 numbers"),
    ("template_spacing", [2.8, 0.0, 2.8], "must be positive"),
    ("crop_shape", [107, 72.5, 68], "list of 3 integers"),
    ("crop_shape", [107, 72, 0], "must be positive"),
    ("crop_trim", [0, 0, 3], "multiple of 4"),
    ("crop_trim", [0, -1, 2], "must not be negative"),
    ("side_width", 60, "would overlap"),
    ("side_width", 200, "between 1 and 107"),
    ("noise_floor", 1.5, "between 0 and 1"),
    ("label_threshold", 0.05, "below noise_floor"),
    ("brain_threshold", float("nan"), "must be a number"),
    ("crop_origin_ras", None, "list of 3 numbers"),
    ("crop_spacing", True, "must be a number"),
    ("croppp", 1, "is not a hippodeep option"),
])
def test_bad_options_are_refused_in_one_line_naming_the_field(card_data, field, value, problem):
    data = copy.deepcopy(card_data)
    data["pipeline"][field] = value
    with pytest.raises(CadError) as refused:
        parse(data)
    message = str(refused.value)
    assert f"'pipeline.{field}'" in message and problem in message and "\n" not in message
    assert message.startswith(str(CARD))


def test_a_missing_option_is_refused(card_data):
    data = copy.deepcopy(card_data)
    del data["pipeline"]["template_origin_ras"]
    with pytest.raises(CadError, match=r"'pipeline.template_origin_ras'.*list of 3 numbers"):
        parse(data)


def test_pipeline_without_its_head_network_is_refused_before_any_computation(card_data, tmp_path):
    from cadcore.registry.packages import ModelPackage
    from cadcore.segmentation.hippodeep_pipeline import segment

    data = copy.deepcopy(card_data)
    del data["pipeline"]["networks"]["head"]
    package = ModelPackage(tmp_path, parse(data))  # no weights needed: refused first
    with pytest.raises(CadError, match=r"pipeline.networks: hippodeep needs the networks head, affine \(missing head"):
        segment(sitk.Image([16, 16, 16], sitk.sitkFloat32), package, torch.device("cpu"))


def test_a_2d_image_is_refused_in_one_line(card_data):
    from cadcore.registry import find_model
    from cadcore.segmentation.predict import segment_image

    with pytest.raises(CadError, match="needs one scalar 3D volume"):
        segment_image(sitk.Image([64, 64], sitk.sitkFloat32), find_model("hippocampus-whole-head"), device="cpu")


def test_networks_build_on_meta_and_give_the_documented_shapes():
    from cadcore.registry.hippodeep_networks import HippodeepAffine, HippodeepHead, HippodeepHippo

    with torch.device("meta"):
        # the published state dict holds 499,179 numbers: these parameters and 194 batch-norm statistics
        assert sum(p.numel() for p in HippodeepHippo().parameters()) == 498_985
    torch.manual_seed(0)
    with torch.inference_mode():
        assert HippodeepHead()(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 4, 16, 16, 16)
        matrix = HippodeepAffine(grid_size=16)(torch.zeros(1, 2, 16, 16, 16))
        assert matrix.shape == (1, 4, 4) and torch.equal(matrix[0, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]))
        assert HippodeepHippo()(torch.zeros(2, 1, 12, 20, 16)).shape == (2, 1, 8, 16, 12)
    with pytest.raises(ValueError, match="multiple of 16"):
        HippodeepAffine(grid_size=40)
