"""How a timing run is kept honest on a shared host: its options, locks, rounds and probes.

:func:`compofa_bench.profile.measure_workloads` runs the loop; this module holds the parts
that make its numbers trustworthy:

* :class:`RunOptions`: rounds, their order seed, ``--wait-idle``, ``--no-wait``,
  ``--accept-unstable``.
* :func:`lock_names`: which host locks a device's timing run takes (its CPUs, or the device
  itself when its TOML says it does not share the host's CPUs).
* :func:`combine_rounds`: one estimate from R interleaved rounds. Each round times every
  workload once, in a fresh shuffled order, so a slow drift of the host (a competing job
  starting, a thermal limit) spreads over all workloads instead of hitting a block of them;
  the estimate is the median of the round medians, which ignores one bad round out of three.
* :func:`probe_protocol`: the short protocol of the noise-floor probes that open and close
  every timing run.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench import hostlock
from compofa_bench.errors import MeasurementError
from compofa_bench.host_load import HostLoad, measured_cpus
from compofa_bench.measure import Protocol, Stats

if TYPE_CHECKING:
    from compofa_bench.devices import DeviceSpec

#: Rounds used where a prediction is checked against a measurement (``lut validate``, the
#: re-measure after ``search``, the repeatability benchmark).
CHECK_ROUNDS = 3

ESTIMATOR_ONE_ROUND = "median"
ESTIMATOR_ROUNDS = "median_of_round_medians"


def stderr_say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunOptions:
    """How one timing run is carried out (never part of a measurement's identity).

    ``rounds``: time the whole set this many times, each round in a fresh order drawn from
    ``numpy.random.default_rng(order_seed)``. ``wait_idle_s``: before each workload, wait up
    to this many seconds for other processes to leave the measured CPUs. ``wait``: False
    fails at once when another timing run holds the CPUs. ``accept_unstable``: unstable and
    contended rows count as done. ``probe``: open and close the run with a noise-floor probe.
    ``lock``: take the host locks (False only for callers that already hold them).
    """

    rounds: int = 1
    order_seed: int = 0
    wait_idle_s: float = 0.0
    wait: bool = True
    accept_unstable: bool = False
    probe: bool = True
    lock: bool = True
    lock_timeout_s: float | None = None
    say: Callable[[str], None] = stderr_say

    def __post_init__(self) -> None:
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise MeasurementError(f"--rounds must be an integer >= 1, got {self.rounds!r}")
        w = self.wait_idle_s
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise MeasurementError(f"--wait-idle must be a number of seconds >= 0, got {w!r}")

    def replace(self, **changes: Any) -> RunOptions:
        return dataclasses.replace(self, **changes)


def device_cpus(spec: DeviceSpec) -> tuple[int, ...]:
    """The host CPUs a device's timing runs on (its ``affinity`` option, else this process's)."""
    affinity = spec.options.get("affinity")
    return measured_cpus(affinity if isinstance(affinity, (list, tuple)) else None)


def lock_names(spec: DeviceSpec) -> list[str]:
    """The host locks a timing run on ``spec`` holds."""
    if not spec.shares_host_cpus:
        return hostlock.device_lock_names(spec.name)
    return hostlock.cpu_lock_names(device_cpus(spec))


def shuffled(n: int, rounds: int, rng: np.random.Generator) -> list[list[int]]:
    """One order of ``range(n)`` per round: a fresh permutation each round (one round keeps
    the given order, so a plain ``profile`` measures in the order it was asked to)."""
    if rounds == 1:
        return [list(range(n))]
    return [[int(i) for i in rng.permutation(n)] for _ in range(rounds)]


@dataclass(frozen=True)
class Round:
    """One round of one workload: what ``adapter.time`` gave and the host's load meanwhile."""

    samples_ms: tuple[float, ...]
    stats: Stats
    load: HostLoad | None
    contended: bool


def combine_rounds(
    rounds: Sequence[Round], protocol: Protocol
) -> tuple[Stats, str, HostLoad | None, bool]:
    """``(stats, estimator, worst load, contended)`` of a workload's rounds.

    One round: its own stats. Several: the statistics of all samples pooled (so the IQR and
    percentiles see every round), with ``median_ms`` replaced by the median of the round
    medians; unstable when the pooled IQR/median is above the protocol's
    ``unstable_threshold``, when most rounds were unstable, or when the round medians spread
    (max/min - 1) beyond that threshold. Contended when any round was: a row is as
    trustworthy as its worst round.
    """
    if not rounds:
        raise MeasurementError("no rounds to combine")
    worst = HostLoad.worst([r.load for r in rounds if r.load is not None])
    contended = any(r.contended for r in rounds)
    if len(rounds) == 1:
        return rounds[0].stats, ESTIMATOR_ONE_ROUND, worst, contended
    medians = np.array([r.stats.median_ms for r in rounds])
    pooled = [x for r in rounds for x in r.samples_ms]
    # summary-only adapters (no samples): the first round's summary, re-centred below
    stats = Stats.from_samples(pooled, protocol.unstable_threshold) if pooled else rounds[0].stats
    spread = float(medians.max() / medians.min() - 1.0) if medians.min() > 0 else math.inf
    unstable = (
        stats.unstable  # the pooled samples' IQR/median (what results show prints)
        or sum(r.stats.unstable for r in rounds) * 2 > len(rounds)
        or spread > protocol.unstable_threshold
    )
    stats = dataclasses.replace(
        stats,
        median_ms=float(np.median(medians)),
        count=sum(r.stats.count for r in rounds),
        unstable=bool(unstable),
    )
    return stats, ESTIMATOR_ROUNDS, worst, contended


def probe_protocol(protocol: Protocol) -> Protocol:
    """The noise-floor probe: the device's protocol, capped at about a quarter second."""
    min_s = min(protocol.min_s, 0.25)
    return protocol.replace(
        min_s=min_s,
        max_s=max(min_s, min(protocol.max_s, 1.0)),
        min_runs=min(protocol.min_runs, 20),
        remeasure=0,
    )


def noise_floor(before_ms: float | None, after_ms: float | None) -> float | None:
    """|after / before - 1| of the two probes; None when either is missing."""
    if not before_ms or not after_ms or before_ms <= 0:
        return None
    return abs(after_ms / before_ms - 1.0)
