"""Static (fixed-shape) layers: what an extracted subnet is made of.

Only plain ``nn.Conv2d``, ``nn.BatchNorm2d``, ``nn.ReLU``/``nn.ReLU6``/``nn.Hardswish``,
``nn.Hardsigmoid``, ``nn.AdaptiveAvgPool2d`` and ``nn.Linear`` appear, so exporters (TorchScript
ONNX, TFLite converters) see standard ops. Attribute names follow the ofa package's static layers
(``ConvLayer``, ``MBConvLayer``, ``ResidualBlock``, ``LinearLayer``) so state_dict keys of an
extracted subnet match OFA's ``MobileNetV3`` subnets.

:func:`build_layer` turns one :class:`LayerSpec` into a random-initialised module with the same
composition the extracted subnet uses, for single-layer latency tables.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from compofa_bench.errors import SupernetError
from compofa_bench.supernet.geometry import LayerSpec, se_channels

#: Activation names used in layer specs and configs.
ACTIVATIONS = ("relu", "relu6", "h_swish", "h_sigmoid", "none")


def activation(name: str) -> nn.Module:
    """A fresh activation module. Not in-place: in-place ops complicate autograd and export."""
    if name == "relu":
        return nn.ReLU()
    if name == "relu6":
        return nn.ReLU6()
    if name == "h_swish":
        return nn.Hardswish()
    if name == "h_sigmoid":
        return nn.Hardsigmoid()
    if name in ("none", ""):
        return nn.Identity()
    raise SupernetError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")


def same_padding(kernel: int) -> int:
    if kernel % 2 != 1:
        raise SupernetError(f"kernel size must be odd, got {kernel}")
    return kernel // 2


class ConvBNAct(nn.Module):
    """Convolution, optional BN, activation (OFA's ``ConvLayer``: keys ``conv``, ``bn``)."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        act: str = "relu",
        use_bn: bool = True,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, same_padding(kernel), bias=bias)
        self.bn = nn.BatchNorm2d(out_c) if use_bn else None
        self.act = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SqueezeExcite(nn.Module):
    """OFA's ``SEModule``: global pool, 1x1 reduce + ReLU, 1x1 expand + hard sigmoid, scale."""

    def __init__(self, channels: int, mid: int | None = None) -> None:
        super().__init__()
        mid = se_channels(channels) if mid is None else mid
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            OrderedDict(
                [
                    ("reduce", nn.Conv2d(channels, mid, 1, 1, 0, bias=True)),
                    ("relu", nn.ReLU()),
                    ("expand", nn.Conv2d(mid, channels, 1, 1, 0, bias=True)),
                    ("h_sigmoid", nn.Hardsigmoid()),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))


class MBConv(nn.Module):
    """Inverted residual body (OFA's ``MBConvLayer``): 1x1 expand (absent when the block does
    not expand), depthwise kxk with optional SE, 1x1 linear projection."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        mid_c: int,
        kernel: int,
        stride: int,
        act: str,
        use_se: bool,
        has_expand_conv: bool = True,
    ) -> None:
        super().__init__()
        if not has_expand_conv and mid_c != in_c:
            raise SupernetError(f"a block without expand conv needs mid_c == in_c ({in_c})")
        self.inverted_bottleneck = (
            nn.Sequential(
                OrderedDict(
                    [
                        ("conv", nn.Conv2d(in_c, mid_c, 1, 1, 0, bias=False)),
                        ("bn", nn.BatchNorm2d(mid_c)),
                        ("act", activation(act)),
                    ]
                )
            )
            if has_expand_conv
            else None
        )
        dw: list[tuple[str, nn.Module]] = [
            (
                "conv",
                nn.Conv2d(
                    mid_c, mid_c, kernel, stride, same_padding(kernel), groups=mid_c, bias=False
                ),
            ),
            ("bn", nn.BatchNorm2d(mid_c)),
            ("act", activation(act)),
        ]
        if use_se:
            dw.append(("se", SqueezeExcite(mid_c)))
        self.depth_conv = nn.Sequential(OrderedDict(dw))
        self.point_linear = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(mid_c, out_c, 1, 1, 0, bias=False)),
                    ("bn", nn.BatchNorm2d(out_c)),
                ]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inverted_bottleneck is not None:
            x = self.inverted_bottleneck(x)
        return self.point_linear(self.depth_conv(x))


class Residual(nn.Module):
    """``conv(x) + x`` when the block has an identity shortcut, else ``conv(x)``.

    The body is called ``conv`` as in OFA's ``ResidualBlock``; the identity has no weights."""

    def __init__(self, conv: nn.Module, shortcut: bool) -> None:
        super().__init__()
        self.conv = conv
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + x if self.shortcut else y


class LinearHead(nn.Module):
    """Dropout then a linear classifier (OFA's ``LinearLayer``: key ``linear``)."""

    def __init__(self, in_features: int, out_features: int, dropout_rate: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None
        self.linear = nn.Linear(in_features, out_features, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            x = self.dropout(x)
        return self.linear(x)


class StaticNet(nn.Module):
    """A standalone subnet: stem, blocks, then named head layers in order.

    ``head`` lists ``(name, module)`` pairs (for MobileNetV3: final_expand_layer, global_pool,
    feature_mix_layer, classifier); the 4-D feature map is flattened right before the first
    :class:`LinearHead`. ``resolution`` is the input size the subnet was extracted for (it is
    informational: the net is fully convolutional up to the global pool).
    """

    def __init__(
        self,
        first_conv: nn.Module,
        blocks: Sequence[nn.Module],
        head: Sequence[tuple[str, nn.Module]],
        resolution: int | None = None,
    ) -> None:
        super().__init__()
        self.first_conv = first_conv
        self.blocks = nn.ModuleList(blocks)
        for name, module in head:
            self.add_module(name, module)
        self.head_order: tuple[str, ...] = tuple(name for name, _ in head)
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks:
            x = block(x)
        for name in self.head_order:
            module = getattr(self, name)
            if isinstance(module, LinearHead):
                x = torch.flatten(x, 1)
            x = module(x)
        return x


def build_layer(spec: LayerSpec, dropout_rate: float = 0.0) -> nn.Module:
    """A random-initialised standalone module for one layer, in eval mode.

    It is built exactly as the extracted subnet builds that layer, so its latency is the
    layer's latency inside the subnet. Feed it a tensor of :func:`layer_input_shape`.
    """
    module: nn.Module
    if spec.kind in ("Conv", "Conv_1", "Conv_2"):
        module = ConvBNAct(
            spec.in_c,
            spec.out_c,
            spec.kernel or 1,
            spec.stride,
            spec.act or "none",
            use_bn=spec.use_bn,
        )
    elif spec.kind == "expanded_conv":
        body = MBConv(
            spec.in_c,
            spec.out_c,
            spec.mid_c,
            spec.kernel,
            spec.stride,
            spec.act,
            spec.se,
            has_expand_conv=spec.has_expand_conv,
        )
        module = Residual(body, spec.idskip)
    elif spec.kind == "AvgPool2D":
        module = nn.AdaptiveAvgPool2d(1)
    elif spec.kind == "Logits" and spec.in_hw > 1:
        # A Logits layer on a feature map (ProxylessNAS tables) includes the global pooling.
        module = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), LinearHead(spec.in_c, spec.out_c, dropout_rate)
        )
    elif spec.kind == "Logits":
        module = LinearHead(spec.in_c, spec.out_c, dropout_rate)
    else:
        raise SupernetError(f"unknown layer kind {spec.kind!r}")
    return module.eval()


def layer_input_shape(spec: LayerSpec, batch_size: int = 1) -> tuple[int, ...]:
    """NCHW input shape of :func:`build_layer`'s module (``(N, C)`` for ``Logits``)."""
    if batch_size < 1:
        raise SupernetError(f"batch size must be >= 1, got {batch_size}")
    if spec.kind == "Logits" and spec.in_hw <= 1:
        return (batch_size, spec.in_c)
    return (batch_size, spec.in_c, spec.in_hw, spec.in_hw)
