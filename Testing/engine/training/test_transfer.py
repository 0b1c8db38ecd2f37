"""``cad train --init``: transfer learning from a model package (matching layers load, the rest re-initialise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from cadcore.cli import main
from cadcore.registry.packages import find_model
from conftest import make_tiny_classification_package, make_tiny_segmentation_package

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "sample_data" / "hippocampus"
TINY = ["--patch-size", "16,16,16", "--batch-size", "2", "--device", "cpu", "--val-every", "1", "--spacing", "2,2,2",
        "--val-fraction", "0.34", "--epochs", "1"]


def test_init_loads_matching_layers_and_records_the_parent(tmp_path, capsys):
    parent = make_tiny_segmentation_package(tmp_path / "parent", seed=7)
    output = tmp_path / "child"
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--init", str(parent.folder),
                 "--freeze-encoder-epochs", "1", *TINY]) == 0
    card = find_model(output).card.raw
    assert card["training"]["parent"]["parent"] == "parent"
    assert card["training"]["parent"]["parent_sha256"] == parent.card.raw["weights"]["sha256"]
    assert card["network"]["params"]["filters"] == parent.card.raw["network"]["params"]["filters"]
    report = json.loads((output / "init_report.json").read_text())
    assert report["loaded"] > 0 and report["reinitialised"] == []  # same label count: everything loads
    # the encoder was frozen for the only epoch: its weights are still the parent's
    child_state, parent_state = find_model(output).load_state_dict(), parent.load_state_dict()
    assert torch.equal(child_state["input_block.conv1.conv.weight"], parent_state["input_block.conv1.conv.weight"])
    assert not torch.equal(child_state["output_block.conv.conv.weight"], parent_state["output_block.conv.conv.weight"])


def test_init_with_another_label_set_reinitialises_the_output(tmp_path):
    parent = make_tiny_segmentation_package(tmp_path / "parent", seed=7)
    images = sorted((SAMPLES / "imagesTr").iterdir())
    spec = {"labels": {"0": "bg", "1": "only one"},
            "training": [{"image": str(p), "label": str(SAMPLES / "labelsTr" / p.name)} for p in images]}
    data = tmp_path / "binary"
    data.mkdir()
    for entry in spec["training"]:  # labels 1 and 2 merged into 1
        label = sitk.ReadImage(entry["label"]) > 0
        merged = data / Path(entry["label"]).name
        sitk.WriteImage(sitk.Cast(label, sitk.sitkUInt8), str(merged))
        entry["label"] = str(merged)
    (data / "dataset.json").write_text(json.dumps(spec))
    output = tmp_path / "child"
    assert main(["train", "--data", str(data), "-o", str(output), "--init", str(parent.folder), *TINY]) == 0
    report = json.loads((output / "init_report.json").read_text())
    assert set(report["reinitialised"]) == {"output_block.conv.conv.weight", "output_block.conv.conv.bias"}
    assert find_model(output).card.raw["network"]["params"]["out_channels"] == 2


def test_init_from_another_network_family_is_refused(tmp_path, capsys):
    parent = make_tiny_classification_package(tmp_path / "resnet")
    assert main(["train", "--data", str(SAMPLES), "-o", str(tmp_path / "c"), "--init", str(parent.folder), *TINY]) == 2
    err = capsys.readouterr().err
    assert "--init model is a classification ResNet" in err and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_strides_pool_in_plane_first_on_thick_slices_and_stay_isotropic_otherwise():
    from cadcore.registry.networks import strides_for

    assert strides_for([1.0, 1.0, 1.0], 4) == [1, 2, 2, 2]  # as every card written before this rule
    assert strides_for([0.7, 0.7, 1.2], 4) == [1, 2, 2, 2]  # mild anisotropy: unchanged
    assert strides_for(None, 3) == [1, 2, 2]
    # 6.5 mm slices at 0.86 mm in-plane: z is pooled only once in-plane voxels have caught up (3.44 x 2 >= 6.5)
    assert strides_for([0.86, 0.86, 6.5], 4) == [1, [2, 2, 1], [2, 2, 1], [2, 2, 2]]


def test_init_onto_thick_slices_takes_the_new_strides_and_reinitialises_only_the_upsampling(tmp_path):
    parent = make_tiny_segmentation_package(tmp_path / "parent", seed=7)
    assert parent.card.raw["network"]["params"]["strides"] == [1, 2, 2]
    output = tmp_path / "child"
    args = [arg if arg != "2,2,2" else "1,1,4" for arg in TINY]  # the same cases resampled to 4 mm slices
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--init", str(parent.folder), *args]) == 0
    params = find_model(output).card.raw["network"]["params"]
    assert params["strides"] == [1, [2, 2, 1], [2, 2, 2]] and params["upsample_kernel_size"] == params["strides"][1:]
    report = json.loads((output / "init_report.json").read_text())
    assert report["shape_mismatch"] and all("transp_conv" in name for name in report["shape_mismatch"])
    assert report["reinitialised"] and all("transp_conv" in name for name in report["reinitialised"])
    assert report["loaded"] > 0


def test_init_from_a_cascade_is_refused_before_training(tmp_path, capsys):
    from cadcore.registry.locations import SHIPPED_MODELS

    if not (SHIPPED_MODELS / "brain-tumour-cascade" / "model.json").exists():
        pytest.skip("brain-tumour-cascade is not shipped")
    output = tmp_path / "child"
    assert main(["train", "--data", str(SAMPLES), "-o", str(output), "--init", "brain-tumour-cascade", *TINY]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "cascade" in error[0] and "brain-tumour-cascade" in error[0]
    assert not output.exists()
