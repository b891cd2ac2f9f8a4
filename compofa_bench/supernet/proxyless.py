"""ProxylessNAS OFA supernet layout (the ofa package's ``OFAProxylessNASNets``).

Stem 3x3/s2 + BN + ReLU6; a fixed first inverted residual block (expand 1, 3x3, ReLU6, no
shortcut); six elastic stages of up to 4, 4, 4, 4, 4 and 1 blocks (strides 2, 2, 2, 1, 2, 1),
ReLU6 everywhere and no SE; a 1x1 feature-mix conv + BN + ReLU6 on the final feature map;
global pooling; dropout + linear classifier. BN eps is 1e-3 (OFA's ``bn_param=(0.1, 1e-3)``).

Everything elastic is the same :class:`DynamicMBConv` MobileNetV3 uses, parameterised with
ReLU6 and no SE; selection, extraction and checkpoint loading are :class:`ElasticSupernet`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from compofa_bench.spaces import PROXYLESS_STAGE_SIZES, Arch
from compofa_bench.supernet.dynamic_ops import DynamicMBConv
from compofa_bench.supernet.geometry import LayerSpec, ProxylessConfig, proxyless_layer_specs
from compofa_bench.supernet.mbv3 import _init_weights
from compofa_bench.supernet.network import ElasticSupernet, SupernetConfig, check_build_args
from compofa_bench.supernet.static_layers import ConvBNAct, LinearHead, MBConv, Residual

#: Geometry kind -> module name of the head, as in OFAProxylessNASNets. The global pooling
#: (``global_avg_pool``) has no kind: OFA's tables fold it into ``Logits``.
HEAD_NAMES = {"Conv_1": "feature_mix_layer", "Logits": "classifier"}

#: OFA's BatchNorm settings for ProxylessNAS (bn_param=(momentum, eps)).
BN_MOMENTUM, BN_EPS = 0.1, 1e-3


def build_proxyless(
    width_mult: float = 1.0,
    n_classes: int = 1000,
    dropout_rate: float = 0.1,
    kernel_list: Sequence[int] = (3, 5, 7),
    expand_list: Sequence[int] = (3, 4, 6),
    depth_list: Sequence[int] = (2, 3, 4),
) -> ElasticSupernet:
    """The elastic ProxylessNAS net with OFA's structure and key names (random init)."""
    check_build_args(
        "ProxylessNAS", width_mult, n_classes, dropout_rate, depth_list, PROXYLESS_STAGE_SIZES[0]
    )
    cfg = ProxylessConfig(width_mult=width_mult, n_classes=n_classes)
    widths = cfg.widths
    stem_c, first_c = widths[0], widths[1]

    first_conv = ConvBNAct(3, stem_c, 3, 2, act=cfg.act)
    first_block = Residual(
        MBConv(stem_c, first_c, stem_c, 3, 1, cfg.act, False, has_expand_conv=False),
        shortcut=False,
    )
    elastic: list[Residual] = []
    in_c = first_c
    for stage, size in enumerate(PROXYLESS_STAGE_SIZES):
        out_c = widths[stage + 2]
        for layer in range(size):
            stride = cfg.stride_stages[stage] if layer == 0 else 1
            body = DynamicMBConv(in_c, out_c, kernel_list, expand_list, stride, cfg.act, False)
            elastic.append(Residual(body, shortcut=stride == 1 and in_c == out_c))
            in_c = out_c
    head: list[tuple[str, nn.Module]] = [
        ("feature_mix_layer", ConvBNAct(in_c, cfg.last_channel, 1, act=cfg.act)),
        ("global_avg_pool", nn.AdaptiveAvgPool2d(1)),
        ("classifier", LinearHead(cfg.last_channel, n_classes, dropout_rate)),
    ]
    config = SupernetConfig(
        base="proxyless",
        width_mult=width_mult,
        n_classes=n_classes,
        dropout_rate=dropout_rate,
        kernel_list=tuple(sorted(set(kernel_list))),
        expand_list=tuple(sorted(set(expand_list))),
        depth_list=tuple(sorted(set(depth_list))),
        stage_sizes=PROXYLESS_STAGE_SIZES,
    )

    def specs(arch: Arch) -> list[LayerSpec]:
        return proxyless_layer_specs(arch, cfg)

    net = ElasticSupernet(config, first_conv, [first_block], elastic, head, HEAD_NAMES, specs)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = BN_MOMENTUM, BN_EPS
    _init_weights(net)
    return net
