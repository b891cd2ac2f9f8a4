"""MobileNetV3 OFA supernet layout (the ofa package's ``OFAMobileNetV3``).

Stem 3x3/s2 + h_swish; a fixed first inverted residual block (expand 1, 3x3, ReLU, no SE);
5 elastic stages of up to 4 blocks (strides 2,2,2,1,2; ReLU, ReLU, h_swish x3; SE in stages
1, 3, 4, counting from 0); final 1x1 expand + BN + h_swish; global pool; 1x1 feature mix +
h_swish (no BN); dropout + linear classifier. Widths come from :class:`MBV3Config`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from compofa_bench.spaces import MBV3_STAGE_SIZES, Arch
from compofa_bench.supernet.elastic import ElasticStages, build_elastic
from compofa_bench.supernet.geometry import LayerSpec, MBV3Config, mbv3_layer_specs
from compofa_bench.supernet.network import ElasticSupernet, check_build_args
from compofa_bench.supernet.static_layers import (
    ConvBNAct,
    LinearHead,
    MBConv,
    Residual,
)

#: Geometry kind -> module name of the head, as in OFAMobileNetV3.
HEAD_NAMES = {
    "Conv_1": "final_expand_layer",
    "AvgPool2D": "global_pool",
    "Conv_2": "feature_mix_layer",
    "Logits": "classifier",
}

#: OFA's BatchNorm settings for MobileNetV3 (bn_param=(momentum, eps)).
BN_MOMENTUM, BN_EPS = 0.1, 1e-5


def build_mbv3(
    width_mult: float = 1.0,
    n_classes: int = 1000,
    dropout_rate: float = 0.1,
    kernel_list: Sequence[int] = (3, 5, 7),
    expand_list: Sequence[int] = (3, 4, 6),
    depth_list: Sequence[int] = (2, 3, 4),
) -> ElasticSupernet:
    """The elastic MobileNetV3 with OFA's structure and key names (random init)."""
    check_build_args(
        "MobileNetV3", width_mult, n_classes, dropout_rate, depth_list, MBV3_STAGE_SIZES[0]
    )
    cfg = MBV3Config(width_mult=width_mult, n_classes=n_classes)
    widths = cfg.widths
    stem_c, first_c = widths[0], widths[1]

    first_conv = ConvBNAct(3, stem_c, 3, 2, act="h_swish")
    first_block = Residual(
        MBConv(
            stem_c,
            first_c,
            stem_c,
            3,
            cfg.stride_stages[0],
            cfg.act_stages[0],
            cfg.se_stages[0],
            has_expand_conv=False,
        ),
        shortcut=stem_c == first_c and cfg.stride_stages[0] == 1,
    )
    stages = ElasticStages(
        sizes=MBV3_STAGE_SIZES,
        widths=tuple(widths[2 : 2 + len(MBV3_STAGE_SIZES)]),
        strides=tuple(cfg.stride_stages[1:]),
        acts=tuple(cfg.act_stages[1:]),
        se=tuple(cfg.se_stages[1:]),
    )

    def head(in_c: int) -> list[tuple[str, nn.Module]]:
        return [
            ("final_expand_layer", ConvBNAct(in_c, cfg.final_expand_width, 1, act="h_swish")),
            ("global_pool", nn.AdaptiveAvgPool2d(1)),
            (
                "feature_mix_layer",
                ConvBNAct(cfg.final_expand_width, cfg.last_channel, 1, act="h_swish", use_bn=False),
            ),
            ("classifier", LinearHead(cfg.last_channel, n_classes, dropout_rate)),
        ]

    def specs(arch: Arch) -> list[LayerSpec]:
        return mbv3_layer_specs(arch, cfg)

    return build_elastic(
        base="mbv3",
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
