"""The inside of one timing run (:func:`compofa_bench.profile.measure_workloads`): the job,
outcome and summary records, the device fingerprint, and the rounds loop that measures each
workload, writes its rows and claims, probes the reference workload and closes the run.

Split from :mod:`compofa_bench.profile` (which keeps the public loop and the arch helpers) so
that no module grows past 700 lines; the names are re-exported there.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench import fingerprint as fp
from compofa_bench import hostlock
from compofa_bench.errors import (
    CompofaError,
    DeviceError,
    MeasurementError,
    MissingDependencyError,
    StoreError,
)
from compofa_bench.host_load import LoadMeter, wait_idle
from compofa_bench.measure import Protocol, Stats, Workload, measure_stable
from compofa_bench.progress import ProgressEvent, ProgressFn, report
from compofa_bench.store import Measurement, ResultStore, utc_now
from compofa_bench.timing_run import (
    ESTIMATOR_ONE_ROUND,
    Round,
    RunOptions,
    combine_rounds,
    noise_floor,
    probe_protocol,
    shuffled,
)

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter

#: Errors that concern the device or the store rather than one workload: they stop the loop.
FATAL_ERRORS: tuple[type[BaseException], ...] = (DeviceError, MissingDependencyError, StoreError)


@dataclass(frozen=True)
class Job:
    """One thing to measure.

    ``key`` is the human key stored as ``workload_key`` (``Arch.key()``, a layer key).
    ``cache_key`` is the resume identity: it must change whenever the graph does (width,
    classes, batch, weights when they matter); it also names the exported-file cache.
    ``build`` makes the :class:`Workload` and is called only if the job is not already stored.
    """

    key: str
    cache_key: str
    build: Callable[[], Workload]
    kind: str = "network"
    space: str | None = None
    arch: Mapping[str, Any] | None = None
    resolution: int | None = None
    width_mult: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    key: str
    status: str  # "ok" | "failed" | "skipped"
    stats: Stats | None = None
    error: str | None = None
    row_id: int | None = None
    prepare_s: dict[str, float] = field(default_factory=dict)
    timed_s: float = 0.0
    attempts: int = 0
    #: other processes used the measured CPUs beyond the protocol's contention_threshold
    contended: bool = False
    load: dict[str, Any] | None = None
    rounds: int = 1

    @property
    def unstable(self) -> bool:
        return bool(self.stats and self.stats.unstable)

    @property
    def clean(self) -> bool:
        """Measured, neither unstable nor contended."""
        return self.status == "ok" and not self.unstable and not self.contended


@dataclass
class RunSummary:
    """What one device's loop did; ``timed_s`` is the sum of timed inference it reports."""

    device: str
    fingerprint_hash: str
    protocol_hash: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False
    rounds: int = 1
    run_id: int | None = None
    #: medians (ms) of the noise-floor probes that opened and closed the run
    probe_ms: list[float | None] = field(default_factory=lambda: [None, None])
    probe_key: str | None = None

    @property
    def noise_floor(self) -> float | None:
        """|last probe / first probe - 1|: how far the host drifted during the run."""
        return noise_floor(self.probe_ms[0], self.probe_ms[1])

    def counts(self) -> dict[str, int]:
        """ok (clean), unstable, contended (a row both counts in both), failed, skipped."""
        ok = self.by_status("ok")
        return {
            "measured": len(ok),
            "ok": sum(o.clean for o in ok),
            "unstable": sum(o.unstable for o in ok),
            "contended": sum(o.contended for o in ok),
            "failed": len(self.by_status("failed")),
            "skipped": len(self.by_status("skipped")),
        }

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def timed_s(self) -> float:
        return sum(o.timed_s for o in self.outcomes)

    def prepare_totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in self.outcomes:
            for k, v in o.prepare_s.items():
                out[k] = out.get(k, 0.0) + v
        return out

    def to_dict(self) -> dict[str, Any]:
        ok = [o for o in self.outcomes if o.status == "ok" and o.stats]
        ok.sort(key=lambda o: o.stats.median_ms)  # type: ignore[union-attr]
        floor = self.noise_floor
        return {
            "device": self.device,
            "fingerprint_hash": self.fingerprint_hash,
            "protocol_hash": self.protocol_hash,
            "run_id": self.run_id,
            "rounds": self.rounds,
            "measured": len(ok),
            "ok": sum(o.clean for o in ok),
            "skipped": len(self.by_status("skipped")),
            "failed": [{"key": o.key, "error": o.error} for o in self.by_status("failed")],
            "unstable": [o.key for o in ok if o.stats and o.stats.unstable],
            "contended": [o.key for o in ok if o.contended],
            "noise_floor": None if floor is None else round(floor, 4),
            "probe_ms": [None if x is None else round(x, 4) for x in self.probe_ms],
            "fastest": _brief(ok[0]) if ok else None,
            "slowest": _brief(ok[-1]) if ok else None,
            "wall_s": round(self.wall_s, 3),
            "timed_s": round(self.timed_s, 3),
            "prepare_s": {k: round(v, 3) for k, v in self.prepare_totals().items()},
            "interrupted": self.interrupted,
            "results": [
                {
                    "key": o.key,
                    "status": o.status,
                    "median_ms": o.stats.median_ms if o.stats else None,
                    "unstable": bool(o.stats and o.stats.unstable),
                    "contended": o.contended,
                    "other_cpu": (o.load or {}).get("other_cpu"),
                    "rounds": o.rounds,
                    "error": o.error,
                }
                for o in self.outcomes
            ],
        }


def _brief(o: Outcome) -> dict[str, Any]:
    assert o.stats is not None
    return {"key": o.key, "median_ms": o.stats.median_ms}


def device_fingerprint(adapter: Adapter, protocol: Protocol) -> dict[str, Any]:
    """The fingerprint (stable part hashed) of ``adapter`` now."""
    return fp.fingerprint(
        adapter.describe(), protocol.to_dict(), host=not getattr(adapter, "remote", False)
    )


class _Ticker:
    """One run's progress events: ``done`` of ``total`` (rounds x workloads), what is in hand."""

    def __init__(self, progress: ProgressFn | None, task: str, total: int) -> None:
        self.progress, self.task, self.total = progress, task, total
        self.done, self.current = 0, ""
        self.show("")

    def show(self, current: str) -> None:
        self.current = current
        report(self.progress, ProgressEvent(self.task, self.done, self.total, current))

    def advance(self) -> None:
        self.done += 1
        self.show(self.current)

    def finish(self, current: str) -> None:
        event = ProgressEvent(self.task, self.done, self.total, current, finished=True)
        report(self.progress, event)


@dataclass
class _RunContext:
    adapter: Adapter
    store: ResultStore
    protocol: Protocol
    device_name: str
    base_fp: dict[str, Any]
    cpus: tuple[int, ...]
    run: RunOptions
    run_id: int | None = None
    #: claim each workload in the store before its first round (None: --force, no claims)
    claim: dict[str, Any] | None = None
    owner: str = field(default_factory=hostlock.process_owner)
    #: cache_key -> (job, rounds so far, prepare_s totals, timed_s, attempts, started_at)
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Pending:
    job: Job
    started_at: str
    rounds: list[Round] = field(default_factory=list)
    timings: list[Any] = field(default_factory=list)
    prepare_s: dict[str, float] = field(default_factory=dict)
    timed_s: float = 0.0
    attempts: int = 0
    before: dict[str, Any] = field(default_factory=dict)


def _run_rounds(
    todo: list[Job],
    ctx: _RunContext,
    summary: RunSummary,
    ticker: _Ticker,
    stop: threading.Event | None,
    on_outcome: Callable[[Outcome], None] | None,
) -> None:
    run, protocol = ctx.run, ctx.protocol
    orders = shuffled(len(todo), run.rounds, np.random.default_rng(run.order_seed))
    dropped: set[str] = set()  # failed, or skipped after a claim
    first = True
    for r, order in enumerate(orders):
        for i in order:
            job = todo[i]
            if stop is not None and stop.is_set():
                summary.interrupted = True
                return
            if r == 0 and ctx.claim is not None and not _claim(job, ctx):
                # done meanwhile, or being measured by another process (on other CPUs)
                summary.outcomes.append(Outcome(job.key, "skipped"))
                dropped.add(job.cache_key)
                ticker.advance()
                continue
            if job.cache_key in dropped:
                ticker.advance()
                continue
            ticker.show(job.key if run.rounds == 1 else f"round {r + 1}/{run.rounds} {job.key}")
            if protocol.cooldown_s > 0 and not first:
                time.sleep(protocol.cooldown_s)
            first = False
            if run.wait_idle_s > 0:
                wait_idle(run.wait_idle_s, protocol.contention_threshold, ctx.cpus, run.say)
            pend = ctx.pending.setdefault(
                job.cache_key, _Pending(job, utc_now(), before=fp.volatile_part())
            )
            outcome = _measure_round(job, ctx, pend, r)
            if outcome is not None:  # failed, or its last round
                ctx.pending.pop(job.cache_key, None)
                if ctx.claim is not None:
                    ctx.store.release_claims(ctx.owner, job.cache_key)
                if outcome.status == "failed":
                    dropped.add(job.cache_key)
                summary.outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
            ticker.advance()


def _measure_round(job: Job, ctx: _RunContext, pend: _Pending, r: int) -> Outcome | None:
    """Time one round of ``job`` and store it; the job's :class:`Outcome` once it is failed
    or has all its rounds (its row then written), else None."""
    adapter, protocol = ctx.adapter, ctx.protocol
    prepared = None
    error: str | None = None
    failed_raw: str | None = None
    timing = None
    try:
        t0 = time.perf_counter()
        workload = job.build()
        if workload.module is None and not getattr(adapter, "lazy_module", False):
            workload.get_module()
        build_s = time.perf_counter() - t0
        if workload.input_shape[0] != protocol.batch_size:
            raise MeasurementError(
                f"workload batch {workload.input_shape[0]} != protocol batch_size "
                f"{protocol.batch_size}"
            )
        prepared = adapter.prepare(workload)
        # a lazy adapter reports the subnet build it did (cache miss) in its own build_s
        for k, v in prepared.prepare_s.items():
            pend.prepare_s[k] = pend.prepare_s.get(k, 0.0) + v
        pend.prepare_s["build_s"] = pend.prepare_s.get("build_s", 0.0) + build_s
        t0 = time.perf_counter()
        meter = LoadMeter(ctx.cpus) if _on_host_cpus(adapter) else None
        timing, stats, attempts = measure_stable(lambda: adapter.time(prepared, protocol), protocol)
        load = meter.stop() if meter is not None else None
        call_s = time.perf_counter() - t0  # warmup + timed + binding
        pend.prepare_s["time_call_s"] = pend.prepare_s.get("time_call_s", 0.0) + call_s
        timed = float(timing.extra.get("timed_wall_s", call_s))
        if not timing.samples_ms and "count" in timing.summary_ms:
            timed = float(timing.summary_ms["count"] * stats.mean_ms / 1e3)
        pend.timed_s += timed
        pend.attempts += attempts
        contended = bool(load and load.contended(protocol.contention_threshold))
        rnd = Round(tuple(timing.samples_ms), stats, load, contended)
        pend.rounds.append(rnd)
        pend.timings.append(timing)
    except FATAL_ERRORS:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        # a native tool whose output could not be parsed: keep what it printed with the failure
        failed_raw = getattr(exc, "raw_output", None)
        if not isinstance(exc, CompofaError):
            # a bug or a runtime crash: keep the place it happened for the bug report
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            error += f" (at {Path(tb.filename).name}:{tb.lineno})"
    finally:
        if prepared is not None:
            # releasing must not hide the measurement's own outcome
            with contextlib.suppress(Exception):
                adapter.release(prepared)
    ctx.store.add_round(
        run_id=ctx.run_id or 0, round=r, fingerprint_hash=ctx.base_fp["stable_hash"],
        protocol_hash=protocol.hash(), kind=job.kind, cache_key=job.cache_key,
        workload_key=job.key, status="failed" if error else "ok",
        median_ms=None if error else pend.rounds[-1].stats.median_ms,
        unstable=None if error else int(pend.rounds[-1].stats.unstable),
        contended=None if error else int(pend.rounds[-1].contended),
        other_cpu=None if error or not pend.rounds[-1].load else pend.rounds[-1].load.other_cpu,
        host_load_json=None if error or not pend.rounds[-1].load
        else json.dumps(pend.rounds[-1].load.to_dict()),
        samples_json=None if error else json.dumps([round(x, 6) for x in timing.samples_ms]),
        error=error,
    )  # fmt: skip
    if error is not None:
        return _write_row(ctx, pend, error=error, raw=failed_raw, timing=timing)
    if len(pend.rounds) == ctx.run.rounds:
        return _write_row(ctx, pend)
    return None


def _write_row(
    ctx: _RunContext,
    pend: _Pending,
    *,
    error: str | None = None,
    raw: str | None = None,
    timing: Any = None,
) -> Outcome:
    """The measurement row of ``pend``: failed with ``error``, else its rounds combined."""
    job, protocol = pend.job, ctx.protocol
    outcome = Outcome(job.key, "failed", error=error, prepare_s=dict(pend.prepare_s))
    outcome.timed_s, outcome.attempts = pend.timed_s, pend.attempts
    stats = None
    load = None
    estimator = ESTIMATOR_ONE_ROUND
    if error is None and pend.rounds:
        stats, estimator, load_obj, contended = combine_rounds(pend.rounds, protocol)
        load = load_obj.to_dict() if load_obj is not None else None
        outcome.status, outcome.stats, outcome.contended = "ok", stats, contended
        outcome.load, outcome.rounds = load, len(pend.rounds)
    last = pend.timings[-1] if pend.timings else timing
    ok = outcome.status == "ok"
    samples = [x for t in pend.timings for x in t.samples_ms] if ok else []
    fingerprint = {
        **ctx.base_fp, "volatile": {"before": pend.before, "after": fp.volatile_part()},
    }  # fmt: skip
    extra = dict(last.extra) if ok and last is not None else {}
    if ok and len(pend.rounds) > 1:
        extra["round_medians_ms"] = [round(x.stats.median_ms, 6) for x in pend.rounds]
    m = Measurement(
        device=ctx.device_name,
        adapter=ctx.adapter.kind,
        fingerprint=fingerprint,
        protocol=protocol.to_dict(),
        protocol_hash=protocol.hash(),
        kind=job.kind,
        workload_key=job.key,
        cache_key=job.cache_key,
        batch_size=protocol.batch_size,
        status=outcome.status,
        error=outcome.error,
        stats=stats,
        samples_ms=samples,
        warmup_ms=[x for t in pend.timings for x in t.warmup_ms] if ok else (),
        # a failed row keeps what its own failing round printed, not an earlier round's output
        summary_ms=last.summary_ms if ok and last is not None else {},
        raw_output=last.raw_output if ok and last is not None else raw,
        space=job.space,
        arch=job.arch,
        resolution=job.resolution,
        width_mult=job.width_mult,
        attempts=max(outcome.attempts, 1),
        prepare_s=outcome.prepare_s,
        meta={**dict(job.meta), **extra},
        started_at=pend.started_at,
        finished_at=utc_now(),
        host_load=load,
        contended=outcome.contended if ok and _on_host_cpus(ctx.adapter) else None,
        rounds=max(len(pend.rounds), 1),
        estimator=estimator,
        run_id=ctx.run_id,
    )
    outcome.row_id = ctx.store.add(m)
    return outcome


def _claim(job: Job, ctx: _RunContext) -> bool:
    ident = (ctx.base_fp["stable_hash"], ctx.protocol.hash(), job.kind, job.cache_key)
    assert ctx.claim is not None
    return ctx.store.claim(ident, ctx.owner, alive=hostlock.owner_alive, **ctx.claim)


def _on_host_cpus(adapter: Adapter) -> bool:
    """Whether the host's other load can disturb this adapter's timing: not for a device
    that says it does not share the host's CPUs, nor for a remote one (a phone)."""
    return adapter.spec.shares_host_cpus and not getattr(adapter, "remote", False)


def _flush_partial(ctx: _RunContext, summary: RunSummary) -> None:
    for ck, pend in list(ctx.pending.items()):
        ctx.pending.pop(ck)
        if pend.rounds:
            with contextlib.suppress(Exception):
                summary.outcomes.append(_write_row(ctx, pend))


def _probe(job: Job, ctx: _RunContext) -> tuple[float | None, dict[str, float]]:
    """Median ms of a short timing of ``job`` (the noise-floor probe; not stored as a row)
    and what preparing it cost."""
    adapter = ctx.adapter
    prepared = None
    prep: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        workload = job.build()
        if workload.module is None and not getattr(adapter, "lazy_module", False):
            workload.get_module()
        build_s = time.perf_counter() - t0
        prepared = adapter.prepare(workload)
        prep = {**prepared.prepare_s}
        prep["build_s"] = build_s + prep.get("build_s", 0.0)
        timing = adapter.time(prepared, probe_protocol(ctx.protocol))
        return Stats.from_timing(timing, ctx.protocol.unstable_threshold).median_ms, prep
    except FATAL_ERRORS:
        raise
    except Exception:
        return None, prep  # the probe failing is the job's failure to report, not the run's
    finally:
        if prepared is not None:
            with contextlib.suppress(Exception):
                adapter.release(prepared)


def _finish_run(ctx: _RunContext, summary: RunSummary) -> None:
    if ctx.run_id is None:
        return
    d = summary.counts()
    with contextlib.suppress(Exception):
        ctx.store.finish_run(
            ctx.run_id, probe_key=summary.probe_key, probe_before_ms=summary.probe_ms[0],
            probe_after_ms=summary.probe_ms[1], noise_floor=summary.noise_floor,
            measured=d["measured"], contended=d["contended"], unstable=d["unstable"],
            failed=d["failed"], skipped=d["skipped"], interrupted=int(summary.interrupted),
            wall_s=round(summary.wall_s, 3),
        )  # fmt: skip
