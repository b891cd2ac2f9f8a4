"""How a table's layer latencies are measured: the build methods of ``lut build --method``.

Every method times *probes* (small models made of real layers) through the device's adapter
and protocol, then derives one latency per layer key, so that the table format, prediction,
OFA export and search never depend on the method. Why several: an isolated single-layer model
pays costs a layer inside a network does not (one runtime call per layer where a network pays
one in all; an input read from cold memory where a network's layer reads its predecessor's
output from cache) and misses what a network pays between layers. Each method corrects for
part of that:

``isolated``
    each layer alone; the sum of isolated layers (OFA's and nn-Meter's starting point).
``overhead``
    isolated, minus the cost of an empty model (one runtime call on a trivial graph) for every
    layer but the first, which keeps it: a network pays one call, not one per layer.
``chain``
    ``copies`` copies of each layer in one model; the per-copy cost is
    ``(T_copies - T_1) / (copies - 1)``, which cancels the call and leaves a warm input. A layer
    that keeps its shape is chained (each copy feeds the next, as inside a stage); any other is
    applied ``copies`` times to the same input (summing one element of each output, so the
    copies cannot be pruned).
``neighbours``
    each layer after a real predecessor (the layer that precedes it in some arch of the
    space): ``T(predecessor + layer) - T(predecessor)``.
``blocks``
    whole stages (every active layer of a stage at one kernel/expand, as networks run them) and
    the fixed head and tail; a block's time minus one empty call is shared among its layers in
    proportion to their isolated times.
``learned``
    a linear correction per layer type (stem, inverted residual per kernel size, the fixed
    tail), nn-Meter style, fitted on ``n_fit`` archs measured end to end during the build over
    the overhead-subtracted isolated times (ridge toward 1, so a type the fit archs barely
    use keeps its measured value).

In every method the first layer of a network (the stem) keeps its isolated time, which holds
the one call every network pays, and no derived value goes below ``floor`` times the layer's
isolated time (a difference of two noisy timings can be tiny or negative).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench.errors import LutError
from compofa_bench.lut.keys import layout
from compofa_bench.lut.layers import _probe_specs, slot_choices
from compofa_bench.spaces import Arch, SearchSpace
from compofa_bench.supernet.geometry import LayerSpec

if TYPE_CHECKING:
    import torch.nn as nn

#: The method ``lut build`` uses unless told otherwise. Set from benchmarks/lut_accuracy.py's
#: comparison on a quiet host (benchmarks/RESULTS.md, "lut build methods").
DEFAULT_METHOD = "isolated"

#: Mixed into the learned method's seed so its fit archs are not `lut validate`'s archs.
FIT_STREAM = 0x15

METHODS: dict[str, str] = {
    "isolated": "each layer as its own model",
    "overhead": "isolated minus an empty model's cost (kept once, in the stem)",
    "chain": "per-copy cost of K chained copies of each layer: (T_K - T_1) / (K - 1)",
    "neighbours": "each layer after a real predecessor: T(pred + layer) - T(pred)",
    "blocks": "whole stages, shared among their layers by isolated time",
    "learned": "isolated minus an empty call, times a per-type factor fitted end to end",
}


@dataclass(frozen=True)
class BuildMethod:
    """A build method and its settings (recorded in the table's provenance)."""

    name: str = DEFAULT_METHOD
    #: ``chain``: copies per chain (>= 2)
    copies: int = 4
    #: ``learned``: archs measured end to end for the fit
    n_fit: int = 24
    #: ``learned``: which archs (``default_rng([FIT_STREAM, seed])``) unless given to the plan
    seed: int = 0
    #: no derived latency below this share of the layer's isolated latency
    floor: float = 0.1
    #: ``learned``: ridge weight pulling each factor toward 1, per fit arch
    ridge: float = 0.01

    def __post_init__(self) -> None:
        if self.name not in METHODS:
            raise LutError(f"unknown build method {self.name!r}; known: {', '.join(METHODS)}")
        if self.copies < 2:
            raise LutError(f"a chain needs at least 2 copies, not {self.copies}")
        if self.n_fit < 3:
            raise LutError(f"the learned method needs at least 3 fit archs, not {self.n_fit}")
        if not 0 < self.floor <= 1:
            raise LutError(f"floor must be in (0, 1], not {self.floor}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "description": METHODS[self.name]}


# ============================================================================ probes


@dataclass(frozen=True)
class Probe:
    """One model to time.

    ``kind``: ``layer`` (one layer), ``empty`` (a trivial graph on ``specs[0]``'s input),
    ``chain`` (``copies`` copies of one layer), ``seq`` (layers in sequence: a predecessor and
    its layer, or a block)."""

    kind: str
    specs: tuple[LayerSpec, ...]
    keys: tuple[str, ...]
    copies: int = 1

    @property
    def name(self) -> str:
        if self.kind == "layer":
            return self.keys[0]
        if self.kind == "chain":
            return f"chain{self.copies}:{self.keys[0]}"
        if self.kind == "empty":
            return f"empty:{self.keys[0]}"
        return "seq:" + "|".join(self.keys)

    def module(self) -> nn.Module:
        from compofa_bench.lut.probe_modules import Empty, FanOut, Sequence_
        from compofa_bench.supernet import build_layer

        if self.kind == "layer":
            return build_layer(self.specs[0])
        if self.kind == "empty":
            return Empty().eval()
        if self.kind == "chain":
            spec = self.specs[0]
            # fresh random weights per copy: identical copies on one input could be merged by
            # a runtime's common-subexpression elimination
            copies = [build_layer(spec) for _ in range(self.copies)]
            if _keeps_shape(spec):
                return Sequence_(copies, [False] * len(copies)).eval()
            return FanOut(copies).eval()
        flatten = [False] + [_needs_flatten(a, b) for a, b in pairwise(self.specs)]
        return Sequence_([build_layer(s) for s in self.specs], flatten).eval()

    def input_shape(self, batch_size: int) -> tuple[int, ...]:
        from compofa_bench.supernet import layer_input_shape

        return layer_input_shape(self.specs[0], batch_size)


def _keeps_shape(spec: LayerSpec) -> bool:
    two_d = spec.kind == "Logits" and spec.in_hw <= 1
    return not two_d and spec.in_hw == spec.out_hw and spec.in_c == spec.out_c


def _needs_flatten(prev: LayerSpec, spec: LayerSpec) -> bool:
    """A 1x1 feature map feeding a classifier that takes (N, C), as the network flattens."""
    return spec.kind == "Logits" and spec.in_hw <= 1 and prev.kind != "Logits"


# ============================================================================ network positions


@dataclass
class _Positions:
    """The layers a space's networks run at one resolution, position by position."""

    prefix: list[tuple[str, LayerSpec]]
    slots: list[dict[tuple[int, int], tuple[str, LayerSpec]]]
    suffix: list[tuple[str, LayerSpec]]
    stage_of: list[int]
    sizes: tuple[int, ...]


def _positions(space: SearchSpace, r: int, width_mult: float, n_classes: int) -> _Positions:
    lay = layout(space.base)
    key_fn = lay.key_fn()
    choices = slot_choices(space)
    sizes = space.stage_sizes
    slots: list[dict[tuple[int, int], tuple[str, LayerSpec]]] = [{} for _ in choices]
    fixed: list[LayerSpec] | None = None
    for pair in sorted({p for c in choices for p in c}):
        fx, sl = _probe_specs(lay, r, pair[0], pair[1], sizes, width_mult, n_classes)
        fixed = fixed or fx
        for j, pairs in enumerate(choices):
            if pair in pairs:
                slots[j][pair] = (key_fn(sl[j]), sl[j])
    if fixed is None:
        raise LutError(f"space {space.name} has no layer choices")
    p = lay.n_prefix
    keyed = [(key_fn(s), s) for s in fixed]
    stage_of = [i for i, n in enumerate(sizes) for _ in range(n)]
    return _Positions(keyed[:p], slots, keyed[p:], stage_of, tuple(sizes))


def _pick(options: Mapping[tuple[int, int], tuple[str, LayerSpec]], pair: tuple[int, int] | None):
    """The option with ``pair`` when there is one, else the first (a deterministic choice)."""
    if pair is not None and pair in options:
        return options[pair]
    return options[sorted(options)[0]]


def _last_slot(pos: _Positions, before: int) -> int | None:
    """The last slot before index ``before`` that some arch runs."""
    for j in range(before - 1, -1, -1):
        if pos.slots[j]:
            return j
    return None


def _predecessors(pos: _Positions) -> list[tuple[tuple[str, LayerSpec], tuple[str, LayerSpec]]]:
    """(predecessor, layer) for every layer after the first: a layer that precedes it in some
    arch (the same kernel/expand when the predecessor can take them)."""
    out = []
    out.extend(pairwise(pos.prefix))
    for j, options in enumerate(pos.slots):
        for pair, item in sorted(options.items()):
            first_of_stage = j == 0 or pos.stage_of[j - 1] != pos.stage_of[j]
            if first_of_stage:
                prev_j = _last_slot(pos, j)
                pred = pos.prefix[-1] if prev_j is None else _pick(pos.slots[prev_j], pair)
            else:
                pred = _pick(pos.slots[j - 1], pair)
            out.append((pred, item))
    last = _last_slot(pos, len(pos.slots))
    tail = pos.suffix
    if tail:
        out.append((pos.prefix[-1] if last is None else _pick(pos.slots[last], None), tail[0]))
    out.extend(pairwise(tail))
    return out


def _blocks(pos: _Positions) -> list[list[tuple[str, LayerSpec]]]:
    """The head (prefix), one block per stage and kernel/expand (the stage's slots that take
    it, from its first, as networks run them) and the tail."""
    blocks = [list(pos.prefix)]
    start = 0
    for size in pos.sizes:
        stage = list(range(start, start + size))
        for pair in sorted(pos.slots[stage[0]]) if stage else []:
            run = []
            for j in stage:
                if pair not in pos.slots[j]:
                    break
                run.append(pos.slots[j][pair])
            blocks.append(run)
        start += size
    blocks.append(list(pos.suffix))
    return [b for b in blocks if b]


# ============================================================================ plans


@dataclass
class Plan:
    """The probes a method times, and how their medians become per-layer latencies.

    ``combine(medians)`` maps ``{probe name: median ms}`` (and, for ``learned``, the fit
    archs' end-to-end medians in ``fit_ms``) to ``{resolution: {key: ms}}``."""

    method: BuildMethod
    probes: dict[str, Probe]
    combine: Callable[[Mapping[str, float], Sequence[float] | None], dict[int, dict[str, float]]]
    fit_archs: list[Arch] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


def make_plan(
    method: BuildMethod,
    space: SearchSpace,
    layers: Mapping[int, Mapping[str, LayerSpec]],
    *,
    width_mult: float = 1.0,
    n_classes: int = 1000,
    fit_archs: Sequence[Arch] | None = None,
) -> Plan:
    """The probes of ``method`` for ``layers`` (``unique_layers(space)``), and their combiner.

    ``fit_archs`` (``learned`` only) overrides the ``method.n_fit`` archs drawn from ``space``
    with ``method.seed``."""
    iso = {k: Probe("layer", (s,), (k,)) for keyed in layers.values() for k, s in keyed.items()}
    probes: dict[str, Probe] = {p.name: p for p in iso.values()}
    pos = {r: _positions(space, r, width_mult, n_classes) for r in layers}
    stems = {r: p.prefix[0] for r, p in pos.items()}
    empties = {r: Probe("empty", (s,), (k,)) for r, (k, s) in stems.items()}
    floor = method.floor

    def add(p: Probe) -> Probe:
        probes.setdefault(p.name, p)
        return p

    def iso_ms(med: Mapping[str, float], key: str) -> float:
        return med[iso[key].name]

    def clamp(value: float, key: str, med: Mapping[str, float]) -> float:
        return max(value, floor * iso_ms(med, key))

    name = method.name
    details: dict[str, Any] = {}
    if name == "isolated":

        def combine(med, fit_ms=None):
            return {r: {k: iso_ms(med, k) for k in keyed} for r, keyed in layers.items()}

        return Plan(method, probes, combine)

    if name in ("overhead", "blocks", "learned"):
        for p in empties.values():
            add(p)

    if name == "overhead":

        def combine(med, fit_ms=None):
            out = {}
            for r, keyed in layers.items():
                c = med[empties[r].name]
                out[r] = {
                    k: iso_ms(med, k) if k == stems[r][0] else clamp(iso_ms(med, k) - c, k, med)
                    for k in keyed
                }
            return out

        return Plan(method, probes, combine)

    if name == "chain":
        chains = {k: add(Probe("chain", p.specs, p.keys, method.copies)) for k, p in iso.items()}

        def combine(med, fit_ms=None):
            out = {}
            n = method.copies
            for r, keyed in layers.items():
                out[r] = {}
                for k in keyed:
                    if k == stems[r][0]:
                        out[r][k] = iso_ms(med, k)
                        continue
                    per_copy = (med[chains[k].name] - iso_ms(med, k)) / (n - 1)
                    out[r][k] = clamp(per_copy, k, med)
            return out

        return Plan(method, probes, combine)

    if name == "neighbours":
        pairs: dict[int, dict[str, list[tuple[str, Probe]]]] = {}
        for r, p in pos.items():
            pairs[r] = {}
            for (pk, ps), (k, s) in _predecessors(p):
                if k not in layers[r]:
                    continue
                probe = add(Probe("seq", (ps, s), (pk, k)))
                add(Probe("layer", (ps,), (pk,)))
                pairs[r].setdefault(k, []).append((pk, probe))

        def combine(med, fit_ms=None):
            out = {}
            for r, keyed in layers.items():
                out[r] = {}
                for k in keyed:
                    found = pairs[r].get(k)
                    if k == stems[r][0] or not found:
                        out[r][k] = iso_ms(med, k)
                        continue
                    diffs = [med[pr.name] - med[pk] for pk, pr in found]
                    out[r][k] = clamp(float(np.median(diffs)), k, med)
            return out

        return Plan(method, probes, combine)

    if name == "blocks":
        blocks = {
            r: [(add(Probe("seq", tuple(s for _, s in b), tuple(k for k, _ in b))), b) for b in bl]
            for r, p in pos.items()
            for bl in [_blocks(p)]
        }

        def combine(med, fit_ms=None):
            out = {}
            for r, keyed in layers.items():
                c = med[empties[r].name]
                factors: dict[str, list[float]] = {}
                for probe, block in blocks[r]:
                    ks = [k for k, _ in block]
                    total = med[probe.name]
                    if ks[0] == stems[r][0]:
                        # the stem keeps its isolated time (and the call); the rest share the rest
                        total -= iso_ms(med, ks[0])
                        ks = ks[1:]
                    else:
                        total -= c
                    if not ks:
                        continue
                    f = total / sum(iso_ms(med, k) for k in ks)
                    for k in ks:
                        factors.setdefault(k, []).append(f)
                out[r] = {}
                for k in keyed:
                    if k == stems[r][0] or k not in factors:
                        out[r][k] = iso_ms(med, k)
                    else:
                        out[r][k] = clamp(iso_ms(med, k) * float(np.mean(factors[k])), k, med)
            return out

        return Plan(method, probes, combine)

    # learned
    if fit_archs is None:
        # a stream of its own: `lut validate --seed S` draws default_rng(S), and the fit archs
        # must not be the first validation archs
        fit = space.sample_many(method.n_fit, np.random.default_rng([FIT_STREAM, method.seed]))
    else:
        fit = list(fit_archs)
    if len(fit) < 3:
        raise LutError(f"the learned method needs at least 3 fit archs, got {len(fit)}")
    lay = layout(space.base)
    groups = _groups(layers)
    details["groups"] = groups

    def combine(med, fit_ms=None):
        if fit_ms is None or len(fit_ms) != len(fit):
            raise LutError("the learned method needs the fit archs' end-to-end latencies")
        net = {r: {k: iso_ms(med, k) - med[empties[r].name] for k in keyed}
               for r, keyed in layers.items()}  # fmt: skip
        for r in net:  # the stem keeps the call every network pays
            net[r][stems[r][0]] = iso_ms(med, stems[r][0])
        x = np.zeros((len(fit), len(groups)))
        for i, arch in enumerate(fit):
            for k, s in lay.keys(arch, width_mult, n_classes):
                x[i, groups.index(_group(s))] += net[arch.resolution][k]
        m = np.asarray(fit_ms, dtype=float)
        factors = np.maximum(_ridge_to_one(x, m, method.ridge), floor)
        details["factors"] = dict(zip(groups, factors.tolist(), strict=True))
        out = {}
        for r, keyed in layers.items():
            out[r] = {}
            for k, s in keyed.items():
                value = net[r][k] * factors[groups.index(_group(s))]
                out[r][k] = value if k == stems[r][0] else clamp(value, k, med)
        return out

    return Plan(method, probes, combine, fit_archs=fit, details=details)


def _group(spec: LayerSpec) -> str:
    """nn-Meter's kernel types, at the granularity these networks have."""
    if spec.kind == "expanded_conv":
        return f"expanded_conv-k{spec.kernel}"
    if spec.kind == "Conv":
        return "stem"
    return "tail"  # Conv_1, AvgPool2D, Conv_2, Logits: fixed per resolution


def _groups(layers: Mapping[int, Mapping[str, LayerSpec]]) -> list[str]:
    return sorted({_group(s) for keyed in layers.values() for s in keyed.values()})


def _ridge_to_one(x: np.ndarray, m: np.ndarray, ridge: float) -> np.ndarray:
    """Factors ``a`` minimizing ``sum(((m - x a) / m)^2) + ridge * n * sum((a - 1)^2)``:
    relative errors (the goals are percentages), pulled toward 1 (no correction)."""
    w = 1.0 / m
    a = x * w[:, None]
    b = m * w
    lam = ridge * len(m)
    lhs = a.T @ a + lam * np.eye(x.shape[1])
    rhs = a.T @ b + lam * np.ones(x.shape[1])
    return np.linalg.solve(lhs, rhs)
