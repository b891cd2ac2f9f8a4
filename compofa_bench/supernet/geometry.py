"""Layer geometry of a subnet, computed from an Arch alone.

This is the single source of truth for shapes: MAC/parameter counting, latency-table keys and
single-layer models for table building all read the :class:`LayerSpec` list that
:func:`layer_specs` returns, so they cannot disagree with each other or with the supernet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from compofa_bench.errors import SupernetError
from compofa_bench.spaces import Arch


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """OFA's (and TF's) channel rounding: nearest multiple of ``divisor``, never below 90%."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a 'same'-padded convolution with odd kernel."""
    return (size - 1) // stride + 1


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a subnet as latency tables see it.

    ``kind`` is one of OFA's table types: ``Conv`` (stem), ``expanded_conv`` (an inverted
    residual block), ``Conv_1`` (final 1x1 expand), ``AvgPool2D``, ``Conv_2`` (feature mix)
    and ``Logits`` (classifier). Sizes are square feature maps. For ``expanded_conv``,
    ``mid_c`` is the number of middle (expanded) channels and ``expand_ratio`` the ratio that
    produced it; ``act`` is ``relu``, ``h_swish`` or ``relu6``.
    """

    kind: str
    in_hw: int
    in_c: int
    out_hw: int
    out_c: int
    mid_c: int = 0
    kernel: int = 0
    stride: int = 1
    idskip: bool = False
    se: bool = False
    act: str = ""
    expand_ratio: float = 0.0
    has_expand_conv: bool = True  # False for a block with expand ratio 1 (no 1x1 expansion)
    use_bn: bool = True  # False for MobileNetV3's feature-mix conv (no BN, no bias)

    @property
    def se_c(self) -> int:
        """Hidden width of the squeeze-excite block (0 without SE)."""
        return se_channels(self.mid_c) if self.se else 0


def se_channels(mid_c: int, reduction: int = 4) -> int:
    """OFA's SE hidden width: ``make_divisible(mid // 4, 8)``."""
    return make_divisible(mid_c // reduction, 8)


@dataclass(frozen=True)
class MBV3Config:
    """MobileNetV3 OFA supernet layout (OFAMobileNetV3 in the ofa package)."""

    width_mult: float = 1.0
    n_classes: int = 1000
    base_stage_width: tuple[int, ...] = (16, 16, 24, 40, 80, 112, 160, 960, 1280)
    stride_stages: tuple[int, ...] = (1, 2, 2, 2, 1, 2)
    act_stages: tuple[str, ...] = ("relu", "relu", "relu", "h_swish", "h_swish", "h_swish")
    se_stages: tuple[bool, ...] = (False, False, True, False, True, True)

    @property
    def widths(self) -> tuple[int, ...]:
        """Rounded widths: stem, first block, then the 5 elastic stages."""
        return tuple(make_divisible(w * self.width_mult, 8) for w in self.base_stage_width[:-2])

    @property
    def final_expand_width(self) -> int:
        return make_divisible(self.base_stage_width[-2] * self.width_mult, 8)

    @property
    def last_channel(self) -> int:
        return make_divisible(self.base_stage_width[-1] * self.width_mult, 8)


def middle_channels(in_c: int, expand_ratio: float) -> int:
    """Expanded width of an inverted residual block, as OFA's dynamic layer computes it."""
    return make_divisible(round(in_c * expand_ratio), 8)


def elastic_block_specs(
    arch: Arch,
    hw: int,
    in_c: int,
    widths: Sequence[int],
    strides: Sequence[int],
    acts: Sequence[str],
    ses: Sequence[bool],
) -> tuple[list[LayerSpec], int, int]:
    """The inverted-residual blocks of the elastic stages, shared by every base: per stage its
    output width, first-layer stride, activation and SE flag. Returns the specs and the
    feature-map size and channels after the last block."""
    specs: list[LayerSpec] = []
    for stage, slot, layer in arch.active_layers():
        out_c = widths[stage]
        stride = strides[stage] if layer == 0 else 1
        out_hw = conv_out_size(hw, stride)
        e = arch.e[slot]
        specs.append(
            LayerSpec(
                "expanded_conv", hw, in_c, out_hw, out_c, mid_c=middle_channels(in_c, e),
                kernel=arch.ks[slot], stride=stride, idskip=stride == 1 and in_c == out_c,
                se=ses[stage], act=acts[stage], expand_ratio=float(e),
            )
        )  # fmt: skip
        hw, in_c = out_hw, out_c
    return specs, hw, in_c


def mbv3_layer_specs(arch: Arch, cfg: MBV3Config) -> list[LayerSpec]:
    """Every layer the subnet ``arch`` runs, in order."""
    widths = cfg.widths
    if len(arch.d) != len(widths) - 2:
        raise SupernetError(f"MobileNetV3 has {len(widths) - 2} stages; arch has {len(arch.d)}")
    r = arch.resolution
    specs: list[LayerSpec] = []
    hw = conv_out_size(r, 2)
    stem_c, first_c = widths[0], widths[1]
    specs.append(LayerSpec("Conv", r, 3, hw, stem_c, kernel=3, stride=2, act="h_swish"))
    specs.append(
        LayerSpec(
            "expanded_conv",
            hw,
            stem_c,
            hw,
            first_c,
            mid_c=stem_c,
            kernel=3,
            stride=cfg.stride_stages[0],
            idskip=stem_c == first_c and cfg.stride_stages[0] == 1,
            se=cfg.se_stages[0],
            act=cfg.act_stages[0],
            expand_ratio=1.0,
            has_expand_conv=False,
        )
    )
    blocks, hw, in_c = elastic_block_specs(
        arch, hw, first_c, widths[2:], cfg.stride_stages[1:], cfg.act_stages[1:],
        cfg.se_stages[1:],
    )  # fmt: skip
    specs.extend(blocks)
    fe, last = cfg.final_expand_width, cfg.last_channel
    specs.append(LayerSpec("Conv_1", hw, in_c, hw, fe, kernel=1, act="h_swish"))
    specs.append(LayerSpec("AvgPool2D", hw, fe, 1, fe))
    specs.append(LayerSpec("Conv_2", 1, fe, 1, last, kernel=1, act="h_swish", use_bn=False))
    specs.append(LayerSpec("Logits", 1, last, 1, cfg.n_classes))
    return specs


@dataclass(frozen=True)
class ProxylessConfig:
    """ProxylessNAS OFA supernet layout (OFAProxylessNASNets in the ofa package).

    Six elastic stages; the last holds a single block. ReLU6 everywhere, no SE. The head is a
    1x1 feature-mix conv (BN + ReLU6) on the final feature map, then global pooling and the
    classifier, so OFA's tables key it as ``Conv_1`` and ``Logits`` (pooling included).
    """

    width_mult: float = 1.0
    n_classes: int = 1000
    base_stage_width: tuple[int, ...] = (32, 16, 24, 40, 80, 96, 192, 320, 1280)
    stride_stages: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
    act: str = "relu6"

    @property
    def widths(self) -> tuple[int, ...]:
        """Rounded widths: stem, first block, then the 6 elastic stages."""
        return tuple(make_divisible(w * self.width_mult, 8) for w in self.base_stage_width[:-1])

    @property
    def last_channel(self) -> int:
        return make_divisible(self.base_stage_width[-1] * self.width_mult, 8)


def proxyless_layer_specs(arch: Arch, cfg: ProxylessConfig) -> list[LayerSpec]:
    """Every layer the ProxylessNAS subnet ``arch`` runs, in order.

    ``expand_ratio`` is what OFA's ProxylessNAS tables key on (``expand:<ratio>``); the first
    block has ratio 1 and no expand conv.
    """
    widths = cfg.widths
    n_stages = len(widths) - 2
    if len(arch.d) != n_stages:
        raise SupernetError(f"ProxylessNAS has {n_stages} stages; arch has {len(arch.d)}")
    r = arch.resolution
    hw = conv_out_size(r, 2)
    stem_c, first_c = widths[0], widths[1]
    specs = [
        LayerSpec("Conv", r, 3, hw, stem_c, kernel=3, stride=2, act=cfg.act),
        # OFA builds the first block without a shortcut even where shapes would allow one.
        LayerSpec(
            "expanded_conv",
            hw,
            stem_c,
            hw,
            first_c,
            mid_c=stem_c,
            kernel=3,
            stride=1,
            idskip=False,
            act=cfg.act,
            expand_ratio=1.0,
            has_expand_conv=False,
        ),
    ]
    n = len(arch.d)
    blocks, hw, in_c = elastic_block_specs(
        arch, hw, first_c, widths[2:], cfg.stride_stages, (cfg.act,) * n, (False,) * n
    )
    specs.extend(blocks)
    last = cfg.last_channel
    specs.append(LayerSpec("Conv_1", hw, in_c, hw, last, kernel=1, act=cfg.act))
    # Logits keeps the feature-map size: it stands for pooling + classifier, as in OFA's table.
    specs.append(LayerSpec("Logits", hw, last, 1, cfg.n_classes))
    return specs
