"""The cost and accuracy model of a search: the source protocols, the additive cost model
(a numpy gather compiled from a source and verified against it), and the pricer and the
memoized scorer that the algorithms call."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from compofa_bench.encoding import ArchArrays, active_mask, index_of, take
from compofa_bench.errors import SearchError
from compofa_bench.search.genome import Genome, arch_keys, to_arch
from compofa_bench.spaces import Arch, SearchSpace


@runtime_checkable
class LatencySource(Protocol):
    """Anything that prices archs. ``unit`` is ``"ms"`` or ``"MMACs"``."""

    name: str
    unit: str

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray: ...


@runtime_checkable
class AccuracySource(Protocol):
    """Scores archs; higher is better. ``is_proxy`` marks a score that is not an accuracy."""

    label: str
    is_proxy: bool

    def score(self, arr: ArchArrays) -> np.ndarray: ...


@dataclass
class AdditiveModel:
    """Cost = ``fixed[r] + sum over active slots of per_slot[r, slot, kernel, expand]``.

    Exact for lookup tables and MAC counts, whose totals are sums over layers and whose layer
    shapes depend only on position, kernel, expand ratio and resolution. ``NaN`` marks a
    combination the source cannot price (a table built for another space).
    """

    stage_sizes: tuple[int, ...]
    resolutions: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    fixed: np.ndarray
    per_slot: np.ndarray
    #: set once the model has been checked against its source (see Pricer)
    verified: bool = False

    def slot_prices(self) -> np.ndarray:
        """``per_slot`` with the combinations the source cannot price at +inf, for choosing
        the cheapest option (a NaN would win or poison a minimum)."""
        return np.where(np.isnan(self.per_slot), np.inf, self.per_slot)

    def evaluate(self, arr: ArchArrays) -> np.ndarray:
        active = active_mask(arr.d, self.stage_sizes)
        ri = index_of(arr.r, self.resolutions, "resolution")
        ki = index_of(np.where(active, arr.ks, self.kernels[0]), self.kernels, "kernel")
        ei = index_of(np.where(active, arr.e, self.expands[0]), self.expands, "expand ratio")
        slots = np.arange(active.shape[1])[None, :]
        vals = np.where(active, self.per_slot[ri[:, None], slots, ki, ei], 0.0)
        return self.fixed[ri] + vals.sum(axis=1)


def all_expands(space: SearchSpace) -> tuple[int, ...]:
    return tuple(sorted(set(space.expand_choices) | {e for _, e in space.coupling or ()}))


def all_kernels(space: SearchSpace) -> tuple[int, ...]:
    return tuple(sorted({k for ch in space.kernel_choices for k in ch}))


def compile_by_differences(
    cost: Callable[[Sequence[Arch]], np.ndarray], space: SearchSpace
) -> AdditiveModel:
    """Recover the per-layer terms of an additive ``cost`` from whole-arch probes.

    Base probe: every stage at full depth, every slot at the first (kernel, expand). Changing
    one slot gives that slot's term relative to the base; lowering one stage's depth gives the
    base terms of the slots it drops. Probes may leave the space (any arch is priced).
    """
    sizes = space.stage_sizes
    n = sum(sizes)
    kernels, expands = all_kernels(space), all_expands(space)
    full = tuple(sizes)
    k0, e0 = kernels[0], expands[0]
    probes: list[Arch] = []
    for r in space.resolutions:
        probes.append(Arch((k0,) * n, (e0,) * n, full, r, sizes))
        for s in range(n):
            for k in kernels:
                for x in expands:
                    ks = [k0] * n
                    es = [e0] * n
                    ks[s], es[s] = k, x
                    probes.append(Arch(tuple(ks), tuple(es), full, r, sizes))
        for st, size in enumerate(sizes):
            for depth in range(1, size):
                d = list(full)
                d[st] = depth
                probes.append(Arch((k0,) * n, (e0,) * n, tuple(d), r, sizes))
    values = np.asarray(cost(probes), dtype=np.float64)
    nr, nk, ne = len(space.resolutions), len(kernels), len(expands)
    fixed = np.zeros(nr)
    per_slot = np.zeros((nr, n, nk, ne))
    i = 0
    for ri in range(nr):
        base = values[i]
        i += 1
        rel = values[i : i + n * nk * ne].reshape(n, nk, ne) - base
        i += n * nk * ne
        # base term of a slot: drop(depth=j) - drop(depth=j+1) along each stage
        base_term = np.zeros(n)
        start = 0
        for size in sizes:
            drops = [0.0] * (size + 1)  # drops[j] = cost removed when depth is j
            for depth in range(1, size):
                drops[depth] = base - values[i]
                i += 1
            for j in range(1, size):
                base_term[start + j] = drops[j] - drops[j + 1]
            start += size
        # slot 0 of each stage is always active: fold its base term into the fixed part
        per_slot[ri] = rel + base_term[:, None, None]
        fixed[ri] = base - base_term.sum()
    return AdditiveModel(sizes, space.resolutions, kernels, expands, fixed, per_slot)


class CachedScore:
    """Memoizes an accuracy source by arch: late in an evolution most children (about 80% in
    OFA's setting) repeat archs already scored, and the predictor forward is the main cost."""

    def __init__(self, source: AccuracySource, stage_sizes: tuple[int, ...]) -> None:
        self.source, self.stage_sizes = source, stage_sizes
        self._memo: dict[bytes, float] = {}
        self.calls = 0
        self.scored = 0

    def __call__(self, a: ArchArrays) -> np.ndarray:
        keys = arch_keys(a, self.stage_sizes)
        self.calls += len(keys)
        memo = self._memo
        new: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in memo and k not in new:
                new[k] = i
        if new:
            idx = np.fromiter(new.values(), dtype=np.int64, count=len(new))
            vals = np.asarray(self.source.score(take(a, idx)), dtype=np.float64)
            memo.update(zip(new.keys(), vals.tolist(), strict=True))
            self.scored += len(new)
        return np.fromiter((memo[k] for k in keys), dtype=np.float64, count=len(keys))


class Pricer:
    """Prices gene arrays with a latency source: through its additive model when it has one
    (verified on random members first), else per new arch with memoization."""

    def __init__(
        self,
        source: LatencySource,
        space: SearchSpace,
        verify: int = 16,
    ) -> None:
        self.source, self.space = source, space
        self.model: AdditiveModel | None = None
        self._memo: dict[Arch, float] = {}
        make = getattr(source, "additive", None)
        if make is not None:
            self.model = make(space)
            if verify and not self.model.verified:
                # a fixed generator: the check must not consume the search's random stream
                self._verify(np.random.default_rng(0), verify)
                self.model.verified = True

    def _verify(self, rng: np.random.Generator, n: int) -> None:
        assert self.model is not None
        probe = Genome(self.space).sample(n, rng)
        archs = [to_arch(probe, i, self.space.stage_sizes) for i in range(n)]
        want = np.asarray(self.source.latency_ms(archs), dtype=np.float64)
        got = self.model.evaluate(probe)
        if not np.allclose(got, want, rtol=1e-6, atol=1e-9):
            worst = float(np.max(np.abs(got - want)))
            raise SearchError(
                f"the latency source {self.source.name} is not additive over layers as "
                f"expected (difference up to {worst:.4g} {self.source.unit}); this is a bug"
            )

    def __call__(self, a: ArchArrays) -> np.ndarray:
        if self.model is not None:
            out = self.model.evaluate(a)
            if np.isnan(out).any():
                # Let the source name the missing keys in its own words.
                i = int(np.nonzero(np.isnan(out))[0][0])
                self.source.latency_ms([to_arch(a, i, self.space.stage_sizes)])
                raise SearchError(f"{self.source.name} cannot price some archs of the space")
            return out
        archs = [to_arch(a, i, self.space.stage_sizes) for i in range(len(a))]
        new = [x for x in dict.fromkeys(archs) if x not in self._memo]
        if new:
            for x, v in zip(new, self.source.latency_ms(new), strict=True):
                self._memo[x] = float(v)
        return np.array([self._memo[x] for x in archs], dtype=np.float64)

    def fastest(self) -> tuple[Arch, float]:
        """The fastest member: exact for additive sources, else the fastest of the smallest
        arch at each resolution (the fastest that exists under any sane cost)."""
        sp = self.space
        if self.model is None:
            cands = [sp.smallest(r) for r in sp.resolutions]
            cost = self.source.latency_ms(cands)
            i = int(np.argmin(cost))
            return cands[i], float(cost[i])
        g = Genome(sp)
        best: tuple[float, ArchArrays] | None = None
        m = self.model
        # per slot, its cheapest allowed (kernel, expand) under each expand set, all slots at
        # once
        price = m.slot_prices()
        k_ok = np.array([[k in sp.kernel_choices[s] for k in m.kernels] for s in range(g.n_slots)])
        for r in sp.resolutions:
            ri = m.resolutions.index(r)
            ks = np.zeros(g.n_slots, dtype=np.int64)
            es = np.zeros(g.n_slots, dtype=np.int64)
            d = np.zeros(g.n_stages, dtype=np.int64)
            start = 0
            for st, size in enumerate(sp.stage_sizes):
                choice = None
                sl = slice(start, start + size)
                for depth, ce in sp.stage_genes(st):
                    exps = [ce] if ce is not None else list(sp.expand_choices)
                    e_ok = np.isin(m.expands, exps)
                    ok = k_ok[sl, :, None] & e_ok[None, None, :]
                    p = np.where(ok, price[ri, sl], np.inf).reshape(size, -1)
                    j = np.argmin(p, axis=1)
                    cost = float(p[np.arange(size), j][:depth].sum())
                    kk = np.asarray(m.kernels)[j // len(m.expands)]
                    ee = np.asarray(m.expands)[j % len(m.expands)]
                    if choice is None or cost < choice[0]:
                        choice = (cost, depth, kk, ee)
                assert choice is not None
                d[st] = choice[1]
                ks[sl] = choice[2]
                es[sl] = choice[3]
                start += size
            arr = ArchArrays(ks[None], es[None], d[None], np.array([r]))
            total = float(self(arr)[0])
            if best is None or total < best[0]:
                best = (total, arr)
        assert best is not None
        return to_arch(best[1], 0, sp.stage_sizes), best[0]
