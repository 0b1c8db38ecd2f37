"""Guided networks (card section ``interactive``): the prompt maps are drawn on the network's working grid in
millimetres (also for an oblique, anisotropic input), stacked in the card's channel order, and ``cad interact`` runs a
guided package end to end on the input's exact grid, with flip TTA over the channel-first input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from cadcore.cli import main
from cadcore.preprocessing.working_space import prepare
from cadcore.registry.card import Interactive
from cadcore.registry.networks import build_network, dynunet_spec
from cadcore.registry.packages import save_package
from cadcore.segmentation.prompt_maps import click_map, guided_input, working_index
from conftest import TINY_LABELS

PREPROCESSING = {"orientation": "RAS", "spacing": [1.5, 1.5, 1.5], "normalization": {"kind": "mr"}}


def guided_package(folder, channels=("image", "positive", "negative", "previous")):
    import torch

    torch.manual_seed(0)
    spec = dynunet_spec(len(channels), 3, [4, 8, 16], [1, 2, 2])
    card = {"format_version": 1, "id": folder.name, "version": "0.0.1", "task": "segmentation", "network": spec,
            "labels": TINY_LABELS, "preprocessing": PREPROCESSING,
            "inference": {"patch_size": [16, 16, 16], "overlap": 0.25},
            "interactive": {"channels": list(channels), "kind": "gaussian", "radius_mm": 3.0},
            "training": {"config": {"mirror_axes": [0, 1]}}}
    return save_package(folder, card, build_network(spec).state_dict())


def ras_of(image: sitk.Image, index) -> tuple[float, float, float]:
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])
    return -x, -y, z


@pytest.mark.parametrize("kind", ["gaussian", "disk"])
def test_click_maps_sit_on_the_click_in_working_space(oblique_image, kind):
    working = prepare(oblique_image, PREPROCESSING)
    click = ras_of(oblique_image, (8, 10, 6))
    values = click_map(working, [click], Interactive(kind=kind, radius_mm=3.0))
    assert values.shape == working.array.shape and values.max() == pytest.approx(1.0, abs=0.2)
    if kind == "gaussian":
        peak = np.array(np.unravel_index(int(np.argmax(values)), values.shape))
        assert np.abs(peak - working_index(working, click)).max() <= 1.0  # the nearest voxel to the click
    spacing = np.array(working.grid.GetSpacing())
    if kind == "disk":  # every voxel within 3 mm, none beyond
        grids = np.indices(values.shape).reshape(3, -1).T
        distance = np.sqrt((((grids - working_index(working, click)) * spacing) ** 2).sum(1)).reshape(values.shape)
        assert (values[distance <= 2.9] == 1).all() and (values[distance >= 3.1] == 0).all()
    assert click_map(working, [], Interactive()).max() == 0


def test_channels_follow_the_cards_order(oblique_image):
    working = prepare(oblique_image, PREPROCESSING)
    click = ras_of(oblique_image, (8, 10, 6))
    spec = Interactive(channels=("image", "negative", "positive"))
    stacked = guided_input(working, spec, [click], [], None, PREPROCESSING)
    assert stacked.shape == (3, *working.array.shape)
    assert np.array_equal(stacked[0], working.array) and stacked[1].max() == 0 and stacked[2].max() > 0.8


def test_cad_interact_runs_a_guided_package_on_the_input_grid(tmp_path, oblique_image, capsys):
    package = guided_package(tmp_path / "tiny-guided")
    source = tmp_path / "oblique.nrrd"
    sitk.WriteImage(oblique_image, str(source))
    previous = sitk.Image(oblique_image.GetSize(), sitk.sitkUInt8)
    previous.CopyInformation(oblique_image)
    previous[8, 10, 6] = 1
    sitk.WriteImage(previous, str(tmp_path / "previous.nrrd"))
    click = ras_of(oblique_image, (8, 10, 6))
    output = tmp_path / "mask.seg.nrrd"
    code = main(["interact", str(source), "-m", str(package.folder), "-o", str(output), "--label", "1",
                 f"--click=+{click[0]},{click[1]},{click[2]}", "--previous", str(tmp_path / "previous.nrrd"),
                 "--uncertainty", str(tmp_path / "entropy.nii.gz"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    for written in (output, tmp_path / "entropy.nii.gz"):
        image = sitk.ReadImage(str(written))
        assert image.GetSize() == oblique_image.GetSize()
        assert np.allclose(image.GetDirection(), oblique_image.GetDirection(), atol=1e-6)
        assert np.allclose(image.GetOrigin(), oblique_image.GetOrigin(), atol=1e-4)
    assert json.loads((tmp_path / "mask.seg.nrrd.json").read_text())["prompts"]["previous"] is True


def test_a_guided_answer_under_a_negative_click_stands_where_a_plain_model_is_trimmed(tmp_path, oblique_image):
    """A plain model cannot weigh a "no", so the component under both kinds of click is split by nearest click; a
    guided network has read the negative click map, so its component is kept whole (splitting it cost 0.02-0.05 Dice
    at the second click of the hippocampus benchmark) and a warning says so."""
    from cadcore.segmentation.interactive import InteractiveSession, Prompts
    from conftest import make_tiny_segmentation_package

    labelled = np.zeros(oblique_image.GetSize(), bool)
    labelled[2:14, 4:16, 2:10] = True
    window = tuple(slice(0, n) for n in labelled.shape)
    prompts = Prompts(positive=(ras_of(oblique_image, (3, 8, 5)),), negative=(ras_of(oblique_image, (12, 8, 5)),))
    guided = InteractiveSession(guided_package(tmp_path / "guided"), oblique_image)
    mask, warnings = guided.select(labelled, prompts, window)
    assert np.array_equal(mask.astype(bool), labelled) and "negative click" in warnings[0]
    plain = InteractiveSession(make_tiny_segmentation_package(tmp_path / "plain"), oblique_image)
    mask, warnings = plain.select(labelled, prompts, window)
    assert mask[3, 8, 5] and not mask[12, 8, 5] and 0 < mask.sum() < labelled.sum() and not warnings
