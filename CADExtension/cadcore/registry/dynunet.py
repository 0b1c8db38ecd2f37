"""The engine's own DynUNet for inference: plain torch, MONAI's state dict and MONAI's eval-mode outputs.

Why: every shipped segmentation package is a DynUNet, and importing MONAI only to build that class cost ``cad
segment`` about 0.7 s of start-up (issue 19). :class:`DynUNet` takes the constructor parameters of
``monai.networks.nets.DynUNet`` and registers its modules under the same names, in the same order (including the
recursive ``skip_layers`` aliases of the same blocks), so a package's weights load unchanged and, for a given seed,
a freshly built network even holds MONAI's initial weights. Its forward is MONAI's eval-mode forward to float
rounding; in training mode it gives no deep-supervision outputs, which is why training keeps MONAI's class.

It implements only what :func:`engine_supports` accepts (the shipped cards and the usual nnU-Net variants);
:func:`cadcore.registry.architectures.build_network` builds MONAI's class for anything else, so an unusual card
behaves, and fails, exactly as before. This module must never import MONAI (``Testing/engine/registry``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

_REQUIRED = ("spatial_dims", "in_channels", "out_channels", "kernel_size", "strides", "upsample_kernel_size")
_OPTIONAL = ("filters", "dropout", "norm_name", "act_name", "deep_supervision", "deep_supr_num", "res_block",
             "trans_bias")
_DEFAULT_NORM = ("INSTANCE", {"affine": True})
_DEFAULT_ACT = ("leakyrelu", {"inplace": True, "negative_slope": 0.01})
_LAYERS = {2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.BatchNorm2d),
           3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.BatchNorm3d)}


def engine_supports(params: Mapping[str, Any]) -> bool:
    """Whether :class:`DynUNet` builds exactly MONAI's network for these card parameters (else: MONAI's class)."""
    try:
        _layer_kinds(params)
    except (ValueError, TypeError):
        return False
    return True


def _is_int(value: Any, minimum: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _per_axis(value: Any, dims: int) -> tuple[int, ...]:
    """An int or a ``dims``-long sequence of ints, as one value per axis (raises ValueError otherwise)."""
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,) * dims
    if len(values) != dims or not all(_is_int(v) for v in values):
        raise ValueError(f"{value!r} is not a positive int or {dims} of them")
    return values


def _padding(kernel: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """MONAI's ``get_padding``: (kernel - stride + 1) // 2 per axis, refused when negative."""
    if any(k - s + 1 < 0 for k, s in zip(kernel, stride)):
        raise ValueError(f"kernel {kernel} is too small for stride {stride}")
    return tuple((k - s + 1) // 2 for k, s in zip(kernel, stride))


def _layer_spec(value: Any, names: tuple[str, ...], arguments: dict[str, type]) -> tuple[str, dict[str, Any]]:
    """A MONAI layer specifier (``"name"`` or ``(name, {args})``) limited to ``names`` and typed ``arguments``."""
    name, args = (value, {}) if isinstance(value, str) else tuple(value)
    if not isinstance(name, str) or name.lower() not in names or not isinstance(args, dict):
        raise ValueError(f"unsupported layer {value!r}")
    for key, item in args.items():
        kind = arguments.get(key)
        if kind is None or isinstance(item, bool) != (kind is bool) or not isinstance(item, kind):
            raise ValueError(f"unsupported layer argument {key}={item!r}")
    return name.lower(), dict(args)


def _layer_kinds(params: Mapping[str, Any]) -> tuple[tuple[str, dict], tuple[str, dict]]:
    """Check every parameter against what this module implements exactly; return the (norm, act) specifiers.

    Raises ValueError (or TypeError) for anything else: unknown or missing keys, other layer types or arguments,
    dropout, kernels/strides MONAI would refuse or silently truncate."""
    unknown = set(params) - set(_REQUIRED + _OPTIONAL)
    missing = set(_REQUIRED) - set(params)
    if unknown or missing:
        raise ValueError(f"parameters {sorted(unknown)} unknown, {sorted(missing)} missing")
    dims = params["spatial_dims"]
    if not _is_int(dims) or dims not in _LAYERS:
        raise ValueError("spatial_dims must be 2 or 3")
    if not (_is_int(params["in_channels"]) and _is_int(params["out_channels"])):
        raise ValueError("channel counts must be positive ints")
    kernels, strides, ups = params["kernel_size"], params["strides"], params["upsample_kernel_size"]
    if not all(isinstance(v, (list, tuple)) for v in (kernels, strides, ups)):
        raise ValueError("kernel_size, strides and upsample_kernel_size must be sequences")
    if len(kernels) != len(strides) or len(strides) < 3 or len(ups) != len(strides) - 1:
        raise ValueError("need as many kernels as strides (at least 3) and one upsample kernel less")
    res_block = params.get("res_block", False)
    for kernel, stride in zip(kernels, strides):
        _padding(_per_axis(kernel, dims), _per_axis(stride, dims))
        if res_block:  # its 1x1 shortcut convolution has the block's stride
            _padding((1,) * dims, _per_axis(stride, dims))
    for up in ups:
        _per_axis(up, dims)
    filters = params.get("filters")
    if filters is not None and not (isinstance(filters, (list, tuple)) and len(filters) >= len(strides)
                                    and all(_is_int(f) for f in filters)):
        raise ValueError("filters must be positive ints, one per level at least")
    dropout = params.get("dropout")
    if not (dropout is None or (isinstance(dropout, (int, float)) and not isinstance(dropout, bool) and dropout == 0)):
        raise ValueError("dropout is not implemented")
    flags = [params.get(key, False) for key in ("deep_supervision", "res_block", "trans_bias")]
    if not all(isinstance(flag, bool) for flag in flags):
        raise ValueError("deep_supervision, res_block and trans_bias must be booleans")
    supr = params.get("deep_supr_num", 1)
    if not _is_int(supr, minimum=-(2**31)) or (flags[0] and not 1 <= supr < len(strides) - 1):
        raise ValueError("deep_supr_num must be at least 1 and less than the number of upsampling levels")
    norm = _layer_spec(params.get("norm_name", _DEFAULT_NORM), ("instance", "batch"), {"affine": bool})
    act = _layer_spec(params.get("act_name", _DEFAULT_ACT), ("leakyrelu",),
                      {"inplace": bool, "negative_slope": (int, float)})  # type: ignore[dict-item]
    return norm, act


class _Layers:
    """Makes the layers of one network: its dimensionality, normalisation and activation."""

    def __init__(self, dims: int, norm: tuple[str, dict], act: tuple[str, dict]):
        self.dims, self.norm_kind, self.act_kind = dims, norm, act
        self.conv_type, self.transposed_type, instance, batch = _LAYERS[dims]
        self.norm_type = instance if norm[0] == "instance" else batch

    def conv(self, cin: int, cout: int, kernel: Any, stride: Any, bias: bool = False,
             transposed: bool = False) -> nn.Sequential:
        """A convolution registered as ``conv`` inside a Sequential, as MONAI's ``Convolution`` block holds it."""
        kernel, stride = _per_axis(kernel, self.dims), _per_axis(stride, self.dims)
        padding = _padding(kernel, stride)
        if transposed:
            output_padding = tuple(2 * p + s - k for p, s, k in zip(padding, stride, kernel))
            layer: nn.Module = self.transposed_type(cin, cout, kernel, stride=stride, padding=padding,
                                                    output_padding=output_padding, bias=bias)
        else:
            layer = self.conv_type(cin, cout, kernel, stride=stride, padding=padding, bias=bias)
        return nn.Sequential(OrderedDict(conv=layer))

    def norm(self, channels: int) -> nn.Module:
        return self.norm_type(channels, **self.norm_kind[1])

    def act(self) -> nn.Module:
        return nn.LeakyReLU(**self.act_kind[1])


class UnetBasicBlock(nn.Module):
    """conv-norm-act twice; the first convolution carries the level's stride."""

    def __init__(self, layers: _Layers, cin: int, cout: int, kernel: Any, stride: Any):
        super().__init__()
        self.conv1 = layers.conv(cin, cout, kernel, stride)
        self.conv2 = layers.conv(cout, cout, kernel, 1)
        self.lrelu = layers.act()
        self.norm1 = layers.norm(cout)
        self.norm2 = layers.norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lrelu(self.norm1(self.conv1(x)))
        return self.lrelu(self.norm2(self.conv2(x)))


class UnetResBlock(UnetBasicBlock):
    """The basic block with a residual connection (through a strided 1x1 convolution when the shape changes)."""

    def __init__(self, layers: _Layers, cin: int, cout: int, kernel: Any, stride: Any):
        super().__init__(layers, cin, cout, kernel, stride)
        if cin != cout or any(s != 1 for s in _per_axis(stride, layers.dims)):
            self.conv3 = layers.conv(cin, cout, 1, stride)
            self.norm3 = layers.norm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(x)))))
        out += self.norm3(self.conv3(x)) if hasattr(self, "conv3") else x
        return self.lrelu(out)


class UnetUpBlock(nn.Module):
    """Transposed-convolution upsampling, concatenation with the skip connection, then a basic block."""

    def __init__(self, layers: _Layers, cin: int, cout: int, kernel: Any, up_kernel: Any, bias: bool):
        super().__init__()
        self.transp_conv = layers.conv(cin, cout, up_kernel, up_kernel, bias=bias, transposed=True)
        self.conv_block = UnetBasicBlock(layers, 2 * cout, cout, kernel, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


class UnetOutBlock(nn.Module):
    """The 1x1 convolution to class scores (also the deep-supervision heads, whose weights packages may hold)."""

    def __init__(self, layers: _Layers, cin: int, cout: int):
        super().__init__()
        self.conv = layers.conv(cin, cout, 1, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DynUNetSkipLayer(nn.Module):
    """One level of the U: down, the levels below, up with this level's features. MONAI registers the network's
    blocks a second time through these (``skip_layers.next_layer...``); packages hold those names too."""

    def __init__(self, downsample: nn.Module, upsample: nn.Module, next_layer: nn.Module,
                 super_head: nn.Module | None = None):
        super().__init__()
        self.downsample = downsample
        self.next_layer = next_layer
        self.upsample = upsample
        if super_head is not None:  # its output only matters to training: registered for the state dict alone
            self.super_head = super_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.downsample(x)
        return self.upsample(self.next_layer(down), down)


class DynUNet(nn.Module):
    """``monai.networks.nets.DynUNet`` for inference (same parameters, state dict and eval-mode output)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: Sequence[Any],
                 strides: Sequence[Any], upsample_kernel_size: Sequence[Any], filters: Sequence[int] | None = None,
                 dropout: float | None = None, norm_name: Any = _DEFAULT_NORM, act_name: Any = _DEFAULT_ACT,
                 deep_supervision: bool = False, deep_supr_num: int = 1, res_block: bool = False,
                 trans_bias: bool = False):
        super().__init__()
        params = {"spatial_dims": spatial_dims, "in_channels": in_channels, "out_channels": out_channels,
                  "kernel_size": kernel_size, "strides": strides, "upsample_kernel_size": upsample_kernel_size,
                  "filters": filters, "dropout": dropout, "norm_name": norm_name, "act_name": act_name,
                  "deep_supervision": deep_supervision, "deep_supr_num": deep_supr_num, "res_block": res_block,
                  "trans_bias": trans_bias}
        norm, act = _layer_kinds(params)  # the engine builds only what it reproduces exactly
        layers = _Layers(spatial_dims, norm, act)
        levels = len(strides)
        if filters is None:  # nnU-Net's rule, as MONAI
            filters = [min(2 ** (5 + i), 320 if spatial_dims == 3 else 512) for i in range(levels)]
        filters = list(filters)[:levels]
        self.filters, self.deep_supervision = filters, deep_supervision
        block = UnetResBlock if res_block else UnetBasicBlock
        # Registration order is MONAI's: same state-dict order and, under a seed, the same initial weights.
        self.input_block = block(layers, in_channels, filters[0], kernel_size[0], strides[0])
        self.downsamples = nn.ModuleList(block(layers, cin, cout, kernel, stride) for cin, cout, kernel, stride
                                         in zip(filters[:-2], filters[1:-1], kernel_size[1:-1], strides[1:-1]))
        self.bottleneck = block(layers, filters[-2], filters[-1], kernel_size[-1], strides[-1])
        self.upsamples = nn.ModuleList(
            UnetUpBlock(layers, cin, cout, kernel, up, trans_bias) for cin, cout, kernel, up
            in zip(filters[1:][::-1], filters[:-1][::-1], kernel_size[1:][::-1], upsample_kernel_size[::-1]))
        self.output_block = UnetOutBlock(layers, filters[0], out_channels)
        torch.rand(1)  # MONAI draws its heads' placeholder here: keeps the same random stream for the init below
        heads: list[nn.Module] = []
        if deep_supervision:
            self.deep_supervision_heads = nn.ModuleList(UnetOutBlock(layers, filters[i + 1], out_channels)
                                                        for i in range(deep_supr_num))
            heads = list(self.deep_supervision_heads)
        self.apply(_initialize_weights)
        downs = [self.input_block, *self.downsamples]
        ups = list(self.upsamples)[::-1]
        skip: nn.Module = self.bottleneck
        for index in range(len(downs) - 1, -1, -1):  # built bottom-up; level i > 0 owns head i - 1
            head = heads[index - 1] if 0 < index <= len(heads) else None
            skip = DynUNetSkipLayer(downs[index], ups[index], skip, head)
        self.skip_layers = skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_block(self.skip_layers(x))


def _initialize_weights(module: nn.Module) -> None:
    """MONAI's initialisation (Kaiming normal, zero bias), so a network built without weights matches its class."""
    if isinstance(module, (nn.Conv3d, nn.Conv2d, nn.ConvTranspose3d, nn.ConvTranspose2d)):
        module.weight = nn.init.kaiming_normal_(module.weight, a=0.01)
        if module.bias is not None:
            module.bias = nn.init.constant_(module.bias, 0)
