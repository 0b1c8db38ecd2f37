"""Calibrated probabilities: temperature scaling (Guo et al. 2017) and the expected calibration error.

CNN softmax outputs are over-confident; one temperature fitted on validation logits (minimising the negative
log-likelihood; :func:`cadcore.classification.ensemble.fit_averaged_temperature`, for the averaged prediction of
an ensemble with flips) fixes most of it without changing any prediction (argmax is invariant to T).
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width confidence bins on the predicted class's probability."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            error += in_bin.mean() * abs(float(correct[in_bin].mean()) - float(confidence[in_bin].mean()))
    return float(error)
