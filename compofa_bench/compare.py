"""Compare the latencies of the same workloads on two or more devices (or fingerprints, or
stores): per workload the ratio to the first side, and how well the rankings agree.

The question a profiling tool is asked is "do these subnets rank the same on device A as on
device B" (HW-NAS-Bench shows they often do not), so the figures are rank statistics
(Spearman, Kendall's tau-b) and the workloads whose rank moves most, beside the plain ratios.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compofa_bench.errors import StoreError
from compofa_bench.ranking import kendall_tau_b, rankdata, spearman


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the latest ok median of each workload of one device and
    fingerprint in one store."""

    label: str
    store: str
    device: str
    fingerprint_hash: str
    median_ms: dict[str, float]
    resolution: dict[str, int | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "store": self.store,
            "device": self.device,
            "fingerprint_hash": self.fingerprint_hash,
            "workloads": len(self.median_ms),
        }


def load_side(
    store_path: str | Path,
    *,
    device: str | None = None,
    fingerprint_hash: str | None = None,
    kind: str = "network",
    batch_size: int | None = None,
    space: str | None = None,
    label: str | None = None,
) -> Side:
    """The side that ``store_path`` filtered by ``device`` / ``fingerprint_hash`` holds. It must
    come down to one (device, fingerprint) and one batch size: mixing two machines or batch
    sizes on one side would compare nothing meaningful, so that is an error naming the choices."""
    from compofa_bench.store import ResultStore

    filters = {"device": device, "fingerprint_hash": fingerprint_hash, "kind": kind,
               "batch_size": batch_size, "space": space, "status": "ok"}  # fmt: skip
    with ResultStore(store_path, readonly=True) as store:
        rows = store.rows(
            ("device", "fingerprint_hash", "workload_key", "resolution", "batch_size", "median_ms"),
            **filters,
        )
    what = f"{store_path}" + "".join(f" {k}={v}" for k, v in filters.items() if v and k != "status")
    if not rows:
        raise StoreError(f"no ok measurements in {what}")
    pairs = sorted({(r["device"], r["fingerprint_hash"]) for r in rows})
    if len(pairs) > 1:
        listed = ", ".join(f"{d} ({h})" for d, h in pairs)
        raise StoreError(
            f"{what} holds {len(pairs)} devices/fingerprints ({listed}): pick one side each "
            "with --device or --fingerprint"
        )
    batches = sorted({r["batch_size"] for r in rows})
    if len(batches) > 1:
        raise StoreError(f"{what} holds batch sizes {batches}: pick one with --batch-size")
    median: dict[str, float] = {}
    resolution: dict[str, int | None] = {}
    for r in rows:  # oldest first: the latest measurement of a workload wins, as in look-ups
        if r["median_ms"] is not None and math.isfinite(r["median_ms"]):
            median[r["workload_key"]] = float(r["median_ms"])
            resolution[r["workload_key"]] = r["resolution"]
    dev, fp = pairs[0]
    return Side(label or dev, str(store_path), dev, fp, median, resolution)


def _unique_labels(sides: Sequence[Side]) -> list[str]:
    labels = [s.label for s in sides]
    if len(set(labels)) == len(labels):
        return labels
    # the same device name twice (two fingerprints, two stores): say which is which
    return [f"{s.label}@{s.fingerprint_hash[:8]}" if labels.count(s.label) > 1 else s.label
            for s in sides]  # fmt: skip


def compare(sides: Sequence[Side], top: int = 5) -> dict[str, Any]:
    """Compare ``sides`` on the workloads all of them measured.

    Returns a JSON-ready dict: ``sides``; ``workloads`` (key, resolution, ``median_ms`` and
    ``rank`` per side, ``ratio`` of each side to the first); ``pairs``: for each side against the
    first, Spearman and Kendall tau-b of the medians, the geometric mean / min / max ratio and
    the ``top`` workloads whose rank moves most (rank 1 = fastest)."""
    if len(sides) < 2:
        raise StoreError("compare needs at least two sides")
    labels = _unique_labels(sides)
    common = sorted(set.intersection(*(set(s.median_ms) for s in sides)))
    if len(common) < 2:
        raise StoreError(
            f"the sides share {len(common)} workload(s); a comparison needs at least 2 measured "
            "on every side (profile the same archs on each device)"
        )
    ms = np.array([[s.median_ms[k] for k in common] for s in sides])
    ranks = np.array([rankdata(row) for row in ms])
    workloads = [
        {
            "key": k,
            "resolution": sides[0].resolution.get(k),
            "median_ms": {labels[j]: float(ms[j, i]) for j in range(len(sides))},
            "rank": {labels[j]: float(ranks[j, i]) for j in range(len(sides))},
            "ratio": {labels[j]: float(ms[j, i] / ms[0, i]) for j in range(1, len(sides))},
        }
        for i, k in enumerate(common)
    ]
    pairs = []
    for j in range(1, len(sides)):
        ratio = ms[j] / ms[0]
        moves = ranks[j] - ranks[0]
        order = np.argsort(-np.abs(moves), kind="mergesort")[:top]
        pairs.append({
            "a": labels[0],
            "b": labels[j],
            "n": len(common),
            "spearman": spearman(ms[0], ms[j]),
            "kendall": kendall_tau_b(ms[0], ms[j]),
            "ratio_geomean": float(np.exp(np.mean(np.log(ratio)))),
            "ratio_min": float(ratio.min()),
            "ratio_max": float(ratio.max()),
            "rank_moves": [
                {"key": common[i], "rank_a": float(ranks[0, i]), "rank_b": float(ranks[j, i]),
                 "move": float(moves[i])}
                for i in order if moves[i] != 0
            ],
        })  # fmt: skip
    only = {labels[j]: len(set(s.median_ms) - set(common)) for j, s in enumerate(sides)}
    return {
        "sides": [{**s.to_dict(), "label": labels[j]} for j, s in enumerate(sides)],
        "common": len(common),
        "not_on_every_side": only,
        "pairs": pairs,
        "workloads": workloads,
    }


def latency_macs_points(
    store_path: str | Path, **filters: Any
) -> dict[str, list[tuple[float, float, int | None]]]:
    """Per device (``device@fingerprint`` when a device has several): (MMACs, median ms,
    resolution) of the latest ok measurement of each arch, MACs counted analytically from the
    stored arch, width and classes."""
    from compofa_bench import spaces
    from compofa_bench.store import ResultStore
    from compofa_bench.supernet import count_macs

    cols = ("device", "fingerprint_hash", "workload_key", "space", "arch_json", "resolution",
            "width_mult", "meta_json", "median_ms")  # fmt: skip
    with ResultStore(store_path, readonly=True) as store:
        rows = store.rows(cols, **{**filters, "status": "ok", "kind": "network"})
    latest: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["space"] in spaces.names() and r["arch_json"] and r["median_ms"] is not None:
            latest.setdefault((r["device"], r["fingerprint_hash"]), {})[r["workload_key"]] = r
    devices = [d for d, _ in latest]
    out: dict[str, list[tuple[float, float, int | None]]] = {}
    macs_cache: dict[tuple[Any, ...], float] = {}
    for (device, fp), by_key in latest.items():
        label = device if devices.count(device) == 1 else f"{device}@{fp[:8]}"
        pts = []
        for r in by_key.values():
            meta = json.loads(r["meta_json"] or "{}")
            # at the stored resolution: a run may use resolutions outside the space's default
            space = spaces.get(r["space"], [r["resolution"]] if r["resolution"] else None)
            ck = (r["space"], r["workload_key"], r["width_mult"], meta.get("n_classes", 1000))
            if ck not in macs_cache:
                arch = space.parse(json.loads(r["arch_json"]))
                macs_cache[ck] = (
                    count_macs(arch, float(r["width_mult"] or 1.0), space.base, int(ck[3])) / 1e6
                )
            pts.append((macs_cache[ck], float(r["median_ms"]), r["resolution"]))
        out[label] = sorted(pts)
    return out
