"""Measurement protocol, timed loop and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compofa_bench.adapters.base import Timing
from compofa_bench.errors import MeasurementError
from compofa_bench.measure import Protocol, Stats, measure_stable, median_ci_indices, timed_loop


class FakeClock:
    """A clock that only moves when the workload runs: exact, load-independent loop counts."""

    def __init__(self, step_s: float) -> None:
        self.t = 0.0
        self.step_s = step_s
        self.calls = 0

    def __call__(self) -> float:
        return self.t

    def work(self) -> None:
        self.calls += 1
        self.t += self.step_s


@pytest.mark.parametrize(
    "field,value",
    [("min_runs", 0), ("warmup_runs", -1), ("max_s", 0.0), ("batch_size", 0),
     ("min_s", -1.0), ("unstable_threshold", 0.0), ("min_runs", 2.5), ("max_s", math.nan)],
)  # fmt: skip
def test_protocol_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(MeasurementError, match=field):
        Protocol(**{field: value})


def test_protocol_max_below_min_rejected() -> None:
    with pytest.raises(MeasurementError, match="max_s"):
        Protocol(min_s=2.0, max_s=1.0)


def test_protocol_hash_tracks_what_changes_numbers() -> None:
    p = Protocol()
    assert p.hash() == Protocol().hash()
    assert p.replace(min_runs=21).hash() != p.hash()
    assert p.replace(batch_size=8).hash() != p.hash()
    # when to sleep and how often to retry do not change what one measurement means
    assert p.replace(cooldown_s=3.0, remeasure=2).hash() == p.hash()
    assert p.replace(min_runs=None) is p
    with pytest.raises(MeasurementError, match="unknown protocol field"):
        p.replace(min_run=3)


def test_timed_loop_min_runs_and_min_seconds() -> None:
    clock = FakeClock(0.010)
    p = Protocol(warmup_runs=3, warmup_min_s=0.05, min_runs=5, min_s=0.2, max_s=1.0)
    t = timed_loop(clock.work, p, clock=clock)
    assert len(t.warmup_ms) == 5  # warmup seconds dominate 3 runs: 0.05 s / 10 ms
    assert len(t.samples_ms) == 20  # min_s dominates: 0.2 s / 10 ms
    assert all(abs(x - 10.0) < 1e-9 for x in t.samples_ms)
    assert clock.calls == 25


def test_timed_loop_min_runs_dominate() -> None:
    clock = FakeClock(0.010)
    p = Protocol(warmup_runs=7, warmup_min_s=0.0, min_runs=40, min_s=0.1, max_s=5.0)
    t = timed_loop(clock.work, p, clock=clock)
    assert len(t.warmup_ms) == 7
    assert len(t.samples_ms) == 40


def test_timed_loop_max_seconds_wins_over_min_runs() -> None:
    clock = FakeClock(0.0625)  # exact in binary: no rounding at the boundary
    p = Protocol(warmup_runs=0, warmup_min_s=0.0, min_runs=1000, min_s=0.0, max_s=0.5)
    t = timed_loop(clock.work, p, clock=clock)
    assert len(t.samples_ms) == 8


def test_timed_loop_always_takes_one_sample() -> None:
    clock = FakeClock(2.0)
    p = Protocol(warmup_runs=0, warmup_min_s=0.0, min_runs=5, min_s=0.0, max_s=0.5)
    assert len(timed_loop(clock.work, p, clock=clock).samples_ms) == 1


def test_timed_loop_real_clock() -> None:
    p = Protocol(warmup_runs=2, warmup_min_s=0.0, min_runs=50, min_s=0.0, max_s=2.0)
    t = timed_loop(lambda: sum(range(100)), p)
    assert len(t.samples_ms) >= 50 and all(x > 0 for x in t.samples_ms)


def test_stats_match_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.lognormal(1.0, 0.3, size=501)
    s = Stats.from_samples(x)
    assert s.median_ms == pytest.approx(np.median(x))
    assert s.mean_ms == pytest.approx(x.mean())
    assert s.std_ms == pytest.approx(x.std(ddof=1))
    assert s.p90_ms == pytest.approx(np.quantile(x, 0.9))
    assert s.p99_ms == pytest.approx(np.quantile(x, 0.99))
    assert s.iqr_ms == pytest.approx(np.quantile(x, 0.75) - np.quantile(x, 0.25))
    assert s.cv == pytest.approx(x.std(ddof=1) / x.mean())
    assert (s.min_ms, s.max_ms, s.count) == (x.min(), x.max(), 501)
    assert s.ci95_low_ms < s.median_ms < s.ci95_high_ms


def test_stats_reject_empty_and_nan() -> None:
    with pytest.raises(MeasurementError):
        Stats.from_samples([])
    with pytest.raises(MeasurementError):
        Stats.from_samples([1.0, math.nan])


def test_unstable_flag_uses_relative_iqr() -> None:
    tight = [10.0, 10.1, 9.9, 10.05, 9.95] * 10
    wide = [8.0, 10.0, 12.0, 9.0, 11.0] * 10  # IQR 2 / median 10 = 0.2
    assert not Stats.from_samples(tight).unstable
    assert Stats.from_samples(wide).unstable
    assert not Stats.from_samples(wide, unstable_threshold=0.25).unstable


def _brute_force_ci(n: int, alpha: float = 0.025) -> tuple[int, int]:
    cdf = 0.0
    best = None
    for j in range((n + 1) // 2):
        cdf += math.comb(n, j) / 2**n
        if cdf <= alpha:
            best = j
    if best is None:
        return 0, n - 1
    return best, n - (best + 1)


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 10, 20, 21, 50, 101, 300])
def test_median_ci_indices_exact_binomial(n: int) -> None:
    assert median_ci_indices(n) == _brute_force_ci(n)


def test_median_ci_covers_true_median() -> None:
    # Exponential(1) has median ln 2. The binomial interval is distribution-free: its coverage
    # is at least 95% (for n=30 exactly 1 - 2 F(9) = 0.957).
    rng = np.random.default_rng(11)
    trials, n, hits = 3000, 30, 0
    for _ in range(trials):
        s = Stats.from_samples(rng.exponential(1.0, n))
        hits += s.ci95_low_ms <= math.log(2) <= s.ci95_high_ms
    assert 0.94 <= hits / trials <= 0.975


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 1e4, allow_nan=False), min_size=1, max_size=200))
def test_stats_order_invariants(xs: list[float]) -> None:
    s = Stats.from_samples(xs)
    eps = 1e-9 * max(xs)
    assert s.min_ms - eps <= s.ci95_low_ms <= s.median_ms + eps
    assert s.median_ms - eps <= s.ci95_high_ms <= s.max_ms + eps
    assert s.min_ms - eps <= s.median_ms <= s.p90_ms + eps
    assert s.p90_ms <= s.p95_ms + eps <= s.p99_ms + 2 * eps <= s.max_ms + 3 * eps
    assert s.iqr_ms >= 0 and s.count == len(xs)


def test_from_summary_falls_back_to_mean_and_cv() -> None:
    s = Stats.from_summary(count=50, mean_ms=10.0, std_ms=2.0, min_ms=7.0, max_ms=15.0)
    assert s.median_ms == 10.0 and s.source == "summary"
    assert s.unstable  # cv 0.2 > 0.10
    assert math.isnan(s.iqr_ms) and math.isnan(s.ci95_low_ms)
    s = Stats.from_summary(count=50, mean_ms=10.0, std_ms=0.5, median_ms=9.8)
    assert s.median_ms == 9.8 and not s.unstable
    t = Timing(samples_ms=[], summary_ms={"count": 5, "mean": 3.0, "std": 0.1})
    assert Stats.from_timing(t).mean_ms == 3.0
    with pytest.raises(MeasurementError):
        Stats.from_timing(Timing(samples_ms=[]))


def test_measure_stable_remeasures_until_stable() -> None:
    wide = Timing(samples_ms=[8.0, 10.0, 12.0, 9.0, 11.0] * 4)
    tight = Timing(samples_ms=[10.0, 10.1, 9.9] * 7)
    seq = iter([wide, tight, wide])
    timing, stats, attempts = measure_stable(lambda: next(seq), Protocol(remeasure=2))
    assert attempts == 2 and timing is tight and not stats.unstable
    # no re-measure allowed: the unstable one is kept and flagged
    timing, stats, attempts = measure_stable(lambda: wide, Protocol(remeasure=0))
    assert attempts == 1 and stats.unstable
    # all attempts unstable: the least unstable one wins
    wider = Timing(samples_ms=[5.0, 10.0, 15.0] * 7)
    seq = iter([wider, wide, wider])
    timing, stats, attempts = measure_stable(lambda: next(seq), Protocol(remeasure=2))
    assert attempts == 3 and timing is wide


def test_timed_loop_two_clocks() -> None:
    # durations follow the wall clock, samples the other clock (here: half the wall time)
    wall = FakeClock(0.015625)  # binary-exact steps: no rounding at the boundaries
    half = FakeClock(0.0078125)

    def work() -> None:
        wall.work()
        half.work()

    p = Protocol(warmup_runs=2, warmup_min_s=0.0, min_runs=5, min_s=0.125, max_s=1.0)
    t = timed_loop(work, p, clock=wall, sample_clock=half)
    assert len(t.warmup_ms) == 2 and len(t.samples_ms) == 8
    assert all(x == 7.8125 for x in t.samples_ms)
