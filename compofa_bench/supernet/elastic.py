"""The one builder both supernet bases share: stem, fixed first block, elastic stages, head.

MobileNetV3 and ProxylessNAS differ only in their numbers (widths, strides, activations, SE,
BatchNorm settings) and in their stem, first block and head; the elastic stages, the config
record, BatchNorm settings and OFA's weight init are the same code. Modules are built in the
order OFA builds them (stem, first block, elastic blocks, head), so the random init draws the
same numbers as before this builder existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from compofa_bench.spaces import Arch
from compofa_bench.supernet.dynamic_ops import DynamicMBConv
from compofa_bench.supernet.geometry import LayerSpec
from compofa_bench.supernet.network import ElasticSupernet, SupernetConfig
from compofa_bench.supernet.static_layers import Residual


@dataclass(frozen=True)
class ElasticStages:
    """The elastic part of a base: per stage its block count, output width, first stride,
    activation and whether its blocks have SE."""

    sizes: tuple[int, ...]
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    acts: tuple[str, ...]
    se: tuple[bool, ...]


def build_elastic(
    *,
    base: str,
    stages: ElasticStages,
    stem: nn.Module,
    first_block: nn.Module,
    in_channels: int,
    head: Callable[[int], list[tuple[str, nn.Module]]],
    head_names: dict[str, str],
    specs: Callable[[Arch], list[LayerSpec]],
    bn: tuple[float, float],
    width_mult: float,
    n_classes: int,
    dropout_rate: float,
    kernel_list: Sequence[int],
    expand_list: Sequence[int],
    depth_list: Sequence[int],
) -> ElasticSupernet:
    """Assemble a supernet: ``stem`` and ``first_block`` (built by the caller, in that order),
    then the elastic :class:`DynamicMBConv` blocks from ``in_channels``, then ``head(channels)``
    (the named head modules). ``bn`` is (momentum, eps) for every BatchNorm. OFA's init."""
    elastic: list[Residual] = []
    in_c = in_channels
    for stage, size in enumerate(stages.sizes):
        out_c = stages.widths[stage]
        for layer in range(size):
            stride = stages.strides[stage] if layer == 0 else 1
            body = DynamicMBConv(
                in_c, out_c, kernel_list, expand_list, stride, stages.acts[stage], stages.se[stage]
            )
            elastic.append(Residual(body, shortcut=stride == 1 and in_c == out_c))
            in_c = out_c
    config = SupernetConfig(
        base=base,
        width_mult=width_mult,
        n_classes=n_classes,
        dropout_rate=dropout_rate,
        kernel_list=tuple(sorted(set(kernel_list))),
        expand_list=tuple(sorted(set(expand_list))),
        depth_list=tuple(sorted(set(depth_list))),
        stage_sizes=stages.sizes,
    )
    net = ElasticSupernet(config, stem, [first_block], elastic, head(in_c), head_names, specs)
    momentum, eps = bn
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = momentum, eps
    init_weights(net)
    return net


def init_weights(net: nn.Module) -> None:
    """OFA's init: He (fan-out) for convs, unit BN, uniform linear; the kernel-transform
    matrices stay identity."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / n))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            stdv = 1.0 / math.sqrt(m.weight.size(1))
            m.weight.data.uniform_(-stdv, stdv)
            if m.bias is not None:
                m.bias.data.zero_()
