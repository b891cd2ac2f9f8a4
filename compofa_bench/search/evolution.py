"""OFA's regularized evolution, all targets side by side, with CompOFA-aware genes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from compofa_bench.encoding import ArchArrays, take
from compofa_bench.search.config import (
    RESAMPLE_DRAWS,
    EvolutionConfig,
    SearchOutcome,
    TargetResult,
    pareto_front,
)
from compofa_bench.search.genome import Genome, arch_keys, concat, interleave, put, to_arch
from compofa_bench.search.model import AccuracySource, CachedScore, Pricer
from compofa_bench.search.polish import polish
from compofa_bench.spaces import Arch, SearchSpace


def evolve(
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
            cand = put(cand, bad, redo)
            cand_cost[bad] = pricer(redo)
        bad = np.nonzero(cand_cost > limit)[0]
        if bad.size:  # tight targets: seed with the fastest member (always feasible here)
            cand = put(cand, bad, take(fast, np.zeros(bad.size, dtype=np.int64)))
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
                    kids = put(kids, idx, take(redo, qi))
                    kid_cost[idx] = redo_cost[qi]
                    good[idx] = True
            # a repeat that found no fresh replacement stays (it is feasible)
            # still infeasible after bounded redraws: the child is a copy of its first parent
            bad = np.nonzero(kid_cost > lim)[0]
            if bad.size:
                kids = put(kids, bad, take(pa, bad))
                kid_cost[bad] = par_cost[pa_i[bad]]
            kid_cost = kid_cost.reshape(nt, pop)
            if cfg.avoid_repeats:
                seen.update(
                    zip(kid_target.tolist(), arch_keys(kids, space.stage_sizes), strict=True)
                )
            kid_score = score(kids)
            track(kids, kid_score, kid_cost.reshape(-1), pop)
            # population = parents + children, per target
            popu = interleave(parents, kids, nt, n_par, pop)
            pcost = np.concatenate([par_cost.reshape(nt, -1), kid_cost], 1).reshape(-1)
            pscore = np.concatenate(
                [par_score.reshape(nt, -1), kid_score.reshape(nt, -1)], 1
            ).reshape(-1)
            m = n_par + pop
            if progress is not None:
                progress(gen + 1, cfg.generations)
        if polishes(cfg, pricer):
            popu, pscore, pcost = polish(
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


def polishes(cfg: EvolutionConfig, pricer: Pricer) -> bool:
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
