"""Build a latency table on a device: measure every distinct layer a space needs.

Layers are measured as isolated single-layer models (``supernet.build_layer``), through the
same adapter, protocol, results store and resumable loop as ``profile``
(:func:`compofa_bench.profile.measure_workloads`). Nothing here knows which runtime runs
them: a table for TFLite, Android or a GPU is built by pointing at another device.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compofa_bench import __version__
from compofa_bench.errors import LutError
from compofa_bench.lut.keys import layout
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.table import LatencyTable, LutEntry
from compofa_bench.spaces import SearchSpace
from compofa_bench.supernet.geometry import LayerSpec

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.profile import Job
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


def layer_jobs(
    layers: dict[int, dict[str, LayerSpec]],
    ident: LayerJobSpec,
    *,
    space: str | None = None,
    width_mult: float | None = None,
) -> list[Job]:
    """One job per distinct layer key (a key several resolutions share is measured once)."""
    from compofa_bench.adapters.base import Workload
    from compofa_bench.profile import Job

    seen: dict[str, Job] = {}
    for r, keyed in layers.items():
        for key, spec in keyed.items():
            if key in seen:
                continue
            ck = ident.cache_key(key)

            def build(spec: LayerSpec = spec, key: str = key, ck: str = ck) -> Workload:
                from compofa_bench import supernet

                module = supernet.build_layer(spec)
                return Workload(key, module, supernet.layer_input_shape(spec, ident.batch_size), ck)

            seen[key] = Job(
                key=key, cache_key=ck, build=build, kind=LAYER_KIND, space=space,
                resolution=r, width_mult=width_mult,
                meta={"base": ident.base, "layer_kind": spec.kind},
            )  # fmt: skip
    return list(seen.values())


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
    show_progress: bool = True,
    adapter: Adapter | None = None,
    protocol_overrides: Mapping[str, Any] | None = None,
) -> tuple[LatencyTable, dict[str, Any]]:
    """Measure the layers of ``space`` (at its resolutions) on ``device`` and return the table
    and a summary; write the table to ``out`` when given. Resumable: layers the store holds for
    this device fingerprint and protocol are not measured again.

    ``protocol_overrides`` change the device's protocol for the layers (``Protocol`` fields;
    ``None`` values are ignored): a layer runs in well under a millisecond, so a shorter
    minimum time than a network's still gives it hundreds of timed runs."""
    from compofa_bench.devices import DeviceSpec, load_device, open_adapter
    from compofa_bench.profile import device_fingerprint, measure_workloads
    from compofa_bench.store import ResultStore

    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    protocol = spec.protocol.replace(**dict(protocol_overrides or {}))
    if batch_size is not None:
        protocol = protocol.replace(batch_size=batch_size)
    lay = layout(space.base)
    layers = unique_layers(space, width_mult=width_mult, n_classes=n_classes)
    ident = LayerJobSpec(space.base, lay.key_style, protocol.batch_size)
    jobs = layer_jobs(layers, ident, space=space.name, width_mult=width_mult)

    own_adapter = adapter is None
    adp = open_adapter(spec) if adapter is None else adapter
    t0 = time.perf_counter()
    try:
        with ResultStore(store_path) as store:
            run = measure_workloads(
                jobs, adp, store, protocol, device_name=spec.name, show_progress=show_progress
            )
            measured = stored_layer_stats(store, run.fingerprint_hash, run.protocol_hash)
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
    entries: dict[int, dict[str, LutEntry]] = {}
    missing = []
    for r, keyed in layers.items():
        entries[r] = {}
        for key in keyed:
            entry = measured.get(ident.cache_key(key))
            if entry is None:
                missing.append(key)
            else:
                entries[r][key] = entry
    if missing:
        raise LutError(f"{len(missing)} layers have no measurement (interrupted?); rerun to finish")
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
        "method": "isolated single-layer models (supernet.build_layer)",
        "layers_measured": len(jobs),
    }
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
        "layers": len(jobs),
        "entries": len(table),
        "measured_now": len(run.by_status("ok")),
        "reused": len(run.by_status("skipped")),
        "device_s": round(wall_s, 3),
        "timed_s": round(run.timed_s, 3),
        "prepare_s": {k: round(v, 3) for k, v in run.prepare_totals().items()},
        "interrupted": run.interrupted,
    }
    return table, summary
