"""The unique layers a search space needs, enumerated from per-slot choices.

The OFA space has about 10^19 archs, but a table needs only the distinct layers: for every
resolution, the fixed layers plus, for each layer slot, each (kernel, expand) the slot can take
while active. That is a few hundred layers, found without enumerating a single arch.
"""

from __future__ import annotations

from collections.abc import Sequence

from compofa_bench.lut.keys import BaseLayout, layout
from compofa_bench.spaces import Arch, SearchSpace
from compofa_bench.supernet.geometry import LayerSpec


def slot_choices(space: SearchSpace) -> list[list[tuple[int, int]]]:
    """For each layer slot, the (kernel, expand) pairs it takes in some arch where it runs."""
    out: list[list[tuple[int, int]]] = []
    for stage, size in enumerate(space.stage_sizes):
        start = sum(space.stage_sizes[:stage])
        depths = space.depth_choices[stage]
        for layer in range(size):
            if space.coupling is not None:
                expands = sorted({e for d, e in space.coupling if d in depths and d > layer})
            else:
                expands = sorted(space.expand_choices) if max(depths) > layer else []
            kernels = space.kernel_choices[start + layer]
            out.append([(k, e) for k in kernels for e in expands])
    return out


def _probe_specs(
    lay: BaseLayout,
    resolution: int,
    kernel: int,
    expand: int,
    sizes: tuple[int, ...],
    width_mult: float,
    n_classes: int,
) -> tuple[list[LayerSpec], list[LayerSpec]]:
    n = sum(sizes)
    arch = Arch((kernel,) * n, (expand,) * n, tuple(sizes), resolution, tuple(sizes))
    specs = lay.specs(arch, width_mult, n_classes)
    p = lay.n_prefix
    return specs[:p] + specs[p + n :], specs[p : p + n]


def unique_layers(
    space: SearchSpace,
    resolutions: Sequence[int] | None = None,
    width_mult: float = 1.0,
    n_classes: int = 1000,
) -> dict[int, dict[str, LayerSpec]]:
    """``resolution -> key -> LayerSpec`` for every layer some arch of ``space`` runs."""
    lay = layout(space.base)
    key_fn = lay.key_fn()
    res = space.resolutions if resolutions is None else tuple(resolutions)
    choices = slot_choices(space)
    sizes = space.stage_sizes
    out: dict[int, dict[str, LayerSpec]] = {}
    for r in res:
        layers: dict[str, LayerSpec] = {}
        probes: dict[tuple[int, int], list[LayerSpec]] = {}
        for j, pairs in enumerate(choices):
            for k, e in pairs:
                if (k, e) not in probes:
                    fixed, slots = _probe_specs(lay, r, k, e, sizes, width_mult, n_classes)
                    probes[(k, e)] = slots
                    for s in fixed:
                        layers.setdefault(key_fn(s), s)
                spec = probes[(k, e)][j]
                layers.setdefault(key_fn(spec), spec)
        out[int(r)] = layers
    return out


def coverage(
    entries: dict[int, dict[str, object]],
    space: SearchSpace,
    width_mult: float = 1.0,
    n_classes: int = 1000,
) -> dict[int, dict[str, object]]:
    """Per resolution of ``space``: how many of the layers its archs use a table's ``entries``
    hold (``{"needed", "present", "missing_example"}``); a resolution the table lacks has
    ``present = 0``."""
    out: dict[int, dict[str, object]] = {}
    for r, keyed in unique_layers(space, width_mult=width_mult, n_classes=n_classes).items():
        have = entries.get(r, {})
        missing = sorted(k for k in keyed if k not in have)
        out[r] = {
            "needed": len(keyed),
            "present": len(keyed) - len(missing),
            "missing_example": missing[0] if missing else None,
        }
    return out
