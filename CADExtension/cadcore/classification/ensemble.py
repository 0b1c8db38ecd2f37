"""CNN classifier predictions: one network or an ensemble of members, optionally with flip test-time augmentation.

Each member sees the input and its 7 axis flips (the same flips training used as augmentation); probabilities are
the mean of the temperature-scaled softmax over members × flips. On AdrenalMNIST3D's validation set, flip averaging
raised one ResNet-18's AUC from 0.853 to 0.874 (docs/benchmarks.md and the model card have the run).
Card keys: ``inference.tta`` ("flips" or absent) and ``ensemble.members`` (weight-key prefixes, e.g. ["m0", "m1"]).
"""

from __future__ import annotations

import numpy as np
import torch

from cadcore.classification.calibration import softmax
from cadcore.registry.card import Calibration
from cadcore.registry.networks import load_network
from cadcore.registry.packages import ModelPackage
from cadcore.segmentation.sliding_window import flip_sets

FLIPS: list[tuple[int, ...]] = flip_sets([2, 3, 4])  # every combination of the three spatial axes of (N, C, I, J, K)


def load_members(package: ModelPackage, device: torch.device) -> list[torch.nn.Module]:
    """The package's network(s), weights verified, in eval mode on ``device``."""
    state = package.load_state_dict()
    return [load_network(package, stage, device, state) for stage in package.card.member_stages()]


@torch.inference_mode()
def member_logits(members: list[torch.nn.Module], inputs: np.ndarray, device: torch.device, tta: bool,
                  batch: int = 64) -> np.ndarray:
    """Logits (members × flips, N, C) for inputs (N, C_in, I, J, K)."""
    flips = FLIPS if tta else [()]
    stacks = []
    for network in members:
        for flip in flips:
            outputs = []
            for start in range(0, len(inputs), batch):
                x = torch.from_numpy(np.ascontiguousarray(inputs[start:start + batch])).to(device)
                outputs.append(network(torch.flip(x, flip) if flip else x).float().cpu().numpy())
            stacks.append(np.concatenate(outputs))
    return np.stack(stacks)


def averaged_probabilities(logit_stack: np.ndarray, temperature: float = 1.0,
                           prior: list[float] | None = None) -> np.ndarray:
    """Mean over the first axis of softmax(logits / T): (N, C); with ``prior``, Bayes-corrected from the uniform
    prior that class-balanced sampling trains for to the real class frequencies (p_c ∝ p_c · C · prior_c)."""
    probabilities = np.mean([softmax(logits, temperature) for logits in logit_stack], axis=0)
    if prior is not None:
        probabilities = probabilities * np.asarray(prior, dtype=np.float64) * probabilities.shape[1]
        probabilities /= probabilities.sum(axis=1, keepdims=True)
    return probabilities


def fit_averaged_temperature(logit_stack: np.ndarray, labels: np.ndarray, prior: list[float] | None = None) -> float:
    """The temperature minimising the NLL of the averaged probabilities (1-D search; robust and exact enough)."""
    temperatures = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    rows = np.arange(len(labels))
    losses = [-np.mean(np.log(averaged_probabilities(logit_stack, t, prior)[rows, labels] + 1e-12))
              for t in temperatures]
    return float(temperatures[int(np.argmin(losses))])


def cnn_probabilities(package: ModelPackage, inputs: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated, uncalibrated) probabilities (N, C) as the card prescribes (members, TTA, temperature)."""
    members = load_members(package, device)
    stack = member_logits(members, inputs, device, package.card.inference.tta == "flips")
    return calibrated_probabilities(stack, package.card.calibration)


def calibrated_probabilities(logit_stack: np.ndarray, calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated, uncalibrated) probabilities (N, C): the card's temperature and class prior, and neither."""
    prior = list(calibration.prior) if calibration.prior else None
    return (averaged_probabilities(logit_stack, calibration.temperature, prior),
            averaged_probabilities(logit_stack))
