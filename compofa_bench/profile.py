"""Profiling: measure many workloads on a device, resumably, into a results store.

:func:`measure_workloads` is the one loop everything uses (``profile`` for whole subnets, ``lut
build`` for single layers). It knows nothing of archs or adapters beyond the adapter protocol:
it takes :class:`Job` s (a key, a resume identity and a lazy workload builder), skips those the
store already holds for this device fingerprint and protocol, and writes each measurement in
its own transaction. A failure of one workload is recorded (status ``failed`` + error text) and
the loop goes on; a device-level failure (:class:`DeviceError`, a missing package, a store that
cannot be written) stops it.

:func:`profile_archs` wraps it for archs of a search space on one or several devices (one
worker thread per device, all writing into one store).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
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
from compofa_bench.host_load import LoadMeter, format_cpus, wait_idle
from compofa_bench.measure import Protocol, Stats, Workload, measure_stable
from compofa_bench.netspec import NetSpec
from compofa_bench.progress import ProgressEvent, ProgressFn, report
from compofa_bench.store import Measurement, ResultStore, utc_now
from compofa_bench.timing_run import (
    ESTIMATOR_ONE_ROUND,
    Round,
    RunOptions,
    combine_rounds,
    device_cpus,
    lock_names,
    noise_floor,
    probe_protocol,
    shuffled,
)

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.spaces import Arch

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


def measure_workloads(
    jobs: Iterable[Job],
    adapter: Adapter,
    store: ResultStore,
    protocol: Protocol,
    *,
    device_name: str | None = None,
    skip_done: bool = True,
    retry_failed: bool = True,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    run: RunOptions | None = None,
) -> RunSummary:
    """Measure ``jobs`` on ``adapter`` under ``protocol``, writing every result to ``store``.

    The whole run holds the host locks of the device's CPUs (see :mod:`compofa_bench.hostlock`):
    a second timing run on the same CPUs waits (or, with ``run.wait`` False, fails at once).
    What is already done is decided under the lock, so two processes on one store never
    measure the same workload twice. Jobs the store already holds (same stable fingerprint,
    protocol, kind and cache key, status ok, at least ``run.rounds`` rounds, neither unstable
    nor contended unless ``run.accept_unstable`` or ``protocol.remeasure`` re-measures are
    spent; also failed ones when ``retry_failed`` is False) are skipped without building them.
    The run opens and closes with a probe of a fixed reference workload (the job with the
    smallest cache key) and stores the drift between the two as its noise floor.
    ``progress``: called with a :class:`~compofa_bench.progress.ProgressEvent` (task: the
    device name; done of rounds x workloads) as the run goes; several devices may share one.
    ``stop``: checked between jobs; when set, the loop
    ends early and the summary says ``interrupted``.
    """
    run = run or RunOptions()
    # duplicates (same kind and cache key) are one measurement
    jobs = list({(j.kind, j.cache_key): j for j in jobs}.values())
    name = device_name or adapter.spec.name
    base_fp = device_fingerprint(adapter, protocol)
    fhash, phash = base_fp["stable_hash"], protocol.hash()
    summary = RunSummary(name, fhash, phash, rounds=run.rounds)
    t_start = time.perf_counter()
    spec = adapter.spec
    cpus = device_cpus(spec)
    locks = hostlock.hold(lock_names(spec), wait=run.wait, timeout_s=run.lock_timeout_s,
                          say=run.say) if run.lock else contextlib.nullcontext()  # fmt: skip
    with locks:
        todo: list[Job] = []
        if skip_done:
            done: dict[str, set[str]] = {}
            for job in jobs:
                if job.kind not in done:
                    done[job.kind] = store.done_keys(
                        fhash, phash, job.kind, not retry_failed, min_rounds=run.rounds,
                        accept_unstable=run.accept_unstable, remeasure=protocol.remeasure,
                    )  # fmt: skip
                if job.cache_key in done[job.kind]:
                    summary.outcomes.append(Outcome(job.key, "skipped"))
                else:
                    todo.append(job)
        else:
            todo = jobs
        if not todo:
            summary.wall_s = time.perf_counter() - t_start
            return summary
        ctx = _RunContext(adapter, store, protocol, name, base_fp, cpus, run)
        if skip_done:
            ctx.claim = {
                "include_failed": not retry_failed, "min_rounds": run.rounds,
                "accept_unstable": run.accept_unstable, "remeasure": protocol.remeasure,
            }  # fmt: skip
        ctx.run_id = store.start_run(
            device=name, fingerprint_hash=fhash, protocol_hash=phash, host=socket.gethostname(),
            pid=os.getpid(), cpus=format_cpus(cpus) if spec.shares_host_cpus else None,
            rounds=run.rounds, order_seed=run.order_seed,
        )  # fmt: skip
        summary.run_id = ctx.run_id
        ticker = _Ticker(progress, name, len(todo) * run.rounds)
        probe_job = min(jobs, key=lambda j: j.cache_key) if run.probe else None
        try:
            if probe_job is not None:
                summary.probe_key = probe_job.key
                summary.probe_ms[0], probe_prep = _probe(probe_job, ctx)
                if any(j.cache_key == probe_job.cache_key for j in todo):
                    # the probe exported it: that cost is the job's, as without a probe
                    ctx.pending[probe_job.cache_key] = _Pending(
                        probe_job, utc_now(), prepare_s=probe_prep, before=fp.volatile_part()
                    )
            _run_rounds(todo, ctx, summary, ticker, stop, on_outcome)
            if probe_job is not None and not summary.interrupted:
                summary.probe_ms[1] = _probe(probe_job, ctx)[0]
        except KeyboardInterrupt:
            summary.interrupted = True
            raise
        finally:
            # rounds already taken of workloads whose last round did not come are kept as rows
            # of fewer rounds (a rerun measures them again): nothing measured is lost
            _flush_partial(ctx, summary)
            with contextlib.suppress(Exception):
                store.release_claims(ctx.owner)
            summary.wall_s = time.perf_counter() - t_start
            _finish_run(ctx, summary)
            ticker.finish("done" if not summary.interrupted else "interrupted")
    floor = summary.noise_floor
    if floor is not None and floor > protocol.noise_floor_threshold:
        run.say(
            f"warning: {name}: noise floor {floor:.1%} (reference probe "
            f"{summary.probe_ms[0]:.3f} -> {summary.probe_ms[1]:.3f} ms) is above "
            f"{protocol.noise_floor_threshold:.0%}: differences smaller than that are not "
            "trustworthy on this host now"
        )
    return summary


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


# =============================================================================== archs


def arch_cache_key(
    arch: Arch,
    *,
    base: str = "mbv3",
    width_mult: float = 1.0,
    n_classes: int = 1000,
    batch_size: int = 1,
    weights: str = "random",
) -> str:
    return f"{base}-w{width_mult:g}-c{n_classes}-b{batch_size}-{weights}-{arch.key()}"


def checkpoint_id(path: str | Path) -> str:
    """Weights identity for caches: content hash of the first MiB plus size (cheap, and a
    retrained checkpoint at the same path gets a new id)."""
    p = Path(path)
    h = hashlib.sha256()
    with p.open("rb") as f:
        h.update(f.read(1 << 20))
    h.update(str(p.stat().st_size).encode())
    return "ckpt" + h.hexdigest()[:12]


def arch_jobs(
    archs: Sequence[Arch],
    build_module: Callable[[Arch], Any],
    *,
    space: str | None,
    base: str = "mbv3",
    width_mult: float = 1.0,
    n_classes: int = 1000,
    batch_size: int = 1,
    weights: str = "random",
) -> list[Job]:
    """Jobs for ``archs``; ``build_module(arch)`` returns the static subnet (lazily called)."""
    jobs = []
    for arch in archs:
        ck = arch_cache_key(
            arch,
            base=base,
            width_mult=width_mult,
            n_classes=n_classes,
            batch_size=batch_size,
            weights=weights,
        )
        shape = (batch_size, 3, arch.resolution, arch.resolution)

        def build(arch: Arch = arch, ck: str = ck, shape: tuple[int, ...] = shape) -> Workload:
            # lazy: an adapter whose artifact cache already holds this subnet never builds it
            return Workload(arch.key(), None, shape, ck, module_factory=lambda: build_module(arch))

        jobs.append(
            Job(
                key=arch.key(),
                cache_key=ck,
                build=build,
                kind="network",
                space=space,
                arch=arch.to_ofa("r"),
                resolution=arch.resolution,
                width_mult=width_mult,
                meta={"base": base, "n_classes": n_classes, "weights": weights},
            )
        )
    return jobs


class SubnetFactory:
    """Builds the supernet once (random init, or a checkpoint) and extracts static subnets.
    Thread-safe: extraction mutates the supernet's active arch, so it is serialized."""

    def __init__(self, net: NetSpec = NetSpec()) -> None:
        self.net = net
        self._net: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the supernet and load the checkpoint now (a bad one fails before any work)."""
        self._supernet()

    def _supernet(self) -> Any:
        if self._net is None:
            from compofa_bench import supernet

            spec = self.net
            net = supernet.build(
                base=spec.base, width_mult=spec.width_mult, n_classes=spec.n_classes
            )
            if spec.checkpoint is not None:
                net.load_checkpoint(spec.checkpoint)
            net.eval()
            self._net = net
        return self._net

    def __call__(self, arch: Arch) -> Any:
        with self._lock:
            sub = self._supernet().extract(arch)
        return sub.eval()


def profile_archs(
    archs: Sequence[Arch],
    devices: Sequence[DeviceSpec],
    store: ResultStore,
    *,
    space: str | None = None,
    net: NetSpec | None = None,
    protocol_overrides: Mapping[str, Any] | None = None,
    skip_done: bool = True,
    progress: ProgressFn | None = None,
    build_module: Callable[[Arch], Any] | None = None,
    adapters: Sequence[Adapter] | None = None,
    run: RunOptions | None = None,
) -> list[RunSummary]:
    """Measure every arch on every device.

    Devices that share this host's CPUs run one after the other (two timing runs on the same
    cores slow each other down); a device whose TOML says ``shares_host_cpus = false`` (a GPU,
    a phone) runs in its own worker thread, overlapping them. ``run``: rounds, waiting and
    locking (:class:`~compofa_bench.timing_run.RunOptions`).

    Weights do not change latency, so without ``net.checkpoint`` subnets are random-init (and the
    export cache is shared by all random-init runs). Adapters are opened before anything is
    measured so that a bad device fails before any work. ``build_module`` replaces the
    supernet (tests, custom models); ``adapters`` supplies already-open adapters. ``net``
    defaults to a random-init width-1.0 supernet of the built-in ``space``'s base (``mbv3``
    when ``space`` names none).
    """
    from compofa_bench import spaces
    from compofa_bench.adapters import open_adapter

    if net is None:  # a built-in space names its supernet base
        net = NetSpec(spaces.get(space).base if space in spaces.names() else "mbv3")
    if not archs:
        raise MeasurementError("no archs to profile")
    if not devices:
        raise DeviceError("no device given")
    overrides = dict(protocol_overrides or {})
    protocols = [d.protocol.replace(**overrides) for d in devices]
    opened: list[Adapter] = list(adapters) if adapters is not None else []
    try:
        if adapters is None:
            for d in devices:
                opened.append(open_adapter(d))
        weights = checkpoint_id(net.checkpoint) if net.checkpoint else "random"
        factory = build_module or SubnetFactory(net)

        def jobs_for(p: Protocol) -> list[Job]:
            return arch_jobs(
                archs,
                factory,
                space=space,
                base=net.base,
                width_mult=net.width_mult,
                n_classes=net.n_classes,
                batch_size=p.batch_size,
                weights=weights,
            )

        if len(devices) == 1:
            return [
                measure_workloads(
                    jobs_for(protocols[0]),
                    opened[0],
                    store,
                    protocols[0],
                    device_name=devices[0].name,
                    skip_done=skip_done,
                    progress=progress,
                    run=run,
                )
            ]
        # every CPU-sharing device in one worker, one after the other; each other device alone
        sharing = [i for i, d in enumerate(devices) if d.shares_host_cpus]
        groups = ([sharing] if sharing else []) + [
            [i] for i, d in enumerate(devices) if not d.shares_host_cpus
        ]
        return _run_parallel(
            devices, opened, protocols, jobs_for, store, skip_done, progress, groups, run
        )
    finally:
        if adapters is None:
            for a in opened:
                a.close()


def _run_parallel(
    devices: Sequence[DeviceSpec],
    adapters: Sequence[Adapter],
    protocols: Sequence[Protocol],
    jobs_for: Callable[[Protocol], list[Job]],
    store: ResultStore,
    skip_done: bool,
    progress: ProgressFn | None,
    groups: Sequence[Sequence[int]],
    run: RunOptions | None,
) -> list[RunSummary]:
    """One worker thread per group of device indices; a group's devices run in turn."""
    stop = threading.Event()
    results: list[RunSummary | None] = [None] * len(devices)
    errors: list[BaseException] = []

    def work(group: Sequence[int]) -> None:
        try:
            for i in group:
                if stop.is_set():
                    return
                results[i] = measure_workloads(
                    jobs_for(protocols[i]),
                    adapters[i],
                    store,
                    protocols[i],
                    device_name=devices[i].name,
                    skip_done=skip_done,
                    progress=progress,
                    stop=stop,
                    run=run,
                )
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=work, args=(g,), name=f"profile-{devices[g[0]].name}", daemon=True)
        for g in groups
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.2)  # short joins keep Ctrl-C responsive in the main thread
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        raise
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


def run_succeeded(summaries: Sequence[RunSummary]) -> bool:
    """False when a run had work and measured nothing: every workload failed (or it was
    interrupted before the first one). Skipped-only runs succeed."""
    outcomes = [o for s in summaries for o in s.outcomes if o.status != "skipped"]
    return not outcomes or any(o.status == "ok" for o in outcomes)


def format_ms(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.3f}"


# =============================================================================== arch selection


def select_archs(
    space_name: str,
    *,
    all_archs: bool = False,
    sample: int | None = None,
    seed: int = 0,
    arch_file: str | Path | None = None,
    resolutions: Sequence[int] | None = None,
) -> list[Arch]:
    """The archs a ``profile`` run measures, validated against the space.

    ``all_archs``: every arch of the space at ``resolutions`` (or the space's resolutions).
    ``sample``: that many distinct archs drawn with ``numpy.random.default_rng(seed)``.
    ``arch_file``: a JSON list of OFA dicts (or one dict, or JSON lines); with ``resolutions``
    every arch is measured at each of them, otherwise each must carry its own ``r``.
    """
    import json

    import numpy as np

    from compofa_bench import spaces
    from compofa_bench.errors import ArchError

    chosen = sum([bool(all_archs), sample is not None, arch_file is not None])
    if chosen != 1:
        raise ArchError("choose exactly one of --archs all, --sample N, --arch-file F")
    space = spaces.get(space_name, resolutions) if resolutions else spaces.get(space_name)
    if all_archs:
        return list(space.enumerate())
    if sample is not None:
        if sample < 1:
            raise ArchError(f"--sample must be >= 1, got {sample}")
        return space.sample_many(sample, np.random.default_rng(seed))
    assert arch_file is not None
    p = Path(arch_file)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ArchError(f"cannot read arch file {p}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ArchError(f"arch file {p} is neither JSON nor JSON lines: {exc.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ArchError(f"arch file {p}: expected a list of arch objects")
    out: list[Arch] = []
    for i, spec in enumerate(data):
        try:
            if resolutions:
                base = {k: v for k, v in spec.items() if k not in ("r", "image_size")}
                out.extend(space.parse(base, resolution=r) for r in resolutions)
            else:
                out.append(space.parse(spec))
        except ArchError as exc:
            raise ArchError(f"arch file {p}, arch #{i}: {exc}") from None
        except AttributeError:
            raise ArchError(f"arch file {p}, arch #{i}: expected an object") from None
    return list(dict.fromkeys(out))
