"""The one entry point, :func:`search`: picks exhaustive or evolutionary search, prices the
fastest member and reports infeasible targets."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from compofa_bench.errors import SearchError
from compofa_bench.search.config import (
    OFA_GENERATIONS,
    SHORT_GENERATIONS,
    EvolutionConfig,
    SearchOutcome,
    TargetResult,
)
from compofa_bench.search.evolution import evolve, polishes
from compofa_bench.search.exhaustive import exhaustive
from compofa_bench.search.model import AccuracySource, LatencySource, Pricer
from compofa_bench.spaces import SearchSpace


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
        outcome = exhaustive(space, accuracy, pricer, targets, started)
        assert outcome.fastest is not None
        fastest_arch, fastest_cost = outcome.fastest
    else:
        fastest_arch, fastest_cost = pricer.fastest()
        if config.generations is None:
            short = polishes(config, pricer)
            gens = SHORT_GENERATIONS if short else OFA_GENERATIONS
            config = replace(config, generations=gens)
        outcome = evolve(
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
