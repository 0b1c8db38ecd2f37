"""The engine's DynUNet against MONAI's: the largest output difference over the parity tests' 17 parameter sets
(random weights, seeded) and the shipped DynUNet packages' stages (their weights). Run from the repository root:

    PYTHONPATH=CADExtension .venv/bin/python benchmarks/dynunet_parity.py
"""

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "CADExtension"), str(REPO / "Testing"), str(REPO / "Testing" / "engine" / "registry")]

import test_dynunet as cases  # noqa: E402  (the parity tests' parameter sets and weight randomiser)
from monai.networks.nets import DynUNet as MonaiDynUNet  # noqa: E402

from cadcore.registry import find_model  # noqa: E402
from cadcore.registry.architectures import build_network  # noqa: E402
from cadcore.registry.networks import load_network  # noqa: E402

SHIPPED = ("hippocampus-unet", "brain-tumour-cascade", "hippocampus-interactive", "brain-tumour-interactive")


def largest_difference(reference: torch.nn.Module, engine: torch.nn.Module, inputs: torch.Tensor) -> float:
    reference.eval()
    engine.eval()
    with torch.no_grad():
        return (reference(inputs) - engine(inputs)).abs().max().item()


def main() -> None:
    worst = 0.0
    for case, params in cases.CASES.items():
        torch.manual_seed(7)
        reference = MonaiDynUNet(**params)
        engine = build_network({"name": "DynUNet", "params": params})
        state = cases.randomised(reference, seed=len(case))
        reference.load_state_dict(state)
        engine.load_state_dict(state)
        size = [24] * 2 if params["spatial_dims"] == 2 else [32, 32, 16]
        inputs = torch.randn(2, params["in_channels"], *size, generator=torch.Generator().manual_seed(1))
        worst = max(worst, largest_difference(reference, engine, inputs))
    print(f"{len(cases.CASES)} parameter sets: max |engine - MONAI| = {worst}")
    for model in SHIPPED:
        card = find_model(model).card
        for stage in [card.main_stage] + ([card.cascade.coarse] if card.cascade else []):
            engine = load_network(find_model(model), stage)
            reference = MonaiDynUNet(**stage.network["params"])
            reference.load_state_dict(engine.state_dict())
            inputs = torch.randn(1, stage.network["params"]["in_channels"], 32, 32, 16,
                                 generator=torch.Generator().manual_seed(2))
            print(f"{model} {stage.role}: {type(engine).__module__}, max |engine - MONAI| = "
                  f"{largest_difference(reference, engine, inputs)}")


if __name__ == "__main__":
    main()
