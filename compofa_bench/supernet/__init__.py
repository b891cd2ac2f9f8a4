"""Weight-shared once-for-all supernets: build, select, extract, count.

Typical use::

    from compofa_bench import spaces, supernet

    net = supernet.build("mbv3", width_mult=1.0)               # or "proxyless" (w1.0, w1.3)
    net.load_checkpoint("ofa_mbv3_d234_e346_k357_w1.0")      # OFA or CompOFA file
    arch = spaces.get("compofa").sample(np.random.default_rng(0))
    net.set_active(arch); logits = net(images)                 # run inside the supernet
    sub = net.extract(arch)                                    # standalone static nn.Module
    supernet.count_macs(arch, width_mult=1.0)                  # from geometry, no model built

Counting and geometry never build a model: they read the :class:`LayerSpec` list of an arch.
"""

from __future__ import annotations

from compofa_bench.errors import SupernetError
from compofa_bench.spaces import Arch
from compofa_bench.supernet.bn import recalibrate_bn
from compofa_bench.supernet.counting import layer_macs, layer_params, total_macs, total_params
from compofa_bench.supernet.geometry import (
    LayerSpec,
    MBV3Config,
    ProxylessConfig,
    mbv3_layer_specs,
    proxyless_layer_specs,
)
from compofa_bench.supernet.net_config import arch_from_net_config
from compofa_bench.supernet.network import ElasticSupernet, SupernetConfig
from compofa_bench.supernet.static_layers import StaticNet, build_layer, layer_input_shape

#: Supernet bases this package can build.
BASES = ("mbv3", "proxyless")

__all__ = [
    "BASES",
    "ElasticSupernet",
    "LayerSpec",
    "StaticNet",
    "SupernetConfig",
    "arch_from_net_config",
    "build",
    "build_layer",
    "count_macs",
    "count_params",
    "layer_input_shape",
    "layer_macs",
    "layer_params",
    "layer_specs",
    "recalibrate_bn",
]


def _check_base(base: str) -> None:
    if base not in BASES:
        raise SupernetError(f"unknown supernet base {base!r}; known: {', '.join(BASES)}")


def build(
    base: str = "mbv3",
    width_mult: float = 1.0,
    n_classes: int = 1000,
    dropout_rate: float = 0.1,
) -> ElasticSupernet:
    """A randomly initialised supernet with OFA's structure and state-dict key names
    (kernels 3/5/7, expand 3/4/6, depth up to 4). Load weights with ``load_checkpoint``."""
    _check_base(base)
    if base == "proxyless":
        from compofa_bench.supernet.proxyless import build_proxyless

        return build_proxyless(
            width_mult=width_mult, n_classes=n_classes, dropout_rate=dropout_rate
        )
    from compofa_bench.supernet.mbv3 import build_mbv3

    return build_mbv3(width_mult=width_mult, n_classes=n_classes, dropout_rate=dropout_rate)


def layer_specs(
    arch: Arch, width_mult: float = 1.0, base: str = "mbv3", n_classes: int = 1000
) -> list[LayerSpec]:
    """Every layer ``arch`` runs, in order (see :mod:`geometry`)."""
    _check_base(base)
    if width_mult <= 0:
        raise SupernetError(f"width_mult must be positive, got {width_mult}")
    if n_classes < 1:
        raise SupernetError(f"n_classes must be >= 1, got {n_classes}")
    if base == "proxyless":
        return proxyless_layer_specs(
            arch, ProxylessConfig(width_mult=width_mult, n_classes=n_classes)
        )
    return mbv3_layer_specs(arch, MBV3Config(width_mult=width_mult, n_classes=n_classes))


def count_macs(
    arch: Arch, width_mult: float = 1.0, base: str = "mbv3", n_classes: int = 1000
) -> int:
    """Multiply-accumulates of one image through ``arch`` (OFA's ``count_net_flops``)."""
    return total_macs(layer_specs(arch, width_mult, base, n_classes))


def count_params(
    arch: Arch, width_mult: float = 1.0, base: str = "mbv3", n_classes: int = 1000
) -> int:
    """Trainable parameters of the extracted ``arch`` (OFA's ``count_parameters``)."""
    return total_params(layer_specs(arch, width_mult, base, n_classes))
