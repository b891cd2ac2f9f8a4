"""Populations as integer arrays: sampling, mutation, crossover and enumeration of a space's
archs (:class:`Genome`), and the array helpers the algorithms share."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compofa_bench.encoding import ArchArrays, active_mask
from compofa_bench.spaces import Arch, SearchSpace


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


def put(a: ArchArrays, idx: np.ndarray, b: ArchArrays) -> ArchArrays:
    ks, e, d, r = a.ks.copy(), a.e.copy(), a.d.copy(), a.r.copy()
    ks[idx], e[idx], d[idx], r[idx] = b.ks, b.e, b.d, b.r
    return ArchArrays(ks, e, d, r)


def interleave(a: ArchArrays, b: ArchArrays, groups: int, na: int, nb: int) -> ArchArrays:
    """Rows grouped per target: a's ``na`` rows then b's ``nb`` rows for each group."""

    def cat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        xs = x.reshape(groups, na, *x.shape[1:])
        ys = y.reshape(groups, nb, *y.shape[1:])
        return np.concatenate([xs, ys], axis=1).reshape(groups * (na + nb), *x.shape[1:])

    return ArchArrays(cat(a.ks, b.ks), cat(a.e, b.e), cat(a.d, b.d), cat(a.r, b.r))
