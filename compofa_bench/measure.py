"""The measurement protocol, the timed loop and the statistics every latency number comes from.

One rule for every runtime (the one TFLite's ``benchmark_model`` and ``trtexec`` use): warm up
for at least ``warmup_runs`` runs *and* ``warmup_min_s`` seconds, then time runs until at least
``min_runs`` runs *and* ``min_s`` seconds are done, stopping early only at ``max_s`` seconds.
Every per-run sample is kept; statistics are computed from the samples, never from a running
mean, so they can be recomputed later.

The two records every adapter exchanges with the loop live here too: :class:`Workload` (what
to measure) and :class:`Timing` (what one timed run produced). This module is the floor: it
knows no runtime and imports nothing from ``compofa_bench.adapters``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench.errors import MeasurementError

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass(frozen=True)
class Workload:
    """What to measure.

    ``module`` is a float32 PyTorch module in eval mode taking one NCHW tensor.
    ``input_shape`` includes the batch dimension. ``cache_key`` identifies the workload
    for artifact caches (arch key or layer key plus anything that changes the graph);
    adapters add their own parts (precision, runtime version, ...).

    A workload may instead be *lazy*: ``module=None`` and a ``module_factory``. Adapters that
    set ``lazy_module = True`` call :meth:`get_module` only on an artifact-cache miss, so a
    rerun with cached artifacts never builds the subnet; for every other adapter the profile
    loop resolves the module before :meth:`Adapter.prepare`, so ``workload.module`` is set.
    """

    name: str
    module: nn.Module | None
    input_shape: tuple[int, ...]
    cache_key: str
    module_factory: Callable[[], nn.Module] | None = field(default=None, compare=False)

    def get_module(self) -> nn.Module:
        """The module, built (once) by ``module_factory`` when the workload is lazy."""
        if self.module is None:
            if self.module_factory is None:
                raise ValueError(f"workload {self.name} has neither a module nor a factory")
            # frozen for users, but a lazy workload fills its own cache exactly once
            object.__setattr__(self, "module", self.module_factory())
        assert self.module is not None
        return self.module


@dataclass
class Timing:
    """What one timed run of a prepared workload produced.

    ``samples_ms`` holds one latency per timed run when the runtime exposes them. Native tools
    that print only a summary (``benchmark_model``) leave it empty and fill ``summary_ms`` with
    the keys they have (``count``, ``mean``, ``std``, ``min``, ``max``, ``first``...).
    ``raw_output`` keeps a native tool's text so a parse can be redone later.
    """

    samples_ms: list[float]
    warmup_ms: list[float] = field(default_factory=list)
    summary_ms: dict[str, float] = field(default_factory=dict)
    raw_output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Protocol:
    """How long to warm up and how many runs to time.

    The defaults suit a CPU running a MobileNetV3-sized network (5-50 ms): 10 warmup runs and
    at least 0.2 s let caches, the thread pool and frequency scaling settle; at least 20 timed
    runs and 0.5 s give a median whose 95% confidence interval spans a few order statistics;
    5 s caps very slow models.
    """

    warmup_runs: int = 10
    warmup_min_s: float = 0.2
    min_runs: int = 20
    min_s: float = 0.5
    max_s: float = 5.0
    batch_size: int = 1
    #: IQR / median above which a measurement is flagged unstable.
    unstable_threshold: float = 0.10
    #: How many times an unstable measurement is re-taken within a run (the most stable attempt
    #: is kept), and how many times a later run measures an unstable or contended row again.
    remeasure: int = 0
    #: Seconds to sleep before each workload, to let a phone or laptop cool down.
    cooldown_s: float = 0.0
    #: Share of the measured CPUs' capacity used by other processes (or stolen by the
    #: hypervisor) above which a measurement is marked contended (see compofa_bench.host_load).
    contention_threshold: float = 0.10
    #: Relative drift between a timing run's first and last probe of a reference workload
    #: above which the run warns that its noise floor is too high to trust small differences.
    noise_floor_threshold: float = 0.05

    def __post_init__(self) -> None:
        for name in ("warmup_runs", "min_runs", "batch_size", "remeasure"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise MeasurementError(f"protocol {name}: expected an integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("warmup_min_s", "min_s", "max_s", "unstable_threshold", "cooldown_s",
                     "contention_threshold", "noise_floor_threshold"):  # fmt: skip
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise MeasurementError(f"protocol {name}: expected a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.warmup_runs < 0 or self.remeasure < 0:
            raise MeasurementError("protocol warmup_runs and remeasure must be >= 0")
        if self.min_runs < 1:
            raise MeasurementError(f"protocol min_runs must be >= 1, got {self.min_runs}")
        if self.batch_size < 1:
            raise MeasurementError(f"protocol batch_size must be >= 1, got {self.batch_size}")
        for name in ("warmup_min_s", "min_s", "cooldown_s"):
            if getattr(self, name) < 0:
                raise MeasurementError(f"protocol {name} must be >= 0")
        if self.max_s <= 0 or self.max_s < self.min_s:
            raise MeasurementError(
                f"protocol max_s ({self.max_s}) must be positive and >= min_s ({self.min_s})"
            )
        if self.unstable_threshold <= 0:
            raise MeasurementError("protocol unstable_threshold must be > 0")
        for name in ("contention_threshold", "noise_floor_threshold"):
            if getattr(self, name) <= 0:
                raise MeasurementError(f"protocol {name} must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Identifies the protocol for resume: every field that changes the numbers.
        ``cooldown_s`` and ``remeasure`` are left out: they change when, not what, is measured;
        the two thresholds too: they judge a measurement, they do not change it."""
        d = self.to_dict()
        for name in ("cooldown_s", "remeasure", "contention_threshold", "noise_floor_threshold"):
            d.pop(name)
        return _short_hash(d)

    def replace(self, **overrides: Any) -> Protocol:
        """A copy with the given fields changed; ``None`` values are ignored (CLI defaults)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise MeasurementError(
                f"unknown protocol field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base: Protocol | None = None) -> Protocol:
        return (base or cls()).replace(**dict(d))


def _short_hash(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# =============================================================================== statistics


@dataclass(frozen=True)
class Stats:
    """Summary of one measurement, in milliseconds.

    ``ci95_low_ms``/``ci95_high_ms`` bound the median with a distribution-free interval from
    order statistics (binomial): it needs no normality, and with fewer than 6 samples it is
    simply ``[min, max]`` (coverage then below 95%). ``source`` is ``"samples"`` or
    ``"summary"``; fields a summary-only tool does not report are NaN.
    """

    median_ms: float
    mean_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    iqr_ms: float
    cv: float
    ci95_low_ms: float
    ci95_high_ms: float
    count: int
    unstable: bool
    source: str = "samples"

    @property
    def relative_iqr(self) -> float:
        """IQR / median, the instability measure; NaN when unknown."""
        if not math.isfinite(self.iqr_ms) or self.median_ms <= 0:
            return math.nan
        return self.iqr_ms / self.median_ms

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], unstable_threshold: float = 0.10) -> Stats:
        x = np.asarray(samples_ms, dtype=np.float64)
        if x.ndim != 1 or x.size == 0:
            raise MeasurementError("no timing samples to summarize")
        if not np.all(np.isfinite(x)):
            raise MeasurementError("timing samples contain NaN or infinity")
        x = np.sort(x)
        p25, median, p75, p90, p95, p99 = np.percentile(x, [25, 50, 75, 90, 95, 99])
        mean = float(x.mean())
        std = float(x.std(ddof=1)) if x.size > 1 else 0.0
        iqr = float(p75 - p25)
        lo, hi = median_ci_indices(x.size)
        return cls(
            median_ms=float(median),
            mean_ms=mean,
            p90_ms=float(p90),
            p95_ms=float(p95),
            p99_ms=float(p99),
            min_ms=float(x[0]),
            max_ms=float(x[-1]),
            std_ms=std,
            iqr_ms=iqr,
            cv=std / mean if mean > 0 else math.nan,
            ci95_low_ms=float(x[lo]),
            ci95_high_ms=float(x[hi]),
            count=int(x.size),
            unstable=bool(median > 0 and iqr / median > unstable_threshold),
        )

    @classmethod
    def from_summary(
        cls,
        *,
        count: int,
        mean_ms: float,
        std_ms: float = math.nan,
        min_ms: float = math.nan,
        max_ms: float = math.nan,
        median_ms: float | None = None,
        p90_ms: float = math.nan,
        p95_ms: float = math.nan,
        p99_ms: float = math.nan,
        unstable_threshold: float = 0.10,
    ) -> Stats:
        """For native tools that print only a summary (``benchmark_model``: count, mean, std,
        min, max). ``median_ms`` falls back to the mean so that downstream code always has a
        central value; ``unstable`` then uses the coefficient of variation instead of IQR."""
        if count < 1 or not math.isfinite(mean_ms):
            raise MeasurementError(
                f"summary needs count >= 1 and a finite mean, got {count}, {mean_ms}"
            )
        med = mean_ms if median_ms is None else float(median_ms)
        cv = std_ms / mean_ms if mean_ms > 0 and math.isfinite(std_ms) else math.nan
        return cls(
            median_ms=med,
            mean_ms=float(mean_ms),
            p90_ms=float(p90_ms),
            p95_ms=float(p95_ms),
            p99_ms=float(p99_ms),
            min_ms=float(min_ms),
            max_ms=float(max_ms),
            std_ms=float(std_ms),
            iqr_ms=math.nan,
            cv=cv,
            ci95_low_ms=math.nan,
            ci95_high_ms=math.nan,
            count=int(count),
            unstable=bool(math.isfinite(cv) and cv > unstable_threshold),
            source="summary",
        )

    @classmethod
    def from_timing(cls, timing: Timing, unstable_threshold: float = 0.10) -> Stats:
        """Samples when the adapter has them, else its summary."""
        if timing.samples_ms:
            return cls.from_samples(timing.samples_ms, unstable_threshold)
        s = timing.summary_ms
        if "count" not in s or "mean" not in s:
            raise MeasurementError("adapter returned neither samples nor a count/mean summary")
        return cls.from_summary(
            count=int(s["count"]),
            mean_ms=s["mean"],
            std_ms=s.get("std", math.nan),
            min_ms=s.get("min", math.nan),
            max_ms=s.get("max", math.nan),
            median_ms=s.get("median"),
            p90_ms=s.get("p90", math.nan),
            p95_ms=s.get("p95", math.nan),
            p99_ms=s.get("p99", math.nan),
            unstable_threshold=unstable_threshold,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def median_ci_indices(n: int, confidence: float = 0.95) -> tuple[int, int]:
    """0-based indices ``(lo, hi)`` into ``n`` sorted samples such that
    ``[x[lo], x[hi]]`` covers the true median with probability >= ``confidence``.

    The number of samples below the median is Binomial(n, 1/2), whatever the distribution;
    ``[x_(l), x_(n+1-l)]`` (1-based) covers it with probability ``1 - 2 F(l-1)``. We take the
    largest such ``l``. When even ``[min, max]`` falls short (n < 6 at 95%), it is returned.
    """
    if n < 1:
        raise MeasurementError("no samples")
    alpha = (1.0 - confidence) / 2.0
    k = np.arange(n + 1)
    # log pmf through lgamma: exact enough and works for any n without huge integers
    lg = np.array([math.lgamma(i + 1) for i in range(n + 1)])
    log_pmf = lg[n] - lg[k] - lg[n - k] - n * math.log(2.0)
    cdf = np.cumsum(np.exp(log_pmf))
    # l (1-based) valid when F(l-1) <= alpha; cdf[j] = F(j)
    valid = np.nonzero(cdf[: (n + 1) // 2] <= alpha)[0]
    if valid.size == 0:
        return 0, n - 1
    l_one_based = int(valid[-1]) + 1
    return l_one_based - 1, n - l_one_based


# =============================================================================== timed loop


def timed_loop(
    fn: Callable[[], object],
    protocol: Protocol,
    clock: Callable[[], float] = time.perf_counter,
    sample_clock: Callable[[], float] | None = None,
) -> Timing:
    """Warm up and time ``fn`` under ``protocol``; every timed run is one sample in ms.

    The loop body is two clock reads and one list append, so it adds well under a microsecond
    per run (see ``benchmarks/loop_overhead.py``). ``fn`` should do nothing but inference:
    inputs bound once outside, no copies inside. ``clock`` decides the protocol's durations;
    ``sample_clock`` (default: ``clock``) times each run, e.g. ``time.thread_time`` for the
    CPU time of a single-threaded runtime on a shared machine.
    """

    if sample_clock is not None and sample_clock is not clock:
        return _timed_loop_two_clocks(fn, protocol, clock, sample_clock)

    warmup: list[float] = []
    start = clock()
    while len(warmup) < protocol.warmup_runs or (clock() - start) < protocol.warmup_min_s:
        t0 = clock()
        fn()
        warmup.append((clock() - t0) * 1e3)
        if clock() - start >= protocol.max_s and len(warmup) >= protocol.warmup_runs:
            break  # a very slow model: the warmup seconds must not exceed the timing budget

    samples: list[float] = []
    append = samples.append
    min_runs, min_s, max_s = protocol.min_runs, protocol.min_s, protocol.max_s
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        append((t1 - t0) * 1e3)
        elapsed = t1 - start
        if elapsed >= max_s or (len(samples) >= min_runs and elapsed >= min_s):
            break
    return Timing(samples_ms=samples, warmup_ms=warmup, extra={"timed_wall_s": clock() - start})


def _timed_loop_two_clocks(
    fn: Callable[[], object],
    protocol: Protocol,
    clock: Callable[[], float],
    sample_clock: Callable[[], float],
) -> Timing:

    warmup: list[float] = []
    start = clock()
    while len(warmup) < protocol.warmup_runs or (clock() - start) < protocol.warmup_min_s:
        t0 = sample_clock()
        fn()
        warmup.append((sample_clock() - t0) * 1e3)
        if clock() - start >= protocol.max_s and len(warmup) >= protocol.warmup_runs:
            break
    samples: list[float] = []
    start = clock()
    while True:
        t0 = sample_clock()
        fn()
        samples.append((sample_clock() - t0) * 1e3)
        elapsed = clock() - start
        if elapsed >= protocol.max_s or (
            len(samples) >= protocol.min_runs and elapsed >= protocol.min_s
        ):
            break
    return Timing(samples_ms=samples, warmup_ms=warmup, extra={"timed_wall_s": clock() - start})


def measure_stable(run_once: Callable[[], Timing], protocol: Protocol) -> tuple[Timing, Stats, int]:
    """Run ``run_once`` and, while the result is unstable, up to ``protocol.remeasure`` more
    times. Returns the most stable attempt (lowest IQR/median), its stats and the attempt count."""
    best: tuple[Timing, Stats] | None = None
    attempts = 0
    for _ in range(protocol.remeasure + 1):
        attempts += 1
        timing = run_once()
        stats = Stats.from_timing(timing, protocol.unstable_threshold)
        if best is None or _instability(stats) < _instability(best[1]):
            best = (timing, stats)
        if not stats.unstable:
            break
    assert best is not None
    return best[0], best[1], attempts


def _instability(stats: Stats) -> float:
    r = stats.relative_iqr
    if math.isnan(r):
        r = stats.cv if math.isfinite(stats.cv) else math.inf
    return r
