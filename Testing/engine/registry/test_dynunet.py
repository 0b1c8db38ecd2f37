"""The engine's DynUNet against MONAI's, its reference: same state-dict keys and shapes (aliases included), same
eval-mode outputs with the same (random) weights, same initial weights under a seed; the shipped packages load into
it and give MONAI's outputs; parameters it does not reproduce (and training) get MONAI's class; and building and
loading a shipped package imports no MONAI at all (the point: ``cad segment``'s start-up, issue 19)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DynUNet as MonaiDynUNet

from cadcore.errors import CadError
from cadcore.registry.architectures import build_network, meta_shapes, stages_of
from cadcore.registry.dynunet import DynUNet, engine_supports
from cadcore.registry.networks import load_network, load_weights
from cadcore.registry.packages import find_model

ENGINE = Path(__file__).resolve().parents[3] / "CADExtension"
MODELS = ENGINE / "cadcore" / "models"
SHIPPED = ("hippocampus-unet", "brain-tumour-cascade", "hippocampus-interactive", "brain-tumour-interactive")


def card_params(model: str, field: str = "network") -> dict:
    card = json.loads((MODELS / model / "model.json").read_text())
    for key in field.split("."):
        card = card[key]
    assert card["name"] == "DynUNet"
    return dict(card["params"])


BASE = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "kernel_size": [3, 3, 3, 3],
        "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2], "filters": [4, 8, 16, 16]}
DEFAULTS = {key: BASE[key] for key in ("spatial_dims", "in_channels", "out_channels", "kernel_size", "strides",
                                       "upsample_kernel_size")}  # filters 32-320, MONAI's norm and activation
ANISOTROPIC = {**BASE, "kernel_size": [[3, 3, 1], 3, [3, 3, 1], 3], "strides": [1, [2, 2, 1], [2, 2, 1], 2],
               "upsample_kernel_size": [[2, 2, 1], [2, 2, 1], 2]}
CASES = {
    "hippocampus-unet": card_params("hippocampus-unet"),
    "tumour-fine": card_params("brain-tumour-cascade"),
    "tumour-coarse": card_params("brain-tumour-cascade", "cascade.coarse.network"),
    "hippocampus-interactive": card_params("hippocampus-interactive"),
    "interactive-3-channel": {**card_params("hippocampus-interactive"), "in_channels": 3},
    "res-block": {**BASE, "res_block": True, "norm_name": "instance"},
    "res-block-same-width": {**BASE, "res_block": True, "filters": [4, 8, 8, 8], "strides": [1, 2, 1, 2],
                             "upsample_kernel_size": [2, 1, 2]},
    "anisotropic": ANISOTROPIC,
    "anisotropic-res": {**ANISOTROPIC, "res_block": True},
    "deep-supervision": {**BASE, "deep_supervision": True, "deep_supr_num": 2, "norm_name": "instance"},
    "batch-norm": {**BASE, "norm_name": "batch"},
    "batch-norm-tuple": {**BASE, "norm_name": ["BATCH", {"affine": False}], "res_block": True},
    "trans-bias": {**BASE, "trans_bias": True},
    "defaults": DEFAULTS,
    "input-stride-5-levels": {**BASE, "kernel_size": [3] * 5, "strides": [2, 2, 2, 1, 2],
                              "upsample_kernel_size": [2, 2, 1, 2], "filters": [4, 8, 8, 16, 16, 99]},
    "act-tuple-dropout-0": {**BASE, "act_name": ("LeakyReLU", {"negative_slope": 0.2}), "dropout": 0.0},
    "2d": {**BASE, "spatial_dims": 2, "res_block": True},
}


def randomised(network: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every tensor (norm statistics too, variances positive), so no layer is an identity."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, tensor in network.state_dict().items():
        if not tensor.is_floating_point():
            state[name] = tensor
            continue
        values = torch.randn(tensor.shape, generator=generator) * 0.3
        state[name] = values.abs() + 0.5 if name.endswith("running_var") else values
    return state


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_state_dict_and_eval_outputs_as_monai(case: str) -> None:
    params = CASES[case]
    assert engine_supports(params)
    torch.manual_seed(7)
    reference = MonaiDynUNet(**params)
    torch.manual_seed(7)
    engine = build_network({"name": "DynUNet", "params": params})
    assert type(engine) is DynUNet
    expected, own = reference.state_dict(), engine.state_dict()
    assert list(own) == list(expected)  # same names (skip_layers aliases included), same order
    assert all(own[name].shape == expected[name].shape and torch.equal(own[name], expected[name]) for name in own)
    assert any("skip_layers.next_layer" in name for name in own)
    if params.get("deep_supervision"):
        assert any(name.startswith("deep_supervision_heads.") for name in own)
        assert any(".super_head." in name for name in own)

    state = randomised(reference, seed=len(case))
    reference.load_state_dict(state)
    engine.load_state_dict(state)
    reference.eval()
    engine.eval()
    size = [24] * params["spatial_dims"] if params["spatial_dims"] == 2 else [32, 32, 16]
    inputs = torch.randn(2, params["in_channels"], *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = reference(inputs), engine(inputs)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert want.std() > 1e-3  # the comparison is not between two constants


@pytest.mark.parametrize("model", SHIPPED)
def test_shipped_packages_load_into_the_engine_class_with_monai_outputs(model: str) -> None:
    package = find_model(MODELS / model)
    package.verify()  # the weights-fit check builds the engine's class on the meta device
    state = package.load_state_dict()
    for _, stage in stages_of(package.card):
        network = load_network(package, stage, state=state)
        assert type(network) is DynUNet and not network.training
        reference = MonaiDynUNet(**stage.network["params"])
        load_weights(reference, stage.weights_of(state))
        reference.eval()
        inputs = torch.randn(1, stage.network["params"]["in_channels"], 48, 48, 32,
                             generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            want, got = reference(inputs), network(inputs)
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        assert torch.equal(got.argmax(1), want.argmax(1))


def test_meta_shapes_keeps_the_aliases_as_one_group() -> None:
    """check_weights_fit reads aliased names as one tensor: the engine's class must share storage like MONAI's."""
    groups = meta_shapes({"name": "DynUNet", "params": CASES["hippocampus-unet"]}, "network", None)
    by_name = {name: group for group in groups for name, _ in group}
    assert {name for name, _ in by_name["input_block.conv1.conv.weight"]} == {
        "input_block.conv1.conv.weight", "skip_layers.downsample.conv1.conv.weight"}
    assert by_name["bottleneck.conv2.conv.weight"][0][1] == (128, 128, 3, 3, 3)


UNSUPPORTED = {
    "prelu": {**BASE, "act_name": "prelu"},
    "dropout": {**BASE, "dropout": 0.2},
    "group-norm": {**BASE, "norm_name": ("group", {"num_groups": 2})},
    "instance-norm-eps": {**BASE, "norm_name": ("instance", {"eps": 1e-3})},
    "unknown-key": {**BASE, "something": 1},
    "longer-upsample-list": {**BASE, "upsample_kernel_size": [2, 2, 2, 2]},
    "one-dimension": {**BASE, "spatial_dims": 1},
    "string-res-block": {**BASE, "res_block": "yes"},
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_parameters_it_does_not_reproduce_get_monai_class(case: str) -> None:
    params = UNSUPPORTED[case]
    assert not engine_supports(params)
    with pytest.raises((ValueError, TypeError)):
        DynUNet(**params)  # the class itself refuses too: it never builds an approximation
    if case == "unknown-key":  # MONAI refuses it too: the card's error stays MONAI's, as before
        with pytest.raises(CadError):
            build_network({"name": "DynUNet", "params": params})
        return
    assert isinstance(build_network({"name": "DynUNet", "params": params}), MonaiDynUNet)


def test_training_gets_monai_class_and_nonsense_keeps_monai_error() -> None:
    spec = {"name": "DynUNet", "params": CASES["hippocampus-unet"]}
    assert isinstance(build_network(spec, for_training=True), MonaiDynUNet)
    assert type(build_network(spec)) is DynUNet
    with pytest.raises(CadError, match="length of filters"):
        build_network({"name": "DynUNet", "params": {**BASE, "filters": [4, 8]}})


def test_building_and_loading_a_package_imports_no_monai(tmp_path: Path) -> None:
    script = f"""
import sys
from cadcore.registry.architectures import build_network
from cadcore.registry.networks import load_network
from cadcore.registry.packages import find_model
package = find_model({str(MODELS / "hippocampus-unet")!r})
network = build_network(package.card.main_stage.network)
loaded = load_network(package, package.card.main_stage)
print(type(network).__module__, type(loaded).__module__)
print(sorted(name for name in sys.modules if name == "monai" or name.startswith("monai.")))
"""
    environment = {**os.environ, "PYTHONPATH": str(ENGINE)}
    environment.pop("CAD_FULL_MONAI", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                            cwd=tmp_path, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    modules, monai = result.stdout.splitlines()
    assert modules == "cadcore.registry.dynunet cadcore.registry.dynunet"
    assert monai == "[]"
