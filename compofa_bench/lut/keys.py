"""Layer keys and per-base layouts of latency tables.

A latency table maps a *layer key* to measured statistics. Keys are built from
:class:`~compofa_bench.supernet.geometry.LayerSpec` alone, by a key style chosen per base
architecture, so that build, predict and validate never special-case a base.

The ``ofa-mbv3`` style reproduces the keys of OFA's MobileNetV3 tables
(``ofa/tutorial/latency_table.py``), e.g.
``expanded_conv-input:56x56x32-output:28x28x48-expand:192-kernel:5-stride:2-idskip:0-se:1-hs:0``
with ``expand`` the number of middle channels, so OFA/CompOFA tables import losslessly.

A :class:`BaseLayout` tells the table how a base's subnets decompose: the LayerSpecs of an
arch, how many of them come before the per-slot layers (``n_prefix``), and the key style. The
vectorized predictor relies on one property every once-for-all base here has: the layer in
layer slot ``j`` depends only on the resolution and that slot's own kernel and expand ratio
(stage inputs always come from the previous stage's fixed output width).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compofa_bench.errors import LutError
from compofa_bench.spaces import Arch
from compofa_bench.supernet.geometry import (
    LayerSpec,
    MBV3Config,
    ProxylessConfig,
    mbv3_layer_specs,
    proxyless_layer_specs,
)

KeyFn = Callable[[LayerSpec], str]
SpecsFn = Callable[[Arch, float, int], list[LayerSpec]]


def _shape(hw: int, c: int) -> str:
    return f"{hw}x{hw}x{c}"


def ofa_mbv3_key(spec: LayerSpec) -> str:
    """OFA's MobileNetV3 table key (``LatencyEstimator.query``) for one layer."""
    inp = f"input:{_shape(spec.in_hw, spec.in_c)}"
    if spec.kind == "Logits":
        # OFA writes the classifier output as a bare class count.
        return f"Logits-{inp}-output:{spec.out_c}"
    out = f"output:{_shape(spec.out_hw, spec.out_c)}"
    if spec.kind == "expanded_conv":
        return "-".join(
            (
                "expanded_conv",
                inp,
                out,
                f"expand:{spec.mid_c}",
                f"kernel:{spec.kernel}",
                f"stride:{spec.stride}",
                f"idskip:{int(spec.idskip)}",
                f"se:{int(spec.se)}",
                f"hs:{int(spec.act == 'h_swish')}",
            )
        )
    if spec.kind in ("Conv", "Conv_1", "AvgPool2D", "Conv_2"):
        return f"{spec.kind}-{inp}-{out}"
    raise LutError(f"key style ofa-mbv3 has no key for layer kind {spec.kind!r}")


def ofa_proxyless_key(spec: LayerSpec) -> str:
    """OFA's ProxylessNAS table key (``ProxylessNASLatencyTable.query``) for one layer.

    ``expand`` is the expansion *ratio* (``expand:6``; the first block's is 1), there is no
    SE/activation field, and ``Logits`` (pooling + classifier) is keyed by the feature map it
    pools: ``Logits-input:7x7x1280-output:1000``.
    """
    inp = f"input:{_shape(spec.in_hw, spec.in_c)}"
    if spec.kind == "Logits":
        return f"Logits-{inp}-output:{spec.out_c}"
    out = f"output:{_shape(spec.out_hw, spec.out_c)}"
    if spec.kind == "expanded_conv":
        if spec.expand_ratio != int(spec.expand_ratio):
            raise LutError(f"key style ofa-proxyless needs an integer expand ratio, not {spec}")
        return "-".join(
            (
                "expanded_conv",
                inp,
                out,
                f"expand:{int(spec.expand_ratio)}",
                f"kernel:{spec.kernel}",
                f"stride:{spec.stride}",
                f"idskip:{int(spec.idskip)}",
            )
        )
    if spec.kind in ("Conv", "Conv_1"):
        return f"{spec.kind}-{inp}-{out}"
    raise LutError(f"key style ofa-proxyless has no key for layer kind {spec.kind!r}")


#: Key styles by name. A base that needs another key form (e.g. ProxylessNAS tables keyed by
#: expand *ratio*) adds its function here and names it in its BaseLayout.
KEY_STYLES: dict[str, KeyFn] = {"ofa-mbv3": ofa_mbv3_key, "ofa-proxyless": ofa_proxyless_key}


def _mbv3_specs(arch: Arch, width_mult: float, n_classes: int) -> list[LayerSpec]:
    return mbv3_layer_specs(arch, MBV3Config(width_mult=width_mult, n_classes=n_classes))


@dataclass(frozen=True)
class BaseLayout:
    """How a base architecture's subnets map to table keys.

    ``specs(arch, width_mult, n_classes)`` lists every layer of the subnet in order:
    ``n_prefix`` fixed layers, then one layer per active slot, then fixed layers.
    """

    base: str
    key_style: str
    specs: SpecsFn
    n_prefix: int

    def key_fn(self) -> KeyFn:
        return key_style(self.key_style)

    def keys(self, arch: Arch, width_mult: float, n_classes: int) -> list[tuple[str, LayerSpec]]:
        fn = self.key_fn()
        return [(fn(s), s) for s in self.specs(arch, width_mult, n_classes)]


def _proxyless_specs(arch: Arch, width_mult: float, n_classes: int) -> list[LayerSpec]:
    return proxyless_layer_specs(arch, ProxylessConfig(width_mult=width_mult, n_classes=n_classes))


def _layouts() -> dict[str, BaseLayout]:
    return {
        "mbv3": BaseLayout("mbv3", "ofa-mbv3", _mbv3_specs, n_prefix=2),
        # Stem and the fixed first block, then the slots, then Conv_1 and Logits.
        "proxyless": BaseLayout("proxyless", "ofa-proxyless", _proxyless_specs, n_prefix=2),
    }


def layout(base: str) -> BaseLayout:
    all_layouts = _layouts()
    if base not in all_layouts:
        raise LutError(
            f"no latency-table layout for base {base!r}; known: {', '.join(all_layouts)}"
        )
    return all_layouts[base]


def key_style(name: str) -> KeyFn:
    if name not in KEY_STYLES:
        raise LutError(f"unknown key style {name!r}; known: {', '.join(KEY_STYLES)}")
    return KEY_STYLES[name]
