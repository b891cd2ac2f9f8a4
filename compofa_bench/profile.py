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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench import fingerprint as fp
from compofa_bench import hostlock
from compofa_bench.errors import (
    DeviceError,
    MeasurementError,
)
from compofa_bench.host_load import format_cpus
from compofa_bench.measure import Protocol, Workload
from compofa_bench.netspec import NetSpec
from compofa_bench.profile_run import (
    FATAL_ERRORS,
    Job,
    Outcome,
    RunSummary,
    _finish_run,
    _flush_partial,
    _Pending,
    _probe,
    _run_rounds,
    _RunContext,
    _Ticker,
    device_fingerprint,
)
from compofa_bench.progress import ProgressFn
from compofa_bench.store import ResultStore, utc_now
from compofa_bench.timing_run import (
    RunOptions,
    device_cpus,
    lock_names,
)

__all__ = [
    "FATAL_ERRORS",
    "Job",
    "Outcome",
    "RunSummary",
    "SubnetFactory",
    "arch_jobs",
    "device_fingerprint",
    "measure_workloads",
    "profile_archs",
    "select_archs",
]

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.spaces import Arch


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
