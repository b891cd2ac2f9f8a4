"""Architecture search under latency (or MACs) constraints.

Two strategies, one entry point (:func:`search`) that serves many targets per call:

- **exhaustive**: when the space times its resolutions is small (CompOFA: 243 x R), every
  member is scored once and each target gets its true optimum;
- **evolution**: OFA's regularized evolution (population, parent ratio, mutation ratio and
  probability, crossover), with CompOFA-aware genes: in a coupled space a stage's depth and
  expand ratio are one gene, in mutation and crossover alike. All targets evolve side by side,
  so one predictor forward pass scores every target's children at once.

Populations are integer arrays (:class:`~compofa_bench.encoding.ArchArrays`), never lists of
dicts. Latency sources that are sums of per-layer values (lookup tables, MACs) are compiled
into an :class:`AdditiveModel`, a numpy gather, and checked against the source before use.
Sources that are not additive (measurement on a device) are called per new arch and memoized.

Infeasible children are redrawn a bounded number of times and then replaced by their parent;
a target below the fastest member is reported with the fastest latency available. There is no
unbounded rejection loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

from compofa_bench.encoding import ArchArrays, active_mask, fill_inactive, index_of, take
from compofa_bench.errors import LutError, SearchError
from compofa_bench.knapsack import linearized_optima
from compofa_bench.spaces import Arch, SearchSpace

# =============================================================================== sources


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


def _all_expands(space: SearchSpace) -> tuple[int, ...]:
    return tuple(sorted(set(space.expand_choices) | {e for _, e in space.coupling or ()}))


def _all_kernels(space: SearchSpace) -> tuple[int, ...]:
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
    kernels, expands = _all_kernels(space), _all_expands(space)
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


class MacsLatency:
    """MACs (in millions) as the constraint: ``latency_ms`` returns MMACs, ``unit`` says so."""

    unit = "MMACs"

    def __init__(self, width_mult: float = 1.0, base: str = "mbv3", n_classes: int = 1000) -> None:
        self.width_mult, self.base, self.n_classes = width_mult, base, n_classes
        self.name = f"macs (w{width_mult:g})"
        self._models: dict[tuple[Any, ...], AdditiveModel] = {}

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        from compofa_bench import supernet

        return np.array(
            [
                supernet.count_macs(
                    a, width_mult=self.width_mult, base=self.base, n_classes=self.n_classes
                )
                / 1e6
                for a in archs
            ],
            dtype=np.float64,
        )

    def additive(self, space: SearchSpace) -> AdditiveModel:
        key = (space.name, space.resolutions, space.stage_sizes)
        if key not in self._models:
            self._models[key] = compile_by_differences(self.latency_ms, space)
        return self._models[key]


class LutLatency:
    """Latency predicted by a :class:`compofa_bench.lut.LatencyTable`."""

    unit = "ms"

    def __init__(
        self,
        table: Any,
        width_mult: float | None = None,
        allow_width_mismatch: bool = False,
        name: str | None = None,
    ) -> None:
        self.table = table
        self.width_mult = width_mult
        self.allow_width_mismatch = allow_width_mismatch
        self.name = name or f"lut ({table.provenance.get('source', 'table')})"

    @classmethod
    def from_file(
        cls, path: str, width_mult: float | None = None, allow_width_mismatch: bool = False
    ) -> LutLatency:
        from compofa_bench.lut import LatencyTable

        return cls(LatencyTable.load(path), width_mult, allow_width_mismatch, f"lut:{path}")

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray(
            self.table.predict_ms(
                list(archs),
                width_mult=self.width_mult,
                allow_width_mismatch=self.allow_width_mismatch,
            ),
            dtype=np.float64,
        )

    def additive(self, space: SearchSpace) -> AdditiveModel:
        """Per-layer values read straight from the table (NaN where it lacks a key); built
        once per space and resolution set."""
        key = (
            space.stage_sizes,
            space.resolutions,
            space.kernel_choices,
            space.expand_choices,
            space.coupling,
        )
        cache: dict[Any, AdditiveModel] = self.__dict__.setdefault("_models", {})
        if key not in cache:
            cache[key] = self._build_additive(space)
        return cache[key]

    def _build_additive(self, space: SearchSpace) -> AdditiveModel:
        t = self.table
        t._check_width(self.width_mult, self.allow_width_mismatch)
        missing_res = [r for r in space.resolutions if r not in t.resolutions]
        if missing_res:
            raise LutError(
                f"the table has resolutions {list(t.resolutions)}; search asked for "
                f"{missing_res}: pick --resolutions from the table's"
            )
        sizes = space.stage_sizes
        n = sum(sizes)
        kernels, expands = _all_kernels(space), _all_expands(space)
        prefix = t.layout.n_prefix
        fixed = np.full(len(space.resolutions), np.nan)
        per_slot = np.full((len(space.resolutions), n, len(kernels), len(expands)), np.nan)
        for ri, r in enumerate(space.resolutions):
            for ki, k in enumerate(kernels):
                for ei, x in enumerate(expands):
                    keys = t.keys(Arch((k,) * n, (x,) * n, tuple(sizes), r, sizes))
                    for s, key in enumerate(keys[prefix : prefix + n]):
                        v = t.value(r, key)
                        per_slot[ri, s, ki, ei] = np.nan if v is None else v
                    if ki == 0 and ei == 0:
                        vals = [t.value(r, key) for key in keys[:prefix] + keys[prefix + n :]]
                        if all(v is not None for v in vals):
                            fixed[ri] = sum(vals)
        cal = getattr(t, "calibration", None)
        if cal is not None:
            # overhead + scale_r * (fixed + sum of slots) is itself additive: fold it in so the
            # model stays a plain gather (and Pricer checks the fold against predict_ms)
            scales = np.array([cal.scale_for(r) for r in space.resolutions])
            fixed = cal.overhead_ms + scales * fixed
            per_slot = scales[:, None, None, None] * per_slot
        return AdditiveModel(sizes, space.resolutions, kernels, expands, fixed, per_slot)


class MeasuredLatency:
    """Latency measured on a device. Results go to the results store, keyed by arch (with
    resolution) and device fingerprint, so a repeated search measures nothing twice (CompOFA
    section 5.7's memoized on-device search)."""

    unit = "ms"

    def __init__(
        self,
        device: str,
        store_path: str,
        width_mult: float = 1.0,
        base: str = "mbv3",
        n_classes: int = 1000,
        space: str | None = None,
        show_progress: bool = True,
        protocol_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.device, self.store_path = device, store_path
        self.width_mult, self.base, self.n_classes = width_mult, base, n_classes
        self.space, self.show_progress = space, show_progress
        self.protocol_overrides = dict(protocol_overrides or {})
        self.name = f"measured on {device}"
        self._memo: dict[Arch, float] = {}

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        todo = [a for a in dict.fromkeys(archs) if a not in self._memo]
        if todo:
            from compofa_bench import devices, profile
            from compofa_bench.store import ResultStore
            from compofa_bench.timing_run import RunOptions

            spec = devices.load_device(self.device)
            with ResultStore(self.store_path) as store:
                runs = profile.profile_archs(
                    todo,
                    [spec],
                    store,
                    space=self.space,
                    base=self.base,
                    width_mult=self.width_mult,
                    n_classes=self.n_classes,
                    show_progress=self.show_progress,
                    protocol_overrides=self.protocol_overrides,
                    # memoization: a stored row answers, contended or not; the winners are
                    # re-measured and checked after the search (compofa_bench.verdict)
                    run=RunOptions(accept_unstable=True),
                )
                got = store.lookup_many(
                    [a.key() for a in todo],
                    fingerprint_hash=runs[0].fingerprint_hash,
                    protocol_hash=runs[0].protocol_hash,
                    width_mult=self.width_mult,
                )
            missing = [a.key() for a in todo if a.key() not in got]
            if missing:
                raise SearchError(
                    f"{len(missing)} arch(s) could not be measured on {self.device} "
                    f"(first: {missing[0]}); see `compofa-bench results` for the errors"
                )
            for a in todo:
                self._memo[a] = float(got[a.key()])
        return np.array([self._memo[a] for a in archs], dtype=np.float64)


class PredictorAccuracy:
    """An :class:`~compofa_bench.predictor.AccuracyPredictor` as a search score."""

    is_proxy = False

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.label = predictor.label

    def score(self, arr: ArchArrays) -> np.ndarray:
        return self.predictor.predict(arr)


class MacsProxy:
    """MACs as a stand-in for accuracy (bigger nets are usually more accurate). Every output
    that uses it says ``accuracy proxy: MACs`` because it is not an accuracy."""

    is_proxy = True
    label = "MACs proxy (not an accuracy: higher MACs ranked as better)"

    def __init__(self, space: SearchSpace, width_mult: float = 1.0, n_classes: int = 1000) -> None:
        self.model = MacsLatency(width_mult, space.base, n_classes).additive(space)

    def score(self, arr: ArchArrays) -> np.ndarray:
        return self.model.evaluate(arr)


# =============================================================================== genes


class Genome:
    """Vectorized sampling, mutation and crossover of a space's archs as arrays.

    Genes: the resolution; per slot a kernel; per stage a depth gene which in coupled spaces
    also fixes the stage's expand ratio; in uncoupled spaces per slot an expand ratio.
    Semantics follow :meth:`SearchSpace.sample`, :meth:`~SearchSpace.mutate` and
    :meth:`~SearchSpace.crossover`.
    """

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        sizes = space.stage_sizes
        self.n_slots = sum(sizes)
        self.n_stages = len(sizes)
        self.slot_stage = np.repeat(np.arange(self.n_stages), sizes)
        self.res = np.asarray(space.resolutions, dtype=np.int64)
        self.k_tab, self.k_len = _pad(space.kernel_choices)
        genes = [space.stage_genes(s) for s in range(self.n_stages)]
        self.g_d, self.g_len = _pad([[d for d, _ in g] for g in genes])
        self.coupled = space.coupling is not None
        if self.coupled:
            self.g_e, _ = _pad([[e for _, e in g] for g in genes])
        self.e_choices = np.asarray(space.expand_choices, dtype=np.int64)

    def _pick(
        self, table: np.ndarray, lens: np.ndarray, rng: np.random.Generator, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = (rng.random((n, len(lens))) * lens[None, :]).astype(np.int64)
        return table[np.arange(len(lens))[None, :], idx], idx

    def sample(self, n: int, rng: np.random.Generator) -> ArchArrays:
        r = self.res[rng.integers(len(self.res), size=n)]
        ks, _ = self._pick(self.k_tab, self.k_len, rng, n)
        d, gi = self._pick(self.g_d, self.g_len, rng, n)
        if self.coupled:
            e = self.g_e[np.arange(self.n_stages)[None, :], gi][:, self.slot_stage]
        else:
            e = self.e_choices[rng.integers(len(self.e_choices), size=(n, self.n_slots))]
        return ArchArrays(ks, e, d, r)

    def mutate(self, a: ArchArrays, rng: np.random.Generator, prob: float) -> ArchArrays:
        n = len(a)
        fresh = self.sample(n, rng)
        mr = rng.random(n) < prob
        mk = rng.random((n, self.n_slots)) < prob
        md = rng.random((n, self.n_stages)) < prob
        r = np.where(mr, fresh.r, a.r)
        ks = np.where(mk, fresh.ks, a.ks)
        d = np.where(md, fresh.d, a.d)
        if self.coupled:
            e = np.where(md[:, self.slot_stage], fresh.e, a.e)
        else:
            me = rng.random((n, self.n_slots)) < prob
            e = np.where(me, fresh.e, a.e)
        return ArchArrays(ks, e, d, r)

    def crossover(self, a: ArchArrays, b: ArchArrays, rng: np.random.Generator) -> ArchArrays:
        n = len(a)
        cr = rng.random(n) < 0.5
        ck = rng.random((n, self.n_slots)) < 0.5
        cd = rng.random((n, self.n_stages)) < 0.5
        ce = cd[:, self.slot_stage] if self.coupled else rng.random((n, self.n_slots)) < 0.5
        return ArchArrays(
            np.where(ck, a.ks, b.ks),
            np.where(ce, a.e, b.e),
            np.where(cd, a.d, b.d),
            np.where(cr, a.r, b.r),
        )

    def enumerate(self) -> ArchArrays:
        """Every member (only for small spaces), resolution outermost."""
        per_stage: list[list[tuple[int, list[int], list[int]]]] = []
        for st, size in enumerate(self.space.stage_sizes):
            start = int(np.sum(self.space.stage_sizes[:st]))
            variants = []
            for depth, ce in self.space.stage_genes(st):
                kset = [self.space.kernel_choices[start + j] for j in range(depth)]
                eset = [[ce]] * depth if ce is not None else [self.space.expand_choices] * depth
                for kk in _product(kset):
                    for ee in _product(eset):
                        pad = size - depth
                        variants.append((depth, kk + [kk[-1]] * pad, ee + [ee[-1]] * pad))
            per_stage.append(variants)
        # Build the cartesian product as index arrays, then gather per stage.
        counts = [len(v) for v in per_stage]
        grids = np.indices(counts).reshape(len(counts), -1).T
        m = grids.shape[0]
        ks = np.zeros((m, self.n_slots), dtype=np.int64)
        e = np.zeros((m, self.n_slots), dtype=np.int64)
        d = np.zeros((m, self.n_stages), dtype=np.int64)
        start = 0
        for st, variants in enumerate(per_stage):
            size = self.space.stage_sizes[st]
            vd = np.array([v[0] for v in variants])
            vk = np.array([v[1] for v in variants])
            ve = np.array([v[2] for v in variants])
            d[:, st] = vd[grids[:, st]]
            ks[:, start : start + size] = vk[grids[:, st]]
            e[:, start : start + size] = ve[grids[:, st]]
            start += size
        nr = len(self.res)
        return ArchArrays(
            np.tile(ks, (nr, 1)), np.tile(e, (nr, 1)), np.tile(d, (nr, 1)), np.repeat(self.res, m)
        )


def _product(sets: Sequence[Sequence[int]]) -> list[list[int]]:
    out: list[list[int]] = [[]]
    for s in sets:
        out = [[*p, int(x)] for p in out for x in s]
    return out


def _pad(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    tab = np.array([list(r) + [r[-1]] * (width - len(r)) for r in rows], dtype=np.int64)
    return tab, np.array([len(r) for r in rows], dtype=np.int64)


def concat(parts: Sequence[ArchArrays]) -> ArchArrays:
    return ArchArrays(
        np.concatenate([p.ks for p in parts]),
        np.concatenate([p.e for p in parts]),
        np.concatenate([p.d for p in parts]),
        np.concatenate([p.r for p in parts]),
    )


def to_arch(a: ArchArrays, i: int, stage_sizes: tuple[int, ...]) -> Arch:
    return Arch(
        tuple(int(x) for x in a.ks[i]),
        tuple(int(x) for x in a.e[i]),
        tuple(int(x) for x in a.d[i]),
        int(a.r[i]),
        stage_sizes,
    )


# =============================================================================== pricing


def arch_keys(a: ArchArrays, stage_sizes: tuple[int, ...]) -> list[bytes]:
    """One exact byte key per row; genes of inactive slots are masked out, so archs that run
    the same layers share a key."""
    act = active_mask(a.d, stage_sizes)
    mat = np.concatenate(
        [np.where(act, a.ks, 0), np.where(act, a.e, 0), a.d, a.r[:, None]], axis=1
    ).astype(np.int16)
    return np.ascontiguousarray(mat).view(np.dtype((np.void, 2 * mat.shape[1]))).ravel().tolist()


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


# =============================================================================== search


#: Candidates drawn per infeasible child in each redraw round.
RESAMPLE_DRAWS = 8


#: Evolution generations when a local search does the main work: they only seed its starts.
SHORT_GENERATIONS = 10
#: OFA's EvolutionFinder budget (``max_time_budget``), for the evolution on its own.
OFA_GENERATIONS = 500


@dataclass(frozen=True)
class EvolutionConfig:
    """OFA's EvolutionFinder defaults; ``generations`` is its ``max_time_budget``."""

    population_size: int = 100
    #: None: :data:`SHORT_GENERATIONS` when a local search follows (an additive cost), else
    #: OFA's :data:`OFA_GENERATIONS`; :func:`search` resolves it (``SearchOutcome.config``)
    generations: int | None = None
    parent_ratio: float = 0.25
    mutation_ratio: float = 0.5
    mutate_prob: float = 0.1
    #: rounds of redrawing infeasible children before a child falls back to its parent
    resample_rounds: int = 3
    #: redraw children that repeat an arch their target has already evaluated
    avoid_repeats: bool = False
    #: after the generations, hill-climb (:func:`local_search`) from each target's best
    #: ``local_starts`` distinct members; 0 turns it off (OFA's plain evolution). Only with
    #: an additive cost (lookup table, MACs): a measured latency skips it
    local_starts: int = 2
    #: two-gene moves tried per state and step of the local search (0: single moves only)
    local_pairs: int = 32
    #: knapsack starts per target: the best distinct optima of the predictor's first-order
    #: model under the additive cost (module ``knapsack``), linearized around each target's
    #: best member at every resolution; 0: the best member moved to each resolution and
    #: greedily repaired instead
    local_knapsack: int = 8
    #: random starts per target and resolution, shrunk under the target by random moves
    local_random: int = 0
    #: also start each target from every other target's best optimum, repaired under it
    local_cross: bool = False
    #: rounds of iterated local search: kick each local optimum, repair, climb again
    local_kicks: int = 0
    #: per-gene mutation probability of a kick
    kick_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.population_size < 2 or (self.generations is not None and self.generations < 0):
            raise SearchError("population_size must be >= 2 and generations >= 0")
        if not 0 < self.parent_ratio <= 1 or not 0 <= self.mutation_ratio <= 1:
            raise SearchError("parent_ratio must be in (0, 1] and mutation_ratio in [0, 1]")
        if not 0 <= self.mutate_prob <= 1:
            raise SearchError("mutate_prob must be in [0, 1]")
        counts = (
            self.local_starts,
            self.local_pairs,
            self.local_knapsack,
            self.local_random,
            self.local_kicks,
        )
        if min(counts) < 0:
            raise SearchError(
                "local_starts, local_pairs, local_knapsack, local_random, local_kicks must be >= 0"
            )
        if not 0 <= self.kick_prob <= 1:
            raise SearchError("kick_prob must be in [0, 1]")


@dataclass(frozen=True)
class TargetResult:
    """The best arch found for one target (``arch`` is None when the target is infeasible)."""

    target: float
    arch: Arch | None
    score: float
    cost: float
    seconds: float
    feasible: bool
    message: str = ""


@dataclass
class SearchOutcome:
    space: str
    method: str
    score_label: str
    score_is_proxy: bool
    cost_label: str
    unit: str
    results: list[TargetResult]
    #: accuracy-vs-cost Pareto frontier of the archs seen: (arch, score, cost), cost ascending
    frontier: list[tuple[Arch, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    fastest: tuple[Arch, float] | None = None
    #: the evolution's settings as run (``generations`` resolved); None for exhaustive search
    config: EvolutionConfig | None = None


def pareto_front(score: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points (lower cost, higher score), by ascending cost."""
    order = np.lexsort((-score, cost))
    keep: list[int] = []
    best = -math.inf
    for i in order:
        if score[i] > best:
            keep.append(int(i))
            best = float(score[i])
    return np.asarray(keep, dtype=np.int64)


def parse_targets(text: str) -> list[float]:
    """``"15,20,25"`` -> [15.0, 20.0, 25.0]; positive and finite."""
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise SearchError(f"target {part!r} is not a number (use e.g. 15,20,25)") from None
        if not math.isfinite(v) or v <= 0:
            raise SearchError(f"target {part!r} must be a positive number")
        out.append(v)
    if not out:
        raise SearchError("no targets given (use e.g. --latency 15,20,25)")
    return out


def search(
    space: SearchSpace,
    accuracy: AccuracySource,
    cost: LatencySource,
    targets: Sequence[float],
    rng: np.random.Generator,
    method: str = "auto",
    config: EvolutionConfig = EvolutionConfig(),
    exhaustive_limit: int = 200_000,
    progress: Callable[[int, int], None] | None = None,
) -> SearchOutcome:
    """Best arch per target under ``cost <= target``, plus the Pareto frontier.

    ``method``: ``exhaustive``, ``evolution`` or ``auto`` (exhaustive when the space times its
    resolutions has at most ``exhaustive_limit`` members).
    """
    started = time.perf_counter()
    targets = [float(t) for t in targets]
    if not targets:
        raise SearchError("no targets given")
    if method == "auto":
        method = "exhaustive" if space.size() <= exhaustive_limit else "evolution"
    if method not in ("exhaustive", "evolution"):
        raise SearchError(f"unknown search method {method!r}: exhaustive, evolution or auto")
    if method == "exhaustive" and space.size() > exhaustive_limit:
        raise SearchError(
            f"space {space.name} has {space.size():,} members with its resolutions; exhaustive "
            f"search is limited to {exhaustive_limit:,}: use evolution"
        )
    pricer = Pricer(cost, space)
    if method == "exhaustive":
        outcome = _exhaustive(space, accuracy, pricer, targets, started)
        assert outcome.fastest is not None
        fastest_arch, fastest_cost = outcome.fastest
    else:
        fastest_arch, fastest_cost = pricer.fastest()
        if config.generations is None:
            short = _polishes(config, pricer)
            gens = SHORT_GENERATIONS if short else OFA_GENERATIONS
            config = replace(config, generations=gens)
        outcome = _evolve(
            space, accuracy, pricer, targets, rng, config, fastest_arch, fastest_cost, progress
        )
        outcome.config = config
    outcome.fastest = (fastest_arch, fastest_cost)
    outcome.results = [
        r if r.feasible or r.message else _infeasible(r, fastest_cost, cost.unit)
        for r in outcome.results
    ]
    outcome.seconds = time.perf_counter() - started
    return outcome


def _infeasible(r: TargetResult, fastest: float, unit: str) -> TargetResult:
    msg = (
        f"no member meets {r.target:g} {unit}: the fastest member costs {fastest:.3f} {unit}; "
        f"choose a target of at least {fastest:.3f} {unit}"
    )
    return TargetResult(r.target, None, math.nan, math.nan, r.seconds, False, msg)


def _exhaustive(
    space: SearchSpace,
    accuracy: AccuracySource,
    pricer: Pricer,
    targets: list[float],
    started: float,
) -> SearchOutcome:
    g = Genome(space)
    every = g.enumerate()
    score = np.asarray(accuracy.score(every), dtype=np.float64)
    cost = pricer(every)
    shared = time.perf_counter() - started
    results = []
    for t in targets:
        t0 = time.perf_counter()
        ok = np.nonzero(cost <= t)[0]
        if ok.size == 0:
            results.append(TargetResult(t, None, math.nan, math.nan, 0.0, False))
            continue
        # ties: the cheaper arch wins
        best = ok[np.lexsort((cost[ok], -score[ok]))[0]]
        results.append(
            TargetResult(
                t,
                to_arch(every, int(best), space.stage_sizes),
                float(score[best]),
                float(cost[best]),
                shared / len(targets) + time.perf_counter() - t0,
                True,
            )
        )
    front = pareto_front(score, cost)
    frontier = [
        (to_arch(every, int(i), space.stage_sizes), float(score[i]), float(cost[i])) for i in front
    ]
    return SearchOutcome(
        space.name,
        "exhaustive",
        accuracy.label,
        accuracy.is_proxy,
        pricer.source.name,
        pricer.source.unit,
        results,
        frontier,
        fastest=(to_arch(every, int(front[0]), space.stage_sizes), float(cost[front[0]])),
    )


def _evolve(
    space: SearchSpace,
    accuracy: AccuracySource,
    pricer: Pricer,
    targets: list[float],
    rng: np.random.Generator,
    cfg: EvolutionConfig,
    fastest_arch: Arch,
    fastest_cost: float,
    progress: Callable[[int, int], None] | None,
) -> SearchOutcome:
    g = Genome(space)
    score = CachedScore(accuracy, space.stage_sizes)
    feasible_targets = [t for t in targets if t >= fastest_cost]
    results: dict[float, TargetResult] = {
        t: TargetResult(t, None, math.nan, math.nan, 0.0, False)
        for t in targets
        if t < fastest_cost
    }
    frontier: list[tuple[Arch, float, float]] = []
    if feasible_targets:
        t_arr = np.asarray(feasible_targets)
        nt, pop = len(t_arr), cfg.population_size
        n_par = max(1, round(cfg.parent_ratio * pop))
        n_mut = round(cfg.mutation_ratio * pop)
        t0 = time.perf_counter()
        fast = ArchArrays(
            np.array([fastest_arch.ks]),
            np.array([fastest_arch.e]),
            np.array([fastest_arch.d]),
            np.array([fastest_arch.resolution]),
        )
        # ---- initial population: uniform samples that meet each target
        limit = np.repeat(t_arr, pop)
        cand = g.sample(nt * pop, rng)
        cand_cost = pricer(cand)
        for _ in range(cfg.resample_rounds):
            bad = np.nonzero(cand_cost > limit)[0]
            if bad.size == 0:
                break
            redo = g.sample(bad.size, rng)
            cand = _put(cand, bad, redo)
            cand_cost[bad] = pricer(redo)
        bad = np.nonzero(cand_cost > limit)[0]
        if bad.size:  # tight targets: seed with the fastest member (always feasible here)
            cand = _put(cand, bad, take(fast, np.zeros(bad.size, dtype=np.int64)))
            cand_cost[bad] = fastest_cost
        popu, pcost = cand, cand_cost
        pscore = score(popu)
        m = pop  # members per target in the current population
        best_score = np.full(nt, -np.inf)
        best: list[tuple[ArchArrays, float, float] | None] = [None] * nt

        def track(p: ArchArrays, sc: np.ndarray, co: np.ndarray, per: int) -> None:
            s2 = sc.reshape(nt, per)
            j = np.argmax(s2, axis=1)
            for ti in range(nt):
                if s2[ti, j[ti]] > best_score[ti]:
                    best_score[ti] = s2[ti, j[ti]]
                    k = ti * per + int(j[ti])
                    best[ti] = (take(p, np.array([k])), float(sc[k]), float(co[k]))

        track(popu, pscore, pcost, m)
        rows = np.arange(nt)[:, None]
        is_mut = np.tile(np.arange(pop) < n_mut, nt)
        kid_target = np.repeat(np.arange(nt), pop)
        seen: set[tuple[int, bytes]] = set(
            zip(kid_target.tolist(), arch_keys(popu, space.stage_sizes), strict=True)
        )
        lim = np.repeat(t_arr, pop)
        for gen in range(cfg.generations):
            # parents: the top n_par of each target's population
            s2 = pscore.reshape(nt, m)
            top = np.argsort(-s2, axis=1, kind="stable")[:, :n_par]
            par_idx = (rows * m + top).reshape(-1)
            parents = take(popu, par_idx)
            par_cost, par_score = pcost[par_idx], pscore[par_idx]
            # children: per target, n_mut mutations then crossovers, of random parents of
            # that target (a mutation uses its first parent only)
            pa_i = (rows * n_par + rng.integers(n_par, size=(nt, pop))).reshape(-1)
            pb_i = (rows * n_par + rng.integers(n_par, size=(nt, pop))).reshape(-1)
            pa, pb = take(parents, pa_i), take(parents, pb_i)
            kids = _breed(g, pa, pb, is_mut, rng, cfg.mutate_prob)
            kid_cost = pricer(kids)
            kid_keys = arch_keys(kids, space.stage_sizes)
            # a child is redrawn when it breaks its target, or (when asked) when its target has
            # already seen that arch: a repeat spends a population slot on no new information
            taken: set[tuple[int, bytes]] = set()
            good = kid_cost <= lim
            if cfg.avoid_repeats:
                for i, k in enumerate(kid_keys):
                    tk = (int(kid_target[i]), k)
                    if good[i] and (tk in seen or tk in taken):
                        good[i] = False
                    elif good[i]:
                        taken.add(tk)
            for _ in range(cfg.resample_rounds):
                bad = np.nonzero(~good)[0]
                if bad.size == 0:
                    break
                # several draws per child at once: fewer, larger numpy calls
                rep = np.repeat(bad, RESAMPLE_DRAWS)
                redo = _breed(g, take(pa, rep), take(pb, rep), is_mut[rep], rng, cfg.mutate_prob)
                redo_cost = pricer(redo)
                ok = (redo_cost <= lim[rep]).reshape(-1, RESAMPLE_DRAWS)
                redo_keys = arch_keys(redo, space.stage_sizes) if cfg.avoid_repeats else None
                rows_ok: list[int] = []
                picks: list[int] = []
                for j, row in enumerate(bad.tolist()):
                    for c in np.nonzero(ok[j])[0].tolist():
                        q = j * RESAMPLE_DRAWS + c
                        if redo_keys is not None:
                            tk = (int(kid_target[row]), redo_keys[q])
                            if tk in seen or tk in taken:
                                continue
                            taken.add(tk)
                        rows_ok.append(row)
                        picks.append(q)
                        break
                if rows_ok:
                    idx, qi = np.asarray(rows_ok), np.asarray(picks)
                    kids = _put(kids, idx, take(redo, qi))
                    kid_cost[idx] = redo_cost[qi]
                    good[idx] = True
            # a repeat that found no fresh replacement stays (it is feasible)
            # still infeasible after bounded redraws: the child is a copy of its first parent
            bad = np.nonzero(kid_cost > lim)[0]
            if bad.size:
                kids = _put(kids, bad, take(pa, bad))
                kid_cost[bad] = par_cost[pa_i[bad]]
            kid_cost = kid_cost.reshape(nt, pop)
            if cfg.avoid_repeats:
                seen.update(
                    zip(kid_target.tolist(), arch_keys(kids, space.stage_sizes), strict=True)
                )
            kid_score = score(kids)
            track(kids, kid_score, kid_cost.reshape(-1), pop)
            # population = parents + children, per target
            popu = _interleave(parents, kids, nt, n_par, pop)
            pcost = np.concatenate([par_cost.reshape(nt, -1), kid_cost], 1).reshape(-1)
            pscore = np.concatenate(
                [par_score.reshape(nt, -1), kid_score.reshape(nt, -1)], 1
            ).reshape(-1)
            m = n_par + pop
            if progress is not None:
                progress(gen + 1, cfg.generations)
        if _polishes(cfg, pricer):
            popu, pscore, pcost = _polish(
                space, accuracy, pricer, popu, pscore, pcost, t_arr, m, cfg, best, rng
            )
        per_target_s = (time.perf_counter() - t0) / nt
        for ti, t in enumerate(feasible_targets):
            b = best[ti]
            assert b is not None
            results[t] = TargetResult(
                t, to_arch(b[0], 0, space.stage_sizes), b[1], b[2], per_target_s, True
            )
        # frontier over the final populations and the winners
        pool = concat([popu] + [b[0] for b in best if b is not None])
        psc = np.concatenate([pscore, [b[1] for b in best if b is not None]])
        pco = np.concatenate([pcost, [b[2] for b in best if b is not None]])
        front = pareto_front(psc, pco)
        seen: set[Arch] = set()
        for i in front:
            a = to_arch(pool, int(i), space.stage_sizes)
            if a not in seen:
                seen.add(a)
                frontier.append((a, float(psc[i]), float(pco[i])))
    return SearchOutcome(
        space.name,
        "evolution",
        accuracy.label,
        accuracy.is_proxy,
        pricer.source.name,
        pricer.source.unit,
        [results[t] for t in targets],
        frontier,
    )


def _polishes(cfg: EvolutionConfig, pricer: Pricer) -> bool:
    """Whether a local search follows the evolution. It prices tens of thousands of
    neighbours: only with an additive model (a table or MACs), never by measuring on a
    device."""
    return bool(cfg.local_starts) and pricer.model is not None


def _breed(
    g: Genome,
    pa: ArchArrays,
    pb: ArchArrays,
    is_mut: np.ndarray,
    rng: np.random.Generator,
    prob: float,
) -> ArchArrays:
    """Mutants of ``pa`` where ``is_mut``, crossovers of ``pa`` and ``pb`` elsewhere."""
    mut, crs = g.mutate(pa, rng, prob), g.crossover(pa, pb, rng)
    w1, w2 = is_mut[:, None], is_mut
    return ArchArrays(
        np.where(w1, mut.ks, crs.ks),
        np.where(w1, mut.e, crs.e),
        np.where(w1, mut.d, crs.d),
        np.where(w2, mut.r, crs.r),
    )


def _put(a: ArchArrays, idx: np.ndarray, b: ArchArrays) -> ArchArrays:
    ks, e, d, r = a.ks.copy(), a.e.copy(), a.d.copy(), a.r.copy()
    ks[idx], e[idx], d[idx], r[idx] = b.ks, b.e, b.d, b.r
    return ArchArrays(ks, e, d, r)


def _interleave(a: ArchArrays, b: ArchArrays, groups: int, na: int, nb: int) -> ArchArrays:
    """Rows grouped per target: a's ``na`` rows then b's ``nb`` rows for each group."""

    def cat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xs = x.reshape(groups, na, *x.shape[1:])
        ys = y.reshape(groups, nb, *y.shape[1:])
        return np.concatenate([xs, ys], axis=1).reshape(groups * (na + nb), *x.shape[1:])

    return ArchArrays(cat(a.ks, b.ks), cat(a.e, b.e), cat(a.d, b.d), cat(a.r, b.r))


# =============================================================================== local search


class _Flat:
    """Archs as one integer row each: ``[r | d per stage | ks per slot | e per slot]``, so a
    move is "set these columns to these values" and thousands of neighbours are one array."""

    def __init__(self, space: SearchSpace) -> None:
        self.sizes = space.stage_sizes
        self.ns, self.nl = len(space.stage_sizes), sum(space.stage_sizes)
        self.width = 1 + self.ns + 2 * self.nl
        self.ks0 = 1 + self.ns
        self.e0 = self.ks0 + self.nl
        self.slot_stage = np.repeat(np.arange(self.ns), self.sizes)
        # move templates: (mask, values) over the flat row; a template equal to the current
        # arch (or touching only inactive slots) is a no-op and is dropped per state
        masks: list[np.ndarray] = []
        vals: list[np.ndarray] = []

        def add(cols: list[int], values: list[int]) -> None:
            m = np.zeros(self.width, dtype=bool)
            v = np.zeros(self.width, dtype=np.int64)
            m[cols] = True
            v[cols] = values
            masks.append(m)
            vals.append(v)

        for r in space.resolutions:
            add([0], [r])
        for st in range(self.ns):
            slots = [int(s) for s in np.nonzero(self.slot_stage == st)[0]]
            for depth, ce in space.stage_genes(st):
                if ce is None:
                    add([1 + st], [depth])
                else:
                    add([1 + st] + [self.e0 + s for s in slots], [depth] + [ce] * len(slots))
        for s in range(self.nl):
            for k in space.kernel_choices[s]:
                add([self.ks0 + s], [k])
            if space.coupling is None:
                for x in space.expand_choices:
                    add([self.e0 + s], [x])
        self.mask = np.stack(masks)
        self.vals = np.stack(vals)

    def flat(self, a: ArchArrays) -> np.ndarray:
        return np.concatenate([a.r[:, None], a.d, a.ks, a.e], axis=1).astype(np.int64)

    def arrays(self, f: np.ndarray) -> ArchArrays:
        return ArchArrays(
            f[:, self.ks0 : self.e0].copy(),
            f[:, self.e0 :].copy(),
            f[:, 1 : self.ks0].copy(),
            f[:, 0].copy(),
        )

    def neighbours(self, cur: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every single-gene move of each row of ``cur``: ``(b * templates, width)`` canonical
        rows, template-minor, and a mask of those that change the arch (the others are
        no-ops: the current value, or a slot the depth leaves inactive)."""
        b, nt = len(cur), len(self.mask)
        nb = self.canonical(
            np.where(self.mask[None], self.vals[None], cur[:, None, :]).reshape(b * nt, -1)
        )
        return nb, np.any(nb != np.repeat(cur, nt, 0), 1)

    def canonical(self, f: np.ndarray) -> np.ndarray:
        """:class:`Arch`'s normalization: an inactive slot holds its stage's last active
        values, so rows equal here run the same layers, and a depth increase adds copies of
        the stage's last layer, as the space's own neighbours do."""
        depth = f[:, 1 : self.ks0]
        out = f.copy()
        out[:, self.ks0 : self.e0] = fill_inactive(f[:, self.ks0 : self.e0], depth, self.sizes)
        out[:, self.e0 :] = fill_inactive(f[:, self.e0 :], depth, self.sizes)
        return out


def local_search(
    space: SearchSpace,
    accuracy: Callable[[ArchArrays], np.ndarray],
    cost: Callable[[ArchArrays], np.ndarray],
    starts: ArchArrays,
    limits: np.ndarray,
    pairs: int = 64,
    max_steps: int = 200,
) -> tuple[ArchArrays, np.ndarray, np.ndarray]:
    """Steepest-ascent hill climbing of many feasible starts at once.

    Each step scores, for every state, ALL its single-gene neighbours (resolution; each
    stage's depth, with its coupled expand ratio in CompOFA spaces; each active slot's kernel
    and, uncoupled, expand ratio) in one batch, and moves each state to its best neighbour
    that meets its limit and scores strictly higher. A state with no such neighbour then tries
    the ``pairs`` most promising two-gene moves (ranked by the sum of their single moves'
    score and cost changes, so a costly gain can be paid for by a saving elsewhere: the moves
    that matter at a tight budget); it stops when none of them is feasible and better either.
    So every returned state is a local optimum: no single-gene neighbour is feasible and
    better. States that meet (same layers, same limit) continue as one. Deterministic.

    Returns the final states, their scores and costs (same order as ``starts``).
    """
    fl = _Flat(space)
    x = fl.canonical(fl.flat(starts))
    limits = np.asarray(limits, dtype=np.float64)
    sc = np.asarray(accuracy(starts), dtype=np.float64)
    co = np.asarray(cost(starts), dtype=np.float64)
    if np.any(co > limits + 1e-12):
        raise SearchError("local search needs feasible starts")
    mask, vals = fl.mask, fl.vals
    nt = mask.shape[0]
    ii, jj = np.triu_indices(nt, k=1)
    disjoint = ~np.any(mask[ii] & mask[jj], axis=1)
    ii, jj = ii[disjoint], jj[disjoint]
    follow = np.arange(len(x))  # follow[i]: the state whose climb i shares
    live = np.arange(len(x))
    for _ in range(max_steps):
        if live.size == 0:
            break
        # merge states that have met: one climb per (layers, limit)
        key = np.concatenate([x[live], limits[live, None].view(np.int64)], axis=1)
        _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
        follow[live] = live[first[inv.reshape(-1)]]
        live = np.unique(live[first])
        b = live.size
        cur = x[live]
        # single moves of every live state: (b, templates, width)
        flat_nb, valid = fl.neighbours(cur)
        nb = flat_nb.reshape(b, nt, -1)
        # price every move (a cheap gather), but score only those that meet the limit: near
        # the limit about half do not, and the scorer is the main cost
        c1 = np.full(b * nt, np.inf)
        vi = np.nonzero(valid)[0]
        c1[vi] = np.asarray(cost(fl.arrays(flat_nb[vi])), dtype=np.float64)
        feas = c1 <= np.repeat(limits[live], nt)
        s1 = _score_only(accuracy, fl, flat_nb, feas)
        valid = valid.reshape(b, nt)
        s1, c1 = s1.reshape(b, nt), c1.reshape(b, nt)
        rows = np.arange(b)
        better = valid & (c1 <= limits[live, None]) & (s1 > sc[live, None])
        pick = np.argmax(np.where(better, s1, -np.inf), axis=1)
        moved = better[rows, pick]
        idx = live[moved]
        x[idx] = nb[rows[moved], pick[moved]]
        sc[idx], co[idx] = s1[rows[moved], pick[moved]], c1[rows[moved], pick[moved]]
        stuck = np.nonzero(~moved)[0]
        if pairs > 0 and stuck.size:
            # promising pairs: feasible by their summed cost change, best by summed gain
            live_s = live[stuck]
            # the pairs need the gains of the moves over the limit too: score them now
            late = valid[stuck] & ~feas.reshape(b, nt)[stuck]
            s1[stuck] = np.where(
                late,
                _score_only(
                    accuracy, fl, nb[stuck].reshape(-1, fl.width), late.reshape(-1)
                ).reshape(late.shape),
                s1[stuck],
            )
            gain = np.where(valid[stuck], s1[stuck] - sc[live_s, None], -np.inf)
            dcost = c1[stuck] - co[live_s, None]
            g2 = gain[:, ii] + gain[:, jj]
            c2 = co[live_s, None] + dcost[:, ii] + dcost[:, jj]
            g2 = np.where(c2 <= limits[live_s, None], g2, -np.inf)
            k = min(pairs, g2.shape[1])
            top = np.argpartition(-g2, k - 1, axis=1)[:, :k]
            pi, pj = ii[top], jj[top]  # (stuck, k)
            r2 = np.arange(stuck.size)[:, None]
            pn = np.where(mask[pj], vals[pj], nb[stuck[:, None], pi])
            pn = fl.canonical(pn.reshape(-1, fl.width)).reshape(pn.shape)
            ok = np.isfinite(g2[r2, top])
            s2, c2x = _score_rows(accuracy, cost, fl, pn.reshape(-1, fl.width), ok.reshape(-1))
            s2, c2x = s2.reshape(stuck.size, k), c2x.reshape(stuck.size, k)
            better2 = ok & (c2x <= limits[live_s, None]) & (s2 > sc[live_s, None])
            pick2 = np.argmax(np.where(better2, s2, -np.inf), axis=1)
            rr = np.arange(stuck.size)
            moved2 = better2[rr, pick2]
            idx2 = live_s[moved2]
            x[idx2] = pn[rr[moved2], pick2[moved2]]
            sc[idx2], co[idx2] = s2[rr[moved2], pick2[moved2]], c2x[rr[moved2], pick2[moved2]]
            idx = np.concatenate([idx, idx2])
        live = np.sort(idx)
    # a merged state ends where the climb it joined ended (follow chains to their end)
    while np.any(follow[follow] != follow):
        follow = follow[follow]
    x, sc, co = x[follow], sc[follow], co[follow]
    return fl.arrays(x), sc, co


def _polish(
    space: SearchSpace,
    accuracy: AccuracySource,
    pricer: Pricer,
    popu: ArchArrays,
    pscore: np.ndarray,
    pcost: np.ndarray,
    t_arr: np.ndarray,
    m: int,
    cfg: EvolutionConfig,
    best: list[tuple[ArchArrays, float, float] | None],
    rng: np.random.Generator,
) -> tuple[ArchArrays, np.ndarray, np.ndarray]:
    """Multi-start iterated local search per target; updates ``best`` in place and returns
    the population with the climbed states appended (for the frontier).

    Starts per target: its best ``local_starts`` distinct members; its ``local_knapsack`` best
    knapsack starts (:func:`_knapsack_starts`: optima of the predictor's first-order model
    under the additive cost, linearized around its best member moved to every resolution);
    and ``local_random`` random members per resolution, shrunk under the target. The
    resolution is the gene that single and paired moves can rarely change (it reprices every
    layer), so every resolution gets starts: on OFA's predictor and the Note10 tables the best
    15 ms arch is at 160 px while the evolution settles at 192 px. With ``local_cross``, each
    target also starts from every other target's best optimum; then ``local_kicks`` rounds of
    iterated local search on each target's best ``local_starts`` optima: kick (a mutation at
    the same resolution), repair, climb, keep when higher.
    """
    nt, nr = len(t_arr), len(space.resolutions)
    score_fn = _scorer(accuracy)
    g = Genome(space)
    keys = arch_keys(popu, space.stage_sizes)
    tops: list[int] = []
    owner: list[int] = []
    firsts: list[int] = []
    for ti in range(nt):
        order = ti * m + np.argsort(-pscore[ti * m : (ti + 1) * m], kind="stable")
        firsts.append(int(order[0]))
        chosen: set[bytes] = set()
        for i in order.tolist():
            if keys[i] not in chosen:
                chosen.add(keys[i])
                tops.append(i)
                owner.append(ti)
                if len(chosen) == cfg.local_starts:
                    break
    per = 1 + cfg.local_random  # starts per (target, resolution)
    res = np.asarray(space.resolutions, dtype=np.int64)
    proj = take(popu, np.repeat(np.asarray(firsts, dtype=np.int64), nr))
    rand = g.sample(nt * nr * cfg.local_random, rng)
    # rows: target-major, then resolution, then start
    fresh = _interleave(proj, rand, nt * nr, 1, cfg.local_random)
    fresh = ArchArrays(fresh.ks, fresh.e, fresh.d, np.tile(np.repeat(res, per), nt))
    f_own = np.repeat(np.arange(nt), nr * per)
    pj = np.arange(0, len(f_own), per)  # each (target, resolution)'s projected best member
    rj = np.nonzero(np.arange(len(f_own)) % per)[0]  # its random members
    starts = [take(popu, np.asarray(tops, dtype=np.int64))]
    owners = [np.asarray(owner, dtype=np.int64)]
    if rj.size:
        rx, rok = _shrink(space, pricer, take(fresh, rj), t_arr[f_own[rj]], rng)
        starts.append(take(rx, np.nonzero(rok)[0]))
        owners.append(f_own[rj][rok])
    if cfg.local_knapsack:
        kx, kown = _knapsack_starts(
            space, score_fn, pricer, take(fresh, pj), f_own[pj], t_arr, cfg.local_knapsack
        )
    else:
        # the projected best members, greedily repaired under their target
        px, _, _, pok = repair(space, score_fn, pricer, take(fresh, pj), t_arr[f_own[pj]])
        kx, kown = take(px, np.nonzero(pok)[0]), f_own[pj][pok]
    starts.append(kx)
    owners.append(kown)
    own = np.concatenate(owners)
    xs, xsc, xco = local_search(
        space,
        score_fn,
        pricer,
        concat(starts),
        t_arr[own],
        pairs=cfg.local_pairs,
    )
    if nt > 1 and cfg.local_cross:
        # every target also starts from every other target's best optimum, repaired under
        # its own target when it is over: neighbouring targets often share a basin
        tbest = np.array(
            [int(np.nonzero(own == ti)[0][np.argmax(xsc[own == ti])]) for ti in range(nt)]
        )
        src = np.tile(tbest, nt)
        dst = np.repeat(np.arange(nt), nt)
        keep = src != tbest[dst]
        src, dst = src[keep], dst[keep]
        cx, _, _, cok = repair(space, score_fn, pricer, take(xs, src), t_arr[dst])
        ci = np.nonzero(cok)[0]
        if ci.size:
            ys, ysc, yco = local_search(
                space, score_fn, pricer, take(cx, ci), t_arr[dst[ci]], pairs=cfg.local_pairs
            )
            xs, xsc, xco = concat([xs, ys]), np.concatenate([xsc, ysc]), np.concatenate([xco, yco])
            own = np.concatenate([own, dst[ci]])
    if cfg.local_kicks:
        # the best few distinct optima of each target go on to iterated local search
        xkeys = arch_keys(xs, space.stage_sizes)
        elite: list[int] = []
        for ti in range(nt):
            mine = np.nonzero(own == ti)[0]
            chosen = set()
            for i in mine[np.argsort(-xsc[mine], kind="stable")].tolist():
                if xkeys[i] not in chosen:
                    chosen.add(xkeys[i])
                    elite.append(i)
                    if len(chosen) == max(1, cfg.local_starts):
                        break
        el = np.asarray(elite, dtype=np.int64)
        es, esc, eco, lim = take(xs, el), xsc[el].copy(), xco[el].copy(), t_arr[own[el]]
        for _ in range(cfg.local_kicks):
            kick = g.mutate(es, rng, cfg.kick_prob)
            kick = ArchArrays(kick.ks, kick.e, kick.d, es.r)
            kx, _, _, kok = repair(space, score_fn, pricer, kick, lim)
            bad = np.nonzero(~kok)[0]
            kx = _put(kx, bad, take(es, bad))
            ys, ysc, yco = local_search(space, score_fn, pricer, kx, lim, pairs=cfg.local_pairs)
            up = np.nonzero(ysc > esc)[0]
            es = _put(es, up, take(ys, up))
            esc[up], eco[up] = ysc[up], yco[up]
        xs, xsc, xco = concat([xs, es]), np.concatenate([xsc, esc]), np.concatenate([xco, eco])
        own = np.concatenate([own, own[el]])
    for ti in range(nt):
        mine = np.nonzero(own == ti)[0]
        j = int(mine[np.argmax(xsc[mine])])
        b = best[ti]
        if b is None or xsc[j] > b[1]:
            best[ti] = (take(xs, np.array([j])), float(xsc[j]), float(xco[j]))
    return concat([popu, xs]), np.concatenate([pscore, xsc]), np.concatenate([pcost, xco])


def _knapsack_starts(
    space: SearchSpace,
    score_fn: Callable[[ArchArrays], np.ndarray],
    pricer: Pricer,
    refs: ArchArrays,
    owner: np.ndarray,
    t_arr: np.ndarray,
    per_target: int,
) -> tuple[ArchArrays, np.ndarray]:
    """Each target's ``per_target`` best distinct knapsack optima, and their owners.

    First the first-order model's optimum around each of ``refs`` (one per target and
    resolution) under its owner's target; then, around each of those, the optima for EVERY
    target with every stage's depth pinned in turn. A target's starts so come from models
    linearized at every target's solution, and differ in depth pattern."""
    assert pricer.model is not None
    first, fok, _, _ = linearized_optima(space, score_fn, pricer.model, refs, t_arr[owner])
    bad = np.nonzero(~fok)[0]
    first = _put(first, bad, take(refs, bad))
    every = np.broadcast_to(t_arr, (len(owner), len(t_arr)))
    sol, sok, _, sol_own = linearized_optima(
        space, score_fn, pricer.model, first, every, pin_depths=True
    )
    ssc = np.full(len(sok), -np.inf)
    if sok.any():
        ssc[sok] = score_fn(take(sol, np.nonzero(sok)[0]))
    keys = arch_keys(sol, space.stage_sizes)
    picks: list[int] = []
    for ti in range(len(t_arr)):
        mine = np.nonzero((sol_own == ti) & sok)[0]
        chosen: set[bytes] = set()
        for i in mine[np.argsort(-ssc[mine], kind="stable")].tolist():
            if keys[i] not in chosen:
                chosen.add(keys[i])
                picks.append(i)
                if len(chosen) == per_target:
                    break
    idx = np.asarray(picks, dtype=np.int64)
    return take(sol, idx), sol_own[idx]


def repair(
    space: SearchSpace,
    accuracy: Callable[[ArchArrays], np.ndarray],
    cost: Callable[[ArchArrays], np.ndarray],
    states: ArchArrays,
    limits: np.ndarray,
    max_steps: int = 200,
) -> tuple[ArchArrays, np.ndarray, np.ndarray, np.ndarray]:
    """Greedy budget repair: while a state breaks its limit, take the single-gene move that
    loses the least score per unit of cost saved. Returns states, scores, costs and a
    feasibility mask (a state can stay infeasible if no move saves cost; never in a space
    whose smallest member meets the limit at that resolution... or at all)."""
    fl = _Flat(space)
    x = fl.canonical(fl.flat(states))
    limits = np.asarray(limits, dtype=np.float64)
    sc = np.asarray(accuracy(states), dtype=np.float64)
    co = np.asarray(cost(states), dtype=np.float64)
    nt = len(fl.mask)
    for _ in range(max_steps):
        live = np.nonzero(co > limits)[0]
        if live.size == 0:
            break
        b = live.size
        flat_nb, valid = fl.neighbours(x[live])
        nb = flat_nb.reshape(b, nt, -1)
        s1, c1 = _score_rows(accuracy, cost, fl, flat_nb, valid)
        s1, c1 = s1.reshape(b, nt), c1.reshape(b, nt)
        saved = co[live, None] - c1
        loss = np.maximum(sc[live, None] - s1, 0.0)
        # a move that reaches the limit is charged for the saving it needs, not more: the
        # cheapest way over the line wins over an oversized cut
        need = (co[live] - limits[live])[:, None]
        with np.errstate(invalid="ignore", divide="ignore"):  # no-op moves: inf / inf
            ratio = np.where(saved > 1e-12, loss / np.minimum(saved, need), np.inf)
        pick = np.argmin(ratio, axis=1)
        ok = np.isfinite(ratio[np.arange(b), pick])
        if not ok.any():
            break
        rows = np.arange(b)[ok]
        idx = live[ok]
        x[idx] = nb[rows, pick[ok]]
        sc[idx] = s1[rows, pick[ok]]
        co[idx] = c1[rows, pick[ok]]
    return fl.arrays(x), sc, co, co <= limits


def _scorer(accuracy: AccuracySource) -> Callable[[ArchArrays], np.ndarray]:
    return lambda a: np.asarray(accuracy.score(a), dtype=np.float64)


def _score_rows(
    accuracy: Callable[[ArchArrays], np.ndarray],
    cost: Callable[[ArchArrays], np.ndarray],
    fl: _Flat,
    rows: np.ndarray,
    valid: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and price only the ``valid`` rows (no-op moves are most templates); the others
    get score -inf and cost +inf, so they never win."""
    s = np.full(len(rows), -np.inf)
    c = np.full(len(rows), np.inf)
    idx = np.nonzero(valid)[0]
    if idx.size:
        sub = fl.arrays(rows[idx])
        s[idx] = np.asarray(accuracy(sub), dtype=np.float64)
        c[idx] = np.asarray(cost(sub), dtype=np.float64)
    return s, c


def _shrink(
    space: SearchSpace,
    cost: Callable[[ArchArrays], np.ndarray],
    states: ArchArrays,
    limits: np.ndarray,
    rng: np.random.Generator,
    max_steps: int = 200,
) -> tuple[ArchArrays, np.ndarray]:
    """Random descent under a cost limit: while a state breaks its limit, apply a uniformly
    drawn single-gene move that lowers its cost. Cost-only (no scoring), so cheap enough for
    many random starts; the local search that follows climbs back up. Returns the states and
    a feasibility mask."""
    fl = _Flat(space)
    x = fl.flat(states)
    co = np.asarray(cost(states), dtype=np.float64)
    nt = len(fl.mask)
    for _ in range(max_steps):
        live = np.nonzero(co > limits)[0]
        if live.size == 0:
            break
        b = live.size
        nb, _ = fl.neighbours(x[live])
        c1 = np.asarray(cost(fl.arrays(nb)), dtype=np.float64).reshape(b, nt)
        down = c1 < co[live, None] - 1e-12
        # a uniform choice among the cost-lowering moves: random keys, masked argmax
        pick = np.argmax(np.where(down, rng.random((b, nt)), -1.0), axis=1)
        ok = down[np.arange(b), pick]
        if not ok.any():
            break
        rows = np.arange(b)[ok]
        x[live[ok]] = nb.reshape(b, nt, -1)[rows, pick[ok]]
        co[live[ok]] = c1[rows, pick[ok]]
    return fl.arrays(x), co <= limits


def _score_only(
    accuracy: Callable[[ArchArrays], np.ndarray], fl: _Flat, rows: np.ndarray, which: np.ndarray
) -> np.ndarray:
    """Scores of the ``which`` rows, -inf elsewhere."""
    out = np.full(len(rows), -np.inf)
    idx = np.nonzero(which)[0]
    if idx.size:
        out[idx] = np.asarray(accuracy(fl.arrays(rows[idx])), dtype=np.float64)
    return out
