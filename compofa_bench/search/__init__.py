"""Architecture search under latency (or MACs) constraints: pure algorithms.

Two strategies, one entry point (:func:`search`) that serves many targets per call:

- **exhaustive** (:mod:`.exhaustive`): when the space times its resolutions is small (CompOFA:
  243 x R), every member is scored once and each target gets its true optimum;
- **evolution** (:mod:`.evolution`): OFA's regularized evolution (population, parent ratio,
  mutation ratio and probability, crossover), with CompOFA-aware genes: in a coupled space a
  stage's depth and expand ratio are one gene, in mutation and crossover alike. All targets
  evolve side by side, so one predictor forward pass scores every target's children at once.
  With an additive cost a local search follows (:mod:`.polish`, :mod:`.local`), started from
  the best members and from knapsack optima (:mod:`.knapsack`).

Populations are integer arrays (:class:`~compofa_bench.encoding.ArchArrays`, :mod:`.genome`),
never lists of dicts. Latency sources that are sums of per-layer values (lookup tables, MACs)
are compiled into an :class:`AdditiveModel` (:mod:`.model`), a numpy gather, and checked against
the source before use. Sources that are not additive (measurement on a device) are called per
new arch and memoized.

Infeasible children are redrawn a bounded number of times and then replaced by their parent;
a target below the fastest member is reported with the fastest latency available. There is no
unbounded rejection loop.

This package imports only :mod:`compofa_bench.spaces`, :mod:`compofa_bench.encoding` and
:mod:`compofa_bench.errors` (tests/test_layering.py checks it). The concrete latency and
accuracy sources (lookup table, MACs, measured latency, predictor) live in
:mod:`compofa_bench.sources`; a search is handed them.
"""

from compofa_bench.search.config import (
    OFA_GENERATIONS,
    RESAMPLE_DRAWS,
    SHORT_GENERATIONS,
    EvolutionConfig,
    SearchOutcome,
    TargetResult,
    pareto_front,
    parse_targets,
)
from compofa_bench.search.genome import Genome, arch_keys, concat, to_arch
from compofa_bench.search.local import local_search, repair
from compofa_bench.search.model import (
    AccuracySource,
    AdditiveModel,
    CachedScore,
    LatencySource,
    Pricer,
    compile_by_differences,
)
from compofa_bench.search.run import search

__all__ = [
    "OFA_GENERATIONS",
    "RESAMPLE_DRAWS",
    "SHORT_GENERATIONS",
    "AccuracySource",
    "AdditiveModel",
    "CachedScore",
    "EvolutionConfig",
    "Genome",
    "LatencySource",
    "Pricer",
    "SearchOutcome",
    "TargetResult",
    "arch_keys",
    "compile_by_differences",
    "concat",
    "local_search",
    "pareto_front",
    "parse_targets",
    "repair",
    "search",
    "to_arch",
]
