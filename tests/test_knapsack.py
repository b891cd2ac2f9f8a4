"""Knapsack starts (compofa_bench.knapsack): exact for a score that is additive in the genes,
checked against brute force over the enumerable CompOFA space and a small OFA sub-space."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compofa_bench import search as S
from compofa_bench import sources, spaces
from compofa_bench.encoding import ArchArrays, active_mask, take
from compofa_bench.search.knapsack import GRID_CELLS, linearized_optima


def additive_score(space: spaces.SearchSpace, rng: np.random.Generator):
    """A random score that is a sum of per-gene terms: a resolution term, a term per stage
    depth, and per active layer a kernel term and an expand term. The first-order model of
    such a score is exact around any reference, so the knapsack must find its optimum."""
    res = {r: rng.normal() for r in space.resolutions}
    n_slots, n_stages = sum(space.stage_sizes), len(space.stage_sizes)
    depth = rng.normal(size=(n_stages, max(space.stage_sizes) + 1))
    kern = rng.normal(size=(n_slots, 8))
    expand = rng.normal(size=(n_slots, 7))

    def score(a: ArchArrays) -> np.ndarray:
        act = active_mask(a.d, space.stage_sizes)
        slots = np.arange(n_slots)[None, :]
        per_layer = np.where(act, kern[slots, a.ks] + expand[slots, a.e], 0.0).sum(axis=1)
        stages = depth[np.arange(n_stages)[None, :], a.d].sum(axis=1)
        return np.array([res[int(r)] for r in a.r]) + stages + per_layer

    return score


def small_uncoupled() -> spaces.SearchSpace:
    """OFA's layout with depth and per-layer expand ratio independent (as in the OFA space) but
    few enough choices to enumerate: 12 structures per stage, 248,832 archs per resolution."""
    ofa = spaces.get("ofa", [176])
    return dataclasses.replace(
        ofa,
        name="ofa-small",
        kernel_choices=((3,),) * ofa.n_layers,
        expand_choices=(3, 6),
        depth_choices=((2, 3),) * ofa.n_stages,
    )


@pytest.mark.parametrize("name", ["compofa", "ofa-small"])
def test_finds_the_optimum_of_an_additive_score(name: str) -> None:
    space = small_uncoupled() if name == "ofa-small" else spaces.get(name, [160, 192, 224])
    res = np.array(space.resolutions)
    rng = np.random.default_rng(5)
    score = additive_score(space, rng)
    pricer = S.Pricer(sources.MacsLatency(1.0), space)
    every = S.Genome(space).enumerate()
    cost, value = pricer(every), score(every)
    limits = np.quantile(cost, [0.1, 0.4, 0.8])
    # one reference per (limit, resolution): random members, so the model is built far away
    refs = S.Genome(space).sample(len(limits) * len(res), rng)
    refs = ArchArrays(refs.ks, refs.e, refs.d, np.tile(res, len(limits)))
    lim = np.repeat(limits, len(res))
    sol, ok, src, col = linearized_optima(space, score, pricer.model, refs, lim)
    assert np.array_equal(src, np.arange(len(lim))) and np.all(col == 0)
    got, got_cost = score(sol), pricer(sol)
    for i in np.nonzero(ok)[0]:
        at_r = every.r == refs.r[i]
        assert got_cost[i] <= lim[i] + 1e-9  # costs are rounded up: always feasible
        assert got[i] <= value[at_r & (cost <= lim[i])].max() + 1e-9
        # rounding each layer's cost up to the grid loses at most one cell per layer
        slack = sum(space.stage_sizes) * (lim.max() - pricer.model.fixed.min()) / GRID_CELLS
        assert got[i] >= value[at_r & (cost <= lim[i] - slack)].max() - 1e-9
        space.validate(S.to_arch(sol, int(i), space.stage_sizes))
    assert ok.any()
    # a limit below every member's cost has no solution, and its row keeps the reference
    none, nok, _, _ = linearized_optima(
        space, score, pricer.model, take(refs, np.array([0])), np.array([cost.min() / 2])
    )
    assert not nok[0] and np.array_equal(none.ks, refs.ks[:1])


def test_pinned_depths_and_several_limits_per_row() -> None:
    space = spaces.get("ofa", [176, 208])
    rng = np.random.default_rng(2)
    score = additive_score(space, rng)
    pricer = S.Pricer(sources.MacsLatency(1.0), space)
    refs = S.Genome(space).sample(4, rng)
    limits = np.array([[250.0, 350.0, 500.0]] * 4)
    sol, ok, src, col = linearized_optima(space, score, pricer.model, refs, limits, pin_depths=True)
    genes = sum(len(space.depth_choices[st]) for st in range(len(space.stage_sizes)))
    assert len(sol) == 4 * (1 + genes) * 3
    assert np.array_equal(src, np.repeat(np.arange(4), (1 + genes) * 3))  # in refs' order
    cost, got = pricer(sol), score(sol)
    assert np.all(cost[ok] <= limits[src, col][ok] + 1e-9)
    assert np.all(sol.r == refs.r[src])
    # per row and limit: the unpinned solution is the best, and each pinned one has its stage
    # at its depth (pins in order: stage-major, then depth)
    pins = [(st, d) for st in range(len(space.stage_sizes)) for d in space.depth_choices[st]]
    for row in range(4):
        for c in range(3):
            mine = np.nonzero((src == row) & (col == c))[0]
            free, pinned = mine[0], mine[1:]
            if not ok[free]:
                continue
            assert got[free] >= got[pinned][ok[pinned]].max() - 1e-9
            for i, (st, d) in zip(pinned, pins, strict=True):
                if ok[i]:
                    assert sol.d[i, st] == d
