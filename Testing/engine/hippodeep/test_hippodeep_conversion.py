"""tools/convert_hippodeep.py: converted tensors equal the sources, and bad sources are refused in one line.

The refusals use tiny state dicts written here with ``torch.save`` (plain dicts of tensors, read back by the
converter only with ``weights_only=True``); the equality with the published weights needs ../shared/weights.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, SHARED_DATA, require_shared

WEIGHTS = SHARED_DATA.parent / "weights" / "hippodeep"
SHIPPED = REPO / "CADExtension" / "cadcore" / "models" / "hippocampus-whole-head"


@pytest.fixture(scope="module")
def converter():
    spec = importlib.util.spec_from_file_location("convert_hippodeep", REPO / "tools" / "convert_hippodeep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_sources(folder: Path, converter, extra: dict[str, torch.Tensor] | None = None) -> Path:
    """The three source files as the engine's own networks' state dicts (random weights), optionally with more."""
    from cadcore.registry.architectures import build_network

    torch.manual_seed(0)
    (folder / "torchparams").mkdir(parents=True)
    for prefix, (name, spec) in converter.SOURCES.items():
        state = dict(build_network(spec).state_dict())
        if prefix == "" and extra:
            state.update(extra)
        torch.save(state, folder / name)
    return folder


def refusal(converter, capsys, weights: Path, output: Path) -> str:
    assert converter.main([str(weights), str(output)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert not output.exists()  # nothing written
    return err


def test_synthetic_sources_convert_to_a_package_that_verifies(converter, tmp_path: Path):
    from safetensors.torch import load_file

    from cadcore.registry import find_model

    sources = synthetic_sources(tmp_path / "weights", converter)
    converter.convert(sources, tmp_path / "package")
    package = find_model(tmp_path / "package")
    package.verify()
    written = load_file(str(package.weights_path))
    for prefix, (name, _) in converter.SOURCES.items():
        for key, tensor in torch.load(sources / name, weights_only=True).items():
            assert torch.equal(written[prefix + key], tensor)
    assert json.loads((tmp_path / "package" / "model.json").read_text())["training"]["source"]["files"] == {
        name: converter.sha256_of(sources / name) for name, _ in converter.SOURCES.values()}


def test_unexpected_key_is_refused_in_one_line(converter, capsys, tmp_path: Path):
    sources = synthetic_sources(tmp_path / "weights", converter, extra={"surprise.weight": torch.zeros(3)})
    err = refusal(converter, capsys, sources, tmp_path / "package")
    assert "torchparams/hippodeep.pt" in err and "unexpected key(s)" in err and "surprise.weight" in err


def test_missing_file_is_refused_in_one_line(converter, capsys, tmp_path: Path):
    sources = synthetic_sources(tmp_path / "weights", converter)
    (sources / "torchparams" / "params_head_00075_00000.pt").unlink()
    err = refusal(converter, capsys, sources, tmp_path / "package")
    assert "params_head_00075_00000.pt" in err and "state dict not found" in err


def test_wrong_shape_and_non_tensor_pickles_are_refused(converter, capsys, tmp_path: Path):
    sources = synthetic_sources(tmp_path / "weights", converter, extra={"blur.weight": torch.zeros(1, 1, 5, 5, 5)})
    assert "blur.weight has shape [1, 1, 5, 5, 5]" in refusal(converter, capsys, sources, tmp_path / "package")
    torch.save({"conv0a.weight": [1, 2, 3]}, sources / "torchparams" / "hippodeep.pt")
    assert "not a state dict of tensors" in refusal(converter, capsys, sources, tmp_path / "package")


def test_shipped_tensors_equal_the_published_state_dicts(converter, tmp_path: Path):
    from cadcore.registry import find_model

    weights = require_shared(WEIGHTS)
    package = find_model("hippocampus-whole-head")
    state = package.load_state_dict()  # verified: sha256, header, shapes
    count = 0
    for prefix, (name, _) in converter.SOURCES.items():
        source = torch.load(weights / name, map_location="cpu", weights_only=True)
        for key, tensor in source.items():
            assert state[prefix + key].dtype == tensor.dtype and torch.equal(state[prefix + key], tensor), key
            count += 1
    assert count == len(state) == 125
    recorded = package.card.raw["training"]["source"]["files"]
    assert recorded == {name: converter.sha256_of(weights / name) for name, _ in converter.SOURCES.values()}
    # and the converter reproduces the shipped file byte for byte
    converter.convert(weights, tmp_path / "again")
    assert converter.sha256_of(tmp_path / "again" / "model.safetensors") == package.card.weights.sha256


def test_cad_models_verify_passes(capsys):
    from cadcore.cli import main

    assert main(["models", "verify", "hippocampus-whole-head"]) == 0
    assert "weights OK" in capsys.readouterr().out
    assert (SHIPPED / "model.safetensors").stat().st_size <= 20 * 1024 * 1024
