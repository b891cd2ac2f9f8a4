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
import math
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compofa_bench import fingerprint as fp
from compofa_bench.adapters.base import Workload
from compofa_bench.errors import (
    CompofaError,
    DeviceError,
    MeasurementError,
    MissingDependencyError,
    StoreError,
)
from compofa_bench.measure import Protocol, Stats, measure_stable
from compofa_bench.store import Measurement, ResultStore, utc_now

if TYPE_CHECKING:
    from rich.progress import Progress

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


@dataclass
class RunSummary:
    """What one device's loop did; ``timed_s`` is the sum of timed inference it reports."""

    device: str
    fingerprint_hash: str
    protocol_hash: str
    outcomes: list[Outcome] = field(default_factory=list)
    wall_s: float = 0.0
    interrupted: bool = False

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
        return {
            "device": self.device,
            "fingerprint_hash": self.fingerprint_hash,
            "protocol_hash": self.protocol_hash,
            "measured": len(ok),
            "skipped": len(self.by_status("skipped")),
            "failed": [{"key": o.key, "error": o.error} for o in self.by_status("failed")],
            "unstable": [o.key for o in ok if o.stats and o.stats.unstable],
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
    progress: Progress | None = None,
    show_progress: bool = True,
    stop: threading.Event | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> RunSummary:
    """Measure ``jobs`` on ``adapter`` under ``protocol``, writing every result to ``store``.

    Jobs the store already holds (same stable fingerprint, protocol, kind and cache key, status
    ok; also failed ones when ``retry_failed`` is False) are skipped without building them.
    ``progress``: a shared rich Progress to add a task to (several devices at once); otherwise
    one is created when ``show_progress``. ``stop``: checked between jobs; when set, the loop
    ends early and the summary says ``interrupted``.
    """
    # duplicates (same kind and cache key) are one measurement
    jobs = list({(j.kind, j.cache_key): j for j in jobs}.values())
    name = device_name or adapter.spec.name
    base_fp = device_fingerprint(adapter, protocol)
    fhash, phash = base_fp["stable_hash"], protocol.hash()
    summary = RunSummary(name, fhash, phash)
    t_start = time.perf_counter()

    todo: list[Job] = []
    if skip_done:
        done: dict[str, set[str]] = {}
        for job in jobs:
            if job.kind not in done:
                done[job.kind] = store.done_keys(fhash, phash, job.kind, not retry_failed)
            if job.cache_key in done[job.kind]:
                summary.outcomes.append(Outcome(job.key, "skipped"))
            else:
                todo.append(job)
    else:
        todo = jobs

    own_progress = progress is None and show_progress and bool(todo)
    if own_progress:
        progress = make_progress()
        progress.start()
    task = progress.add_task(name, total=len(todo), current="") if progress is not None else None
    try:
        for i, job in enumerate(todo):
            if stop is not None and stop.is_set():
                summary.interrupted = True
                break
            if progress is not None and task is not None:
                progress.update(task, current=job.key)
            if protocol.cooldown_s > 0 and i > 0:
                time.sleep(protocol.cooldown_s)
            outcome = _measure_one(job, adapter, store, protocol, name, base_fp)
            summary.outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            if progress is not None and task is not None:
                progress.advance(task)
    except KeyboardInterrupt:
        summary.interrupted = True
        raise
    finally:
        summary.wall_s = time.perf_counter() - t_start
        if progress is not None and task is not None:
            progress.update(task, current="done" if not summary.interrupted else "interrupted")
        if own_progress and progress is not None:
            progress.stop()
    return summary


def _measure_one(
    job: Job,
    adapter: Adapter,
    store: ResultStore,
    protocol: Protocol,
    device_name: str,
    base_fp: dict[str, Any],
) -> Outcome:
    started = utc_now()
    before = fp.volatile_part()
    prepared = None
    outcome = Outcome(job.key, "failed")
    timing = None
    failed_raw: str | None = None
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
        outcome.prepare_s = {**prepared.prepare_s}
        outcome.prepare_s["build_s"] = build_s + prepared.prepare_s.get("build_s", 0.0)
        t0 = time.perf_counter()
        timing, stats, attempts = measure_stable(lambda: adapter.time(prepared, protocol), protocol)
        outcome.prepare_s["time_call_s"] = time.perf_counter() - t0  # warmup + timed + binding
        outcome.timed_s = float(timing.extra.get("timed_wall_s", time.perf_counter() - t0))
        if not timing.samples_ms and "count" in timing.summary_ms:
            outcome.timed_s = float(timing.summary_ms["count"] * stats.mean_ms / 1e3)
        outcome.status, outcome.stats, outcome.attempts = "ok", stats, attempts
    except FATAL_ERRORS:
        raise
    except Exception as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
        # a native tool whose output could not be parsed: keep what it printed with the failure
        failed_raw = getattr(exc, "raw_output", None)
        if not isinstance(exc, CompofaError):
            # a bug or a runtime crash: keep the place it happened for the bug report
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            outcome.error += f" (at {Path(tb.filename).name}:{tb.lineno})"
    finally:
        if prepared is not None:
            # releasing must not hide the measurement's own outcome
            with contextlib.suppress(Exception):
                adapter.release(prepared)
    fingerprint = {**base_fp, "volatile": {"before": before, "after": fp.volatile_part()}}
    m = Measurement(
        device=device_name,
        adapter=adapter.kind,
        fingerprint=fingerprint,
        protocol=protocol.to_dict(),
        protocol_hash=protocol.hash(),
        kind=job.kind,
        workload_key=job.key,
        cache_key=job.cache_key,
        batch_size=protocol.batch_size,
        status=outcome.status,
        error=outcome.error,
        stats=outcome.stats,
        samples_ms=timing.samples_ms if timing and outcome.status == "ok" else (),
        warmup_ms=timing.warmup_ms if timing and outcome.status == "ok" else (),
        summary_ms=timing.summary_ms if timing else {},
        raw_output=timing.raw_output if timing else failed_raw,
        space=job.space,
        arch=job.arch,
        resolution=job.resolution,
        width_mult=job.width_mult,
        attempts=max(outcome.attempts, 1),
        prepare_s=outcome.prepare_s,
        meta={**dict(job.meta), **(timing.extra if timing else {})},
        started_at=started,
        finished_at=utc_now(),
    )
    outcome.row_id = store.add(m)
    return outcome


def make_progress() -> Progress:
    """The progress bar every long loop uses: device, bar, done/total, elapsed, ETA, current."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[current]}", style="dim"),
        console=Console(stderr=True),
        transient=False,
    )


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

    def __init__(
        self,
        base: str = "mbv3",
        width_mult: float = 1.0,
        n_classes: int = 1000,
        checkpoint: str | Path | None = None,
    ) -> None:
        self.base, self.width_mult, self.n_classes = base, width_mult, n_classes
        self.checkpoint = checkpoint
        self._net: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Build the supernet and load the checkpoint now (a bad one fails before any work)."""
        self._supernet()

    def _supernet(self) -> Any:
        if self._net is None:
            from compofa_bench import supernet

            net = supernet.build(
                base=self.base, width_mult=self.width_mult, n_classes=self.n_classes
            )
            if self.checkpoint is not None:
                net.load_checkpoint(self.checkpoint)
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
    base: str | None = None,
    width_mult: float = 1.0,
    n_classes: int = 1000,
    checkpoint: str | Path | None = None,
    protocol_overrides: Mapping[str, Any] | None = None,
    skip_done: bool = True,
    show_progress: bool = True,
    build_module: Callable[[Arch], Any] | None = None,
    adapters: Sequence[Adapter] | None = None,
) -> list[RunSummary]:
    """Measure every arch on every device; one worker thread per device when there are several.

    Weights do not change latency, so without ``checkpoint`` subnets are random-init (and the
    export cache is shared by all random-init runs). Adapters are opened before anything is
    measured so that a bad device fails before any work. ``build_module`` replaces the
    supernet (tests, custom models); ``adapters`` supplies already-open adapters. ``base``
    defaults to the base of the built-in ``space`` (``mbv3`` when ``space`` names none).
    """
    from compofa_bench import spaces
    from compofa_bench.devices import open_adapter

    if base is None:  # a built-in space names its supernet base
        base = spaces.get(space).base if space in spaces.names() else "mbv3"
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
        weights = checkpoint_id(checkpoint) if checkpoint else "random"
        factory = build_module or SubnetFactory(base, width_mult, n_classes, checkpoint)

        def jobs_for(p: Protocol) -> list[Job]:
            return arch_jobs(
                archs,
                factory,
                space=space,
                base=base,
                width_mult=width_mult,
                n_classes=n_classes,
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
                    show_progress=show_progress,
                )
            ]
        return _run_parallel(devices, opened, protocols, jobs_for, store, skip_done, show_progress)
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
    show_progress: bool,
) -> list[RunSummary]:
    stop = threading.Event()
    results: list[RunSummary | None] = [None] * len(devices)
    errors: list[BaseException] = []
    progress = make_progress() if show_progress else None

    def work(i: int) -> None:
        try:
            results[i] = measure_workloads(
                jobs_for(protocols[i]),
                adapters[i],
                store,
                protocols[i],
                device_name=devices[i].name,
                skip_done=skip_done,
                progress=progress,
                show_progress=False,
                stop=stop,
            )
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)
            stop.set()

    threads = [
        threading.Thread(target=work, args=(i,), name=f"profile-{d.name}", daemon=True)
        for i, d in enumerate(devices)
    ]
    if progress is not None:
        progress.start()
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
    finally:
        if progress is not None:
            progress.stop()
    if errors:
        raise errors[0]
    return [r for r in results if r is not None]


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
