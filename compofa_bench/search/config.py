"""The settings and results of a search: :class:`EvolutionConfig`, :class:`TargetResult`,
:class:`SearchOutcome`, the Pareto front and the parsing of targets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compofa_bench.errors import SearchError
from compofa_bench.spaces import Arch

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
        raise SearchError("no targets given (give e.g. 15,20,25)")
    return out
