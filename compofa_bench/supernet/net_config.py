"""Archs from OFA's specialized network configs (``net.config`` JSON of a static subnet).

OFA publishes its specialized subnets (``ofa_specialized/<name>/net.config``) as full layer
configs rather than ``{"ks", "e", "d"}`` dicts. :func:`arch_from_net_config` recovers the arch
and the supernet width from such a config (MobileNetV3 only), so the subnet can be extracted
from a supernet, counted, profiled or looked up like any other arch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from compofa_bench.errors import ArchError
from compofa_bench.spaces import MBV3_STAGE_SIZES, Arch
from compofa_bench.supernet.geometry import MBV3Config, middle_channels

#: Widths tried when recovering the supernet width from a config.
KNOWN_WIDTHS = (1.0, 1.2)


def _block_body(block: Mapping[str, Any]) -> Mapping[str, Any]:
    body = block.get("conv", block.get("mobile_inverted_conv"))
    if not isinstance(body, Mapping):
        raise ArchError("net config block has no 'conv' / 'mobile_inverted_conv' layer")
    return body


def arch_from_net_config(
    config: Mapping[str, Any], resolution: int, width_mults: Sequence[float] = KNOWN_WIDTHS
) -> tuple[Arch, float]:
    """``(arch, width_mult)`` of an OFA MobileNetV3 ``net.config`` at ``resolution``.

    Raises :class:`ArchError` when the config is not a subnet of the MobileNetV3 OFA supernet
    (other network, unknown width, a stage deeper than 4, an expand ratio whose middle width
    disagrees with the supernet's rounding)."""
    if not isinstance(config, Mapping) or config.get("name") != "MobileNetV3":
        name = config.get("name") if isinstance(config, Mapping) else type(config).__name__
        raise ArchError(f"not a MobileNetV3 net config (name: {name!r})")
    try:
        stem_c = int(config["first_conv"]["out_channels"])
        bodies = [_block_body(b) for b in config["blocks"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArchError(f"malformed net config: {exc!r}") from None
    if len(bodies) < 2:
        raise ArchError("net config has no elastic blocks")
    widths_seen = [int(b["out_channels"]) for b in bodies[1:]]
    stage_widths = list(dict.fromkeys(widths_seen))
    width_mult = next(
        (
            w
            for w in width_mults
            if MBV3Config(width_mult=w).widths[0] == stem_c
            and list(MBV3Config(width_mult=w).widths[2:]) == stage_widths
        ),
        None,
    )
    if width_mult is None:
        raise ArchError(
            f"stem {stem_c} and stage widths {stage_widths} match no MobileNetV3 supernet width "
            f"in {list(width_mults)}"
        )
    ks: list[int] = []
    e: list[int] = []
    d: list[int] = []
    for stage_c, size in zip(stage_widths, MBV3_STAGE_SIZES, strict=True):
        stage = [b for b in bodies[1:] if int(b["out_channels"]) == stage_c]
        if not 1 <= len(stage) <= size:
            raise ArchError(f"stage of width {stage_c} has {len(stage)} blocks; at most {size}")
        d.append(len(stage))
        for b in stage:
            k, ratio, in_c = int(b["kernel_size"]), b["expand_ratio"], int(b["in_channels"])
            mid = b.get("mid_channels")
            if float(ratio) != int(ratio):
                raise ArchError(f"expand ratio {ratio} is not an integer")
            if mid is not None and int(mid) != middle_channels(in_c, int(ratio)):
                raise ArchError(
                    f"block {in_c}->{stage_c}: mid_channels {mid} disagrees with expand ratio "
                    f"{ratio} ({middle_channels(in_c, int(ratio))})"
                )
            ks.append(k)
            e.append(int(ratio))
        pad = size - len(stage)
        ks.extend([ks[-1]] * pad)
        e.extend([e[-1]] * pad)
    return Arch(tuple(ks), tuple(e), tuple(d), int(resolution)), width_mult
