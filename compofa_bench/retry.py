"""Measure unstable results again, through the same :func:`profile.profile_archs` call that took
them, with the protocol they were taken with (so the new row has the same identity and becomes
the one every look-up reads; ``results prune --duplicates`` drops the old one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from compofa_bench.errors import DeviceError, StoreError
from compofa_bench.netspec import NetSpec

if TYPE_CHECKING:
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.profile import RunSummary
    from compofa_bench.progress import ProgressFn
    from compofa_bench.spaces import Arch
    from compofa_bench.store import ResultStore

_COLUMNS = ("id", "device", "fingerprint_hash", "protocol_hash", "protocol_json", "kind",
            "cache_key", "workload_key", "space", "arch_json", "resolution", "batch_size", "width_mult",
            "meta_json", "unstable", "median_ms", "iqr_ms", "cv")  # fmt: skip


def unstable_rows(store: ResultStore, **filters: Any) -> list[dict[str, Any]]:
    """The latest ok network row of each identity, where that row is unstable (a workload
    whose latest measurement is stable is settled, whatever came before)."""
    filters = {**filters, "status": "ok"}
    if filters.get("kind") not in (None, "network"):
        raise StoreError("only network (arch) rows can be retried; layers are rebuilt by lut build")
    filters["kind"] = "network"
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in store.rows(_COLUMNS, **filters):  # oldest first: later rows replace earlier
        latest[(r["fingerprint_hash"], r["protocol_hash"], r["cache_key"])] = r
    return [r for r in latest.values() if r["unstable"]]


@dataclass
class RetryGroup:
    """Rows measured alike (device, fingerprint, protocol, space, width, classes, base): one
    ``profile_archs`` call."""

    device: str
    fingerprint_hash: str
    protocol: dict[str, Any]
    space: str
    base: str
    width_mult: float
    n_classes: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None  # why this group is not measured again


def group_rows(rows: list[dict[str, Any]]) -> list[RetryGroup]:
    groups: dict[tuple[Any, ...], RetryGroup] = {}
    for r in rows:
        meta = json.loads(r["meta_json"] or "{}")
        key = (r["device"], r["fingerprint_hash"], r["protocol_hash"], r["space"],
               meta.get("base", "mbv3"), r["width_mult"], meta.get("n_classes", 1000),
               meta.get("weights", "random"))  # fmt: skip
        g = groups.get(key)
        if g is None:
            g = groups[key] = RetryGroup(
                r["device"], r["fingerprint_hash"], json.loads(r["protocol_json"]),
                r["space"], meta.get("base", "mbv3"), float(r["width_mult"] or 1.0),
                int(meta.get("n_classes", 1000)),
            )  # fmt: skip
            if meta.get("weights", "random") != "random":
                g.skipped = "measured with a checkpoint: rerun `profile --checkpoint ... --force`"
            elif r["space"] is None or r["arch_json"] is None:
                g.skipped = "no space or arch stored"
        g.rows.append(r)
    return list(groups.values())


def retry_group(
    group: RetryGroup,
    spec: DeviceSpec,
    store: ResultStore,
    *,
    protocol_overrides: Mapping[str, Any] | None = None,
    any_fingerprint: bool = False,
    progress: ProgressFn | None = None,
    build_module: Callable[[Arch], Any] | None = None,
) -> RunSummary:
    """Measure ``group``'s archs again on ``spec`` with their stored protocol (plus
    ``protocol_overrides``, e.g. ``remeasure``). Refuses, unless ``any_fingerprint``, when the
    device's fingerprint now differs from the rows' (that would be a new device, not a retry).
    ``build_module`` replaces the supernet, as in ``profile_archs``."""
    from compofa_bench import spaces
    from compofa_bench.adapters import open_adapter
    from compofa_bench.profile import device_fingerprint, profile_archs

    protocol = {**group.protocol, **{k: v for k, v in (protocol_overrides or {}).items()
                                      if v is not None}}  # fmt: skip
    archs = []
    for r in group.rows:
        # at the stored resolution: a run may use resolutions outside the space's default
        space = spaces.get(group.space, [r["resolution"]] if r["resolution"] else None)
        archs.append(space.parse(json.loads(r["arch_json"])))
    archs = list(dict.fromkeys(archs))
    adapter = open_adapter(spec)
    try:
        now = device_fingerprint(adapter, spec.protocol.replace(**protocol))["stable_hash"]
        if now != group.fingerprint_hash and not any_fingerprint:
            raise DeviceError(
                f"device {spec.name} now has fingerprint {now}, the unstable rows "
                f"{group.fingerprint_hash}: its settings or machine changed, so new rows would "
                "not replace them (pass --any-fingerprint to measure anyway)"
            )
        [summary] = profile_archs(
            archs, [spec], store, space=group.space,
            net=NetSpec(group.base, group.width_mult, group.n_classes),
            protocol_overrides=protocol, skip_done=False, progress=progress,
            adapters=[adapter], build_module=build_module,
        )  # fmt: skip
    finally:
        adapter.close()
    return summary
