"""Multi-start iterated local search per target after the evolution, with knapsack starts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from compofa_bench.encoding import ArchArrays, take
from compofa_bench.search.config import EvolutionConfig
from compofa_bench.search.genome import Genome, arch_keys, concat, interleave, put
from compofa_bench.search.knapsack import linearized_optima
from compofa_bench.search.local import _shrink, local_search, repair, scorer
from compofa_bench.search.model import AccuracySource, Pricer
from compofa_bench.spaces import SearchSpace


def polish(
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
    score_fn = scorer(accuracy)
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
    fresh = interleave(proj, rand, nt * nr, 1, cfg.local_random)
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
            kx = put(kx, bad, take(es, bad))
            ys, ysc, yco = local_search(space, score_fn, pricer, kx, lim, pairs=cfg.local_pairs)
            up = np.nonzero(ysc > esc)[0]
            es = put(es, up, take(ys, up))
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
    first = put(first, bad, take(refs, bad))
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
