"""ProxylessNAS OFA supernet layout (the ofa package's ``OFAProxylessNASNets``).

Stem 3x3/s2 + BN + ReLU6; a fixed first inverted residual block (expand 1, 3x3, ReLU6, no
shortcut); six elastic stages of up to 4, 4, 4, 4, 4 and 1 blocks (strides 2, 2, 2, 1, 2, 1),
ReLU6 everywhere and no SE; a 1x1 feature-mix conv + BN + ReLU6 on the final feature map;
global pooling; dropout + linear classifier. BN eps is 1e-3 (OFA's ``bn_param=(0.1, 1e-3)``).

Everything elastic is the same :class:`DynamicMBConv` MobileNetV3 uses, parameterised with
ReLU6 and no SE, assembled by the builder both bases share
(:func:`~compofa_bench.supernet.elastic.build_elastic`); selection, extraction and checkpoint
loading are :class:`ElasticSupernet`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from compofa_bench.spaces import PROXYLESS_STAGE_SIZES, Arch
from compofa_bench.supernet.elastic import ElasticStages, build_elastic
from compofa_bench.supernet.geometry import LayerSpec, ProxylessConfig, proxyless_layer_specs
from compofa_bench.supernet.network import ElasticSupernet, check_build_args
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
    n = len(PROXYLESS_STAGE_SIZES)
    stages = ElasticStages(
        sizes=PROXYLESS_STAGE_SIZES,
        widths=tuple(widths[2 : 2 + n]),
        strides=tuple(cfg.stride_stages[:n]),
        acts=(cfg.act,) * n,
        se=(False,) * n,
    )

    def head(in_c: int) -> list[tuple[str, nn.Module]]:
        return [
            ("feature_mix_layer", ConvBNAct(in_c, cfg.last_channel, 1, act=cfg.act)),
            ("global_avg_pool", nn.AdaptiveAvgPool2d(1)),
            ("classifier", LinearHead(cfg.last_channel, n_classes, dropout_rate)),
        ]

    def specs(arch: Arch) -> list[LayerSpec]:
        return proxyless_layer_specs(arch, cfg)

    return build_elastic(
        base="proxyless",
        stages=stages,
        stem=first_conv,
        first_block=first_block,
        in_channels=first_c,
        head=head,
        head_names=HEAD_NAMES,
        specs=specs,
        bn=(BN_MOMENTUM, BN_EPS),
        width_mult=width_mult,
        n_classes=n_classes,
        dropout_rate=dropout_rate,
        kernel_list=kernel_list,
        expand_list=expand_list,
        depth_list=depth_list,
    )
