"""Exhaustive search: every member scored once, each target gets its true optimum."""

from __future__ import annotations

import math
import time

import numpy as np

from compofa_bench.search.config import SearchOutcome, TargetResult, pareto_front
from compofa_bench.search.genome import Genome, to_arch
from compofa_bench.search.model import AccuracySource, Pricer
from compofa_bench.spaces import SearchSpace


def exhaustive(
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
