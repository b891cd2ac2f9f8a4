"""Build a latency table on a device: measure every distinct layer a space needs.

Layers are measured by a build method (:mod:`compofa_bench.lut.methods`: isolated
single-layer models by default, or chains, neighbour pairs, blocks, an empty-model correction
or a learned correction), through the same adapter, protocol, results store and resumable
loop as ``profile`` (:func:`compofa_bench.profile.measure_workloads`). Nothing here knows which
runtime runs them: a table for TFLite, Android or a GPU is built by pointing at another device.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench import __version__
from compofa_bench.errors import LutError
from compofa_bench.lut.keys import layout
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.methods import BuildMethod, Plan, Probe, make_plan
from compofa_bench.lut.table import LatencyTable, LutEntry
from compofa_bench.spaces import Arch, SearchSpace
from compofa_bench.supernet.geometry import LayerSpec

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.profile import Job
    from compofa_bench.progress import ProgressFn
    from compofa_bench.store import ResultStore

#: ``kind`` of layer measurements in the results store.
LAYER_KIND = "layer"


@dataclass(frozen=True)
class LayerJobSpec:
    """What identifies a layer measurement beyond its key."""

    base: str
    key_style: str
    batch_size: int

    def cache_key(self, key: str) -> str:
        # The key fixes every shape; base and key style say how to read it.
        return f"layer-{self.base}-{self.key_style}-b{self.batch_size}-{key}"


def probe_jobs(
    plan: Plan,
    layers: dict[int, dict[str, LayerSpec]],
    ident: LayerJobSpec,
    *,
    space: str | None = None,
    width_mult: float | None = None,
) -> list[Job]:
    """One job per probe of ``plan``. A single layer's cache key is its layer key (as tables
    built before methods existed), so every method reuses the isolated layers in the store."""
    from compofa_bench.adapters.base import Workload
    from compofa_bench.profile import Job

    resolution = {k: r for r, keyed in layers.items() for k in keyed}
    jobs = []
    for probe in plan.probes.values():
        ck = ident.cache_key(probe.name)

        def build(probe: Probe = probe, ck: str = ck) -> Workload:
            return Workload(probe.name, probe.module(), probe.input_shape(ident.batch_size), ck)

        meta = {"base": ident.base, "layer_kind": probe.specs[-1].kind, "probe": probe.kind}
        job = Job(
            key=probe.name, cache_key=ck, build=build, kind=LAYER_KIND, space=space,
            resolution=resolution.get(probe.keys[-1]), width_mult=width_mult, meta=meta,
        )  # fmt: skip
        jobs.append(job)
    return jobs


def stored_layer_stats(
    store: ResultStore, fingerprint_hash: str, protocol_hash: str
) -> dict[str, LutEntry]:
    """``cache_key -> LutEntry`` of the latest ok layer measurement for this device/protocol."""
    rows = store.rows(
        ("cache_key", "count", "mean_ms", "median_ms", "std_ms"),
        fingerprint_hash=fingerprint_hash, protocol_hash=protocol_hash, kind=LAYER_KIND,
        status="ok",
    )  # fmt: skip
    out: dict[str, LutEntry] = {}
    for r in rows:  # oldest first: the latest wins
        out[r["cache_key"]] = LutEntry(
            count=int(r["count"] or 0),
            mean_ms=float(r["mean_ms"]),
            std_ms=float(r["std_ms"] or 0.0),
            median_ms=float(r["median_ms"]),
        )
    return out


def build_table(
    device: str | Path | DeviceSpec,
    space: SearchSpace,
    *,
    width_mult: float = 1.0,
    n_classes: int = 1000,
    batch_size: int | None = None,
    store_path: str | Path = "results.db",
    out: str | Path | None = None,
    progress: ProgressFn | None = None,
    adapter: Adapter | None = None,
    protocol_overrides: Mapping[str, Any] | None = None,
    method: BuildMethod | str | None = None,
    fit_archs: list[Arch] | None = None,
    run: Any = None,
) -> tuple[LatencyTable, dict[str, Any]]:
    """Measure the layers of ``space`` (at its resolutions) on ``device`` and return the table
    and a summary; write the table to ``out`` when given. Resumable: layers the store holds for
    this device fingerprint and protocol are not measured again.

    ``protocol_overrides`` change the device's protocol for the layers (``Protocol`` fields;
    ``None`` values are ignored): a layer runs in well under a millisecond, so a shorter
    minimum time than a network's still gives it hundreds of timed runs.

    ``method`` (a :class:`~compofa_bench.lut.methods.BuildMethod` or its name; default
    ``methods.DEFAULT_METHOD``) says which probes are timed and how they become per-layer
    latencies; ``fit_archs`` replaces the archs the ``learned`` method measures end to end
    (with the device's own protocol, as ``lut validate`` measures networks). ``run``: rounds,
    waiting and locking (:class:`~compofa_bench.timing_run.RunOptions`)."""
    from compofa_bench.adapters import open_adapter
    from compofa_bench.devices import DeviceSpec, load_device
    from compofa_bench.profile import device_fingerprint, measure_workloads
    from compofa_bench.store import ResultStore

    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    protocol = spec.protocol.replace(**dict(protocol_overrides or {}))
    if batch_size is not None:
        protocol = protocol.replace(batch_size=batch_size)
    lay = layout(space.base)
    layers = unique_layers(space, width_mult=width_mult, n_classes=n_classes)
    ident = LayerJobSpec(space.base, lay.key_style, protocol.batch_size)
    how = method if isinstance(method, BuildMethod) else BuildMethod(method or BuildMethod.name)
    plan = make_plan(
        how, space, layers, width_mult=width_mult, n_classes=n_classes, fit_archs=fit_archs
    )
    jobs = probe_jobs(plan, layers, ident, space=space.name, width_mult=width_mult)

    own_adapter = adapter is None
    adp = open_adapter(spec) if adapter is None else adapter
    t0 = time.perf_counter()
    options = run  # the name ``run`` is the summary below
    try:
        with ResultStore(store_path) as store:
            run = measure_workloads(
                jobs, adp, store, protocol, device_name=spec.name, progress=progress,
                run=options,
            )  # fmt: skip
            measured = stored_layer_stats(store, run.fingerprint_hash, run.protocol_hash)
        fit_ms, fit_cost = None, None
        if plan.fit_archs:
            from compofa_bench.lut.validate import measure_archs

            fit_ms, fit_cost = measure_archs(
                plan.fit_archs, spec, store_path, space=space.name, base=space.base,
                width_mult=width_mult, n_classes=n_classes, batch_size=protocol.batch_size,
                adapter=adp, progress=progress, run=options,
            )  # fmt: skip
        fingerprint = device_fingerprint(adp, protocol)
        described = adp.describe()
    finally:
        if own_adapter:
            adp.close()
    wall_s = time.perf_counter() - t0

    failed = run.by_status("failed")
    if failed:
        shown = "\n  ".join(f"{o.key}: {o.error}" for o in failed[:10])
        raise LutError(
            f"{len(failed)} of {len(jobs)} layers failed to measure on {spec.name} (kept in "
            f"the store; rerun to retry):\n  {shown}"
        )
    missing = [p for p in plan.probes if ident.cache_key(p) not in measured]
    if missing:
        raise LutError(f"{len(missing)} probes have no measurement (interrupted?); rerun to finish")
    medians = {p: measured[ident.cache_key(p)].value("median") for p in plan.probes}
    derived = plan.combine(medians, fit_ms)
    # what the method's correction is worth, for the provenance and the method comparison
    ratios = [derived[r][k] / medians[k] for r, keyed in layers.items() for k in keyed]
    plan.details["median_ratio_to_isolated"] = float(np.median(ratios))
    empties = {p.keys[0]: medians[n] for n, p in plan.probes.items() if p.kind == "empty"}
    if empties:
        plan.details["empty_model_ms"] = {
            str(r): empties[k] for r, keyed in layers.items() for k in keyed if k in empties
        }
    entries: dict[int, dict[str, LutEntry]] = {}
    for r, keyed in layers.items():
        entries[r] = {}
        for key in keyed:
            iso = measured[ident.cache_key(key)]
            value = derived[r][key]
            if how.name == "isolated":
                entries[r][key] = iso
            else:
                # a derived latency: its mean is the derived value too (OFA's readers sum
                # means); count and spread are the isolated layer's
                entries[r][key] = LutEntry(iso.count, value, iso.std_ms, value)
    n_layers = len({k for keyed in layers.values() for k in keyed})
    provenance = {
        "source": "compofa-bench lut build",
        "compofa_bench_version": __version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": spec.name,
        "adapter": spec.adapter,
        "device_options": dict(spec.options),
        "runtime": described,
        "fingerprint": fingerprint,
        "fingerprint_hash": run.fingerprint_hash,
        "protocol": protocol.to_dict(),
        "protocol_hash": run.protocol_hash,
        "batch_size": protocol.batch_size,
        "space": space.name,
        "resolutions": list(space.resolutions),
        "method": how.to_dict(),
        "method_details": plan.details,
        "layers_measured": n_layers,
        "probes_measured": len(jobs),
        "base": space.base,
        "width_mult": width_mult,
        "n_classes": n_classes,
    }
    if plan.fit_archs:
        provenance["fit_archs"] = [a.key() for a in plan.fit_archs]
        provenance["fit_measurement"] = fit_cost
    table = LatencyTable(
        base=space.base, width_mult=width_mult, entries=entries, n_classes=n_classes,
        statistic="median", provenance=provenance,
    )  # fmt: skip
    if out is not None:
        table.save(out)
    summary = {
        "out": None if out is None else str(out),
        "device": spec.name,
        "space": space.name,
        "resolutions": list(space.resolutions),
        "method": how.name,
        "layers": n_layers,
        "probes": len(jobs),
        "entries": len(table),
        "measured_now": len(run.by_status("ok")),
        "reused": len(run.by_status("skipped")),
        "contended_now": run.counts()["contended"],
        "unstable_now": run.counts()["unstable"],
        "noise_floor": run.noise_floor,
        "device_s": round(wall_s, 3),
        "timed_s": round(run.timed_s, 3),
        "prepare_s": {k: round(v, 3) for k, v in run.prepare_totals().items()},
        "fit_measurement": fit_cost,
        "interrupted": run.interrupted,
    }
    return table, summary
