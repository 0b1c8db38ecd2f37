"""tools/convert_brainchop.py: tfjs MeshNets → packages, tensors equal to their sources, bad manifests refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from meshnet_fixtures import WEIGHTS, converter, write_tfjs

from conftest import require_shared, run_cad

SHIPPED = {"brain-mask": "mindgrab", "brain-structures": "model30chan18cls", "brain-tissue": "model20chan3cls",
           "brain-parcellation": "model21_104class"}


def _load(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_converted_tensors_equal_the_synthetic_source(tmp_path):
    source = tmp_path / "src" / "tiny"
    arrays = write_tfjs(source, dilations=(1, 2, 4), channels=4, classes=3)
    tool = converter()
    out = tool.convert(tool.Model("tiny-mesh", "tiny", "test", "MR", "fixture"), source.parent, tmp_path / "models")
    state = _load(out / "model.safetensors")
    assert sorted(state) == sorted(["layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias",
                                    "layers.2.weight", "layers.2.bias", "output.weight", "output.bias"])
    np.testing.assert_array_equal(state["layers.1.weight"], arrays["conv3d_1/kernel"].transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(state["output.weight"], arrays["output/kernel"].transpose(4, 3, 0, 1, 2))
    np.testing.assert_array_equal(state["output.bias"], arrays["output/bias"])
    card = json.loads((out / "model.json").read_text())
    assert card["network"]["params"] == {"channels": 4, "classes": 3, "dilations": [1, 2, 4], "activation": "elu",
                                         "norm": "none", "bias": True}
    assert card["labels"][0]["terminology"]["type"]["code"] == "5366008"  # Hippocampus: an obvious SNOMED code
    assert "training data not stated" in card["training"]["data"]
    assert "not stated" in (out / "MODEL_CARD.md").read_text()


def test_groupnorm_topology_reads_as_bias_free_instance_norm(tmp_path):
    source = tmp_path / "src" / "gn"
    write_tfjs(source, dilations=(2, 1), activation="gelu", groupnorm=True)
    tool = converter()
    layers, arrays = tool.read_tfjs(source)
    params, _ = tool.meshnet_params(layers, source / "model.json")
    assert params == {"channels": 3, "classes": 2, "dilations": [2, 1], "activation": "gelu", "norm": "instance",
                      "bias": False}


@pytest.mark.parametrize("damage, message", [
    ("missing_shard", "weight shard 'group1-shard1of1.bin' named by the manifest is missing"),
    ("short_shard", "hold 1348 bytes but the manifest describes 1352"),
    ("unexpected_tensor", "unexpected tensor 'conv3d_9/kernel' (not in the MeshNet topology)"),
])
def test_bad_manifests_are_refused_in_one_line(tmp_path, capsys, damage, message):
    source = tmp_path / "weights" / "brainchop" / "models" / "mindgrab"
    write_tfjs(source)
    shard, manifest = source / "group1-shard1of1.bin", source / "model.json"
    if damage == "missing_shard":
        shard.unlink()
    elif damage == "short_shard":
        shard.write_bytes(shard.read_bytes()[:-4])
    else:
        spec = json.loads(manifest.read_text())
        spec["weightsManifest"][0]["weights"].append({"name": "conv3d_9/kernel", "shape": [1], "dtype": "float32"})
        manifest.write_text(json.dumps(spec))
        shard.write_bytes(shard.read_bytes() + b"\0\0\0\0")
    out = tmp_path / "models"
    code = converter().main([str(tmp_path / "weights"), str(out), "--only", "brain-mask"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"convert_brainchop: error: {manifest}: ") and message in err
    assert not out.exists()  # nothing written


@pytest.mark.parametrize("model_id", sorted(SHIPPED))
def test_shipped_tensors_equal_the_published_arrays(model_id):
    folder = require_shared(WEIGHTS / "brainchop" / "models" / SHIPPED[model_id])
    from cadcore.registry.packages import find_model

    tool = converter()
    layers, arrays = tool.read_tfjs(folder)
    params, names = tool.meshnet_params(layers, folder / "model.json")
    package = find_model(model_id)
    assert package.card.network["params"] == params
    state = _load(package.weights_path)
    expected = tool.state_dict_of(arrays, names, params, folder)
    assert sorted(state) == sorted(expected)
    for name, array in expected.items():
        assert np.array_equal(state[name].view(np.uint32), array.view(np.uint32)), name
    sources = package.card.raw["training"]["source"]["files_sha256"]
    assert sources == {name: tool.sha256_of(folder / name) for name in sources}


@pytest.mark.parametrize("model_id", sorted(SHIPPED))
def test_cad_models_verify_passes_on_each_shipped_package(capsys, model_id):
    code, out, err = run_cad(capsys, "models", "verify", model_id)
    assert code == 0, err
    assert out.startswith(f"{model_id}: weights OK")
