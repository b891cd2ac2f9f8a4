"""MACs and parameter counts from layer geometry alone (no model is built).

Conventions are OFA's (``ofa.utils.count_net_flops`` / ``count_parameters``): MACs count
convolutions (including the SE 1x1 convs on the pooled vector) and the classifier; BN,
activations, pooling, the SE scaling and residual additions count zero. Parameters count every
weight and bias, BN affine parameters included, running statistics excluded.
"""

from __future__ import annotations

from collections.abc import Iterable

from compofa_bench.errors import SupernetError
from compofa_bench.supernet.geometry import LayerSpec


def layer_macs(spec: LayerSpec) -> int:
    """Multiply-accumulates of one layer for one image."""
    if spec.kind in ("Conv", "Conv_1", "Conv_2"):
        return spec.out_hw**2 * spec.out_c * spec.in_c * spec.kernel**2
    if spec.kind == "expanded_conv":
        macs = 0
        if spec.has_expand_conv:
            macs += spec.in_hw**2 * spec.in_c * spec.mid_c
        macs += spec.out_hw**2 * spec.mid_c * spec.kernel**2
        if spec.se:
            macs += 2 * spec.mid_c * spec.se_c
        macs += spec.out_hw**2 * spec.mid_c * spec.out_c
        return macs
    if spec.kind == "AvgPool2D":
        return 0
    if spec.kind == "Logits":
        return spec.in_c * spec.out_c
    raise SupernetError(f"unknown layer kind {spec.kind!r}")


def layer_params(spec: LayerSpec) -> int:
    """Trainable parameters of one layer."""
    if spec.kind in ("Conv", "Conv_1", "Conv_2"):
        return spec.in_c * spec.out_c * spec.kernel**2 + (2 * spec.out_c if spec.use_bn else 0)
    if spec.kind == "expanded_conv":
        n = 0
        if spec.has_expand_conv:
            n += spec.in_c * spec.mid_c + 2 * spec.mid_c
        n += spec.mid_c * spec.kernel**2 + 2 * spec.mid_c
        if spec.se:
            n += spec.mid_c * spec.se_c + spec.se_c + spec.se_c * spec.mid_c + spec.mid_c
        n += spec.mid_c * spec.out_c + 2 * spec.out_c
        return n
    if spec.kind == "AvgPool2D":
        return 0
    if spec.kind == "Logits":
        return spec.in_c * spec.out_c + spec.out_c
    raise SupernetError(f"unknown layer kind {spec.kind!r}")


def total_macs(specs: Iterable[LayerSpec]) -> int:
    return sum(layer_macs(s) for s in specs)


def total_params(specs: Iterable[LayerSpec]) -> int:
    return sum(layer_params(s) for s in specs)
