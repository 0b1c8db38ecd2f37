"""hippodeep's three networks (Thyreau et al., Medical Image Analysis 43:214-228, 2018), written for this engine.

hippodeep segments the hippocampus of a raw whole-head T1 in three steps, one small network each:

* :class:`HippodeepHead` sees the whole field of view squeezed into a 64³ grid and returns four sigmoid maps (the
  intracranial mask used for eTIV, and the tissue priors the affine step reads);
* :class:`HippodeepAffine` reads two of those priors (masked by the intracranial map) and regresses the 12 numbers of
  the affine that maps its MNI-like 64³ template grid onto that input grid;
* :class:`HippodeepHippo` segments one hemisphere's hippocampus in a 1 mm crop of template space (the left side is
  mirrored so that one network serves both).

The module and parameter names are those of the published state dicts (``bthyreau/hippodeep_pytorch``,
``torchparams/*.pt``), so the converted tensors load strictly; the topology was read from those tensors' shapes and
the reference description, and is expressed here in the engine's own terms. Constructors create parameters only
(no grids or buffers beyond batch-norm statistics), so the weights fit check can build them on the meta device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv(in_channels: int, out_channels: int, kernel: int | tuple[int, int, int] = 3, padding: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_channels, out_channels, kernel, padding=padding)


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="nearest")


class HippodeepHead(nn.Module):
    """A 4-level U-Net (8-24-32-48 channels, ELU, batch norm after each level's second convolution, nearest-neighbour
    upsampling with skip concatenation) on the 64³ whole-head grid; ``out_channels`` sigmoid maps. Channel 0 is the
    intracranial (brain) mask, channels 1 and 3 are the priors the affine network reads."""

    def __init__(self, in_channels: int = 1, out_channels: int = 4) -> None:
        super().__init__()
        # encoder: (first conv, second conv, batch norm) per level; widths fixed by the published weights
        widths = {"0": (in_channels, 8, 8), "1": (8, 16, 24), "2": (24, 24, 32), "3": (32, 48, 48)}
        for level, (cin, mid, cout) in widths.items():
            setattr(self, f"conv{level}a", _conv(cin, mid))
            setattr(self, f"conv{level}b", _conv(mid, cout))
            setattr(self, f"bn{level}a", nn.BatchNorm3d(cout))
        # decoder: "u" reduces the upsampled features, "v" mixes them with the encoder's skip at that level
        decoder = {"2": (48, 24, 32, 24), "1": (24, 24, 24, 24), "0": (24, 16, 8, 8)}
        for level, (cin, mid, skip, cout) in decoder.items():
            setattr(self, f"conv{level}u", _conv(cin, mid))
            setattr(self, f"conv{level}v", _conv(mid + skip, cout))
            setattr(self, f"bn{level}u", nn.BatchNorm3d(cout))
        self.conv1x = _conv(8, out_channels, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level in "0123":
            if level != "0":
                x = F.max_pool3d(x, 2)
            x = F.elu(getattr(self, f"conv{level}a")(x))
            x = F.elu(getattr(self, f"bn{level}a")(getattr(self, f"conv{level}b")(x)))
            skips.append(x)
        for level in "210":
            x = F.elu(getattr(self, f"conv{level}u")(_upsample(x)))
            x = torch.cat([x, skips[int(level)]], 1)
            x = F.elu(getattr(self, f"bn{level}u")(getattr(self, f"conv{level}v")(x)))
        return torch.sigmoid(self.conv1x(x))


class HippodeepAffine(nn.Module):
    """Affine regression on the ``grid_size``³ grid: four conv + max-pool levels (ReLU; layer norm over the whole
    spatial map, with per-voxel weights, after levels 2-4), a 1×1×1 convolution and a ``grid_size/16``-wide one that
    leaves 12 numbers. :meth:`forward` returns the 4×4 matrix (identity plus those numbers as its top 3×4 block)
    mapping the template grid's unit coordinates (-1..1 from first to last voxel centre, array axis order) to the
    input grid's."""

    def __init__(self, in_channels: int = 2, grid_size: int = 64) -> None:
        super().__init__()
        if grid_size % 16 or grid_size < 16:
            raise ValueError(f"grid_size must be a positive multiple of 16, got {grid_size}")
        self.convaff1 = _conv(in_channels, 16)
        self.convaff2 = _conv(16, 16)
        self.bnaff2 = nn.LayerNorm([grid_size // 2] * 3)
        self.convaff3 = _conv(16, 32)
        self.bnaff3 = nn.LayerNorm([grid_size // 4] * 3)
        self.convaff4 = _conv(32, 64)
        self.bnaff4 = nn.LayerNorm([grid_size // 8] * 3)
        self.convaff5 = _conv(64, 128, 1, 0)
        self.convaff6 = _conv(128, 12, grid_size // 16, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool3d(F.relu(self.convaff1(x)), 2)
        x = F.max_pool3d(F.relu(self.bnaff2(self.convaff2(x))), 2)
        x = F.max_pool3d(F.relu(self.bnaff3(self.convaff3(x))), 2)
        x = F.max_pool3d(F.relu(self.bnaff4(self.convaff4(x))), 2)
        x = self.convaff6(F.relu(self.convaff5(x)))
        top = x.reshape(-1, 3, 4)
        bottom = torch.zeros_like(top[:, :1])
        return torch.cat([top, bottom], 1) + torch.eye(4, dtype=x.dtype, device=x.device)


class HippodeepHippo(nn.Module):
    """The hippocampus network on one hemisphere's crop (valid convolutions: the output is 4 voxels smaller per axis
    than the input, whose size minus 4 must be divisible by 4).

    A separable 3-voxel stem and a 3³ convolution (48 channels) at full resolution; two residual levels at 1/2 and
    1/4 resolution (batch norm, two 3³ convolutions, identity shortcut after max-pooling); a coarse decoder back to
    full resolution that gives a first sigmoid map; that map, blurred by a learnt 7³ kernel, gates the full-resolution
    features, which are refined with the first map into the final sigmoid map (returned)."""

    def __init__(self, in_channels: int = 1, features: int = 48) -> None:
        super().__init__()
        self.conv0a_0 = nn.Conv3d(in_channels, 16, (1, 1, 3))
        self.conv0a_1 = nn.Conv3d(16, 16, (1, 3, 1))
        self.conv0a = nn.Conv3d(16, 16, (3, 1, 1))
        self.convf1 = nn.Conv3d(16, features, 3)
        self.bn1 = nn.BatchNorm3d(features)
        self.convout0 = _conv(features, features)
        self.convout1 = _conv(features, features)
        self.bn2 = nn.BatchNorm3d(features)
        self.convout2p = _conv(features, features)
        self.convout2 = _conv(features, features)
        self.convlx3 = _conv(features, features)
        self.convlx5 = _conv(features, features)
        self.convlx7 = _conv(features, 16)
        self.convlx8 = _conv(16, 1, 1, 0)
        self.blur = _conv(1, 1, 7, 3)
        self.conv_extract = _conv(features, features - 1)
        self.convmix = _conv(features, 16)
        self.convout1x = _conv(16, 1, 1, 0)

    def _residual(self, x: torch.Tensor, norm: nn.Module, first: nn.Module, second: nn.Module) -> torch.Tensor:
        pooled = F.max_pool3d(x, 2)
        return F.relu(second(F.relu(first(norm(pooled)))) + pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stem in (self.conv0a_0, self.conv0a_1, self.conv0a, self.convf1):
            x = F.relu(stem(x))
        full = x
        x = self._residual(x, self.bn1, self.convout0, self.convout1)
        x = self._residual(x, self.bn2, self.convout2p, self.convout2)
        x = _upsample(F.relu(self.convlx3(x)))
        x = _upsample(F.relu(self.convlx5(x)))
        first = torch.sigmoid(self.convlx8(F.relu(self.convlx7(x))))
        gated = F.leaky_relu(self.conv_extract(torch.sigmoid(self.blur(first)) * full))
        mixed = F.relu(self.convmix(torch.cat([first, gated], 1)))
        return torch.sigmoid(self.convout1x(mixed))
