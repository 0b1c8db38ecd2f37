"""MeshNet: a stack of dilated 3×3×3 convolutions at full resolution, then a 1×1×1 convolution to the classes.

Written from the published TensorFlow.js topologies (brainchop's ``model.json``): every hidden layer is a
``Conv3D`` with ``padding="same"``, stride 1 and a dilation rate, followed by an ``Activation`` (ELU, ReLU or GELU);
batch norm is already folded into those weights. MindGrab's exporter marks its layers ``conv3d_<i>_gn``: bias-free
convolutions each followed by a GroupNorm with one group per channel and no affine parameters (an instance norm
over the whole volume). The output layer is a biased 1×1×1 convolution. Nothing else varies between the published
MeshNets, so the card's ``params`` are exactly those choices.

Tensor names: ``layers.<i>.weight`` / ``layers.<i>.bias`` for the hidden layers, ``output.weight`` /
``output.bias`` for the classifier, in PyTorch's ``[out, in, kd, kh, kw]`` layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU}
NORMS = ("none", "instance")
GROUPNORM_EPS = 1e-5  # PyTorch's GroupNorm default, the layer MindGrab was trained with


class MeshNet(nn.Module):
    """Fully convolutional, no down-sampling: the output has the input's size for any input size."""

    def __init__(self, channels: int, classes: int, dilations: Sequence[int], activation: str = "elu",
                 norm: str = "none", bias: bool = True, in_channels: int = 1) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        dilations = [int(d) for d in dilations]
        if not dilations or any(d < 1 for d in dilations):
            raise ValueError(f"dilations must be a non-empty list of positive integers, got {dilations!r}")
        if int(channels) < 1 or int(classes) < 2 or int(in_channels) < 1:
            raise ValueError("channels and in_channels must be >= 1 and classes >= 2")
        self.dilations = tuple(dilations)
        self.activation = activation
        self.norm = norm
        self.layers = nn.ModuleList()
        width = int(in_channels)
        for dilation in dilations:
            self.layers.append(nn.Conv3d(width, int(channels), 3, padding=dilation, dilation=dilation, bias=bool(bias)))
            width = int(channels)
        self.output = nn.Conv3d(width, int(classes), 1)
        self.act = ACTIVATIONS[activation]()

    def hidden(self, index: int, x: torch.Tensor, padding: bool = True) -> torch.Tensor:
        """Hidden layer ``index``: convolution (``padding=False``: 'valid', the caller supplies the halo), then the
        norm where the topology has one, then the activation."""
        conv = self.layers[index]
        x = conv(x) if padding else nn.functional.conv3d(x, conv.weight, conv.bias, dilation=conv.dilation)
        if self.norm == "instance":
            x = nn.functional.group_norm(x, x.shape[1], eps=GROUPNORM_EPS)
        return self.activate(x)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """The activation, in place where PyTorch has one (ELU, ReLU): one allocation less per layer."""
        if self.activation == "elu":
            return nn.functional.elu(x, inplace=True)
        if self.activation == "relu":
            return nn.functional.relu(x, inplace=True)
        return self.act(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain full-volume forward (logits); the segmentation pipeline runs the same layers box by box."""
        for index in range(len(self.layers)):
            x = self.hidden(index, x)
        return self.output(x)
