"""The results store's schema and row formats: table definitions (versioned, see
:mod:`compofa_bench.store`), the summary columns, and the nested-JSON and long-samples forms of
rows that the exports write. Plain data and pure functions; :mod:`compofa_bench.store` holds
the SQLite file itself."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Iterable, Mapping
from typing import Any

from compofa_bench.errors import StoreError
from compofa_bench.measure import Stats

SCHEMA_VERSION = 2

STAT_COLUMNS = tuple(
    f.name for f in dataclasses.fields(Stats) if f.name not in ("unstable", "source", "count")
)

#: Columns schema 2 adds to ``measurements`` (a version-1 file gets them by ALTER TABLE).
V2_COLUMNS = (
    ("contended", "INTEGER"),
    ("other_cpu", "REAL"),
    ("steal", "REAL"),
    ("load_avg_1m", "REAL"),
    ("host_load_json", "TEXT"),
    ("rounds", "INTEGER"),
    ("estimator", "TEXT"),
    ("run_id", "INTEGER"),
)
_V2_COLUMNS_SQL = "".join(f",\n    {c} {t}" for c, t in V2_COLUMNS)

_V2_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    device TEXT NOT NULL,
    fingerprint_hash TEXT NOT NULL,
    protocol_hash TEXT NOT NULL,
    host TEXT,
    pid INTEGER,
    cpus TEXT,
    rounds INTEGER NOT NULL,
    order_seed INTEGER,
    probe_key TEXT,
    probe_before_ms REAL,
    probe_after_ms REAL,
    noise_floor REAL,
    measured INTEGER,
    contended INTEGER,
    unstable INTEGER,
    failed INTEGER,
    skipped INTEGER,
    interrupted INTEGER,
    wall_s REAL
);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL,
    round INTEGER NOT NULL,
    finished_at TEXT NOT NULL,
    fingerprint_hash TEXT NOT NULL,
    protocol_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    workload_key TEXT NOT NULL,
    status TEXT NOT NULL,
    median_ms REAL,
    unstable INTEGER,
    contended INTEGER,
    other_cpu REAL,
    host_load_json TEXT,
    samples_json TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS ix_rounds ON rounds (run_id, cache_key);
CREATE TABLE IF NOT EXISTS claims (
    fingerprint_hash TEXT NOT NULL,
    protocol_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    owner TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    PRIMARY KEY (fingerprint_hash, protocol_hash, kind, cache_key)
);
"""

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    device TEXT NOT NULL,
    adapter TEXT NOT NULL,
    fingerprint_hash TEXT NOT NULL,
    fingerprint_json TEXT NOT NULL,
    protocol_hash TEXT NOT NULL,
    protocol_json TEXT NOT NULL,
    kind TEXT NOT NULL,
    workload_key TEXT NOT NULL,
    cache_key TEXT NOT NULL,
    space TEXT,
    arch_json TEXT,
    resolution INTEGER,
    batch_size INTEGER NOT NULL,
    width_mult REAL,
    {", ".join(f"{c} REAL" for c in STAT_COLUMNS)},
    count INTEGER,
    unstable INTEGER,
    stats_source TEXT,
    attempts INTEGER NOT NULL DEFAULT 1,
    samples_json TEXT,
    warmup_json TEXT,
    summary_json TEXT,
    raw_output TEXT,
    prepare_json TEXT,
    meta_json TEXT{_V2_COLUMNS_SQL}
);
CREATE INDEX IF NOT EXISTS ix_identity
    ON measurements (fingerprint_hash, protocol_hash, kind, cache_key, status);
CREATE INDEX IF NOT EXISTS ix_lookup
    ON measurements (workload_key, fingerprint_hash, batch_size, status);
{_V2_TABLES}
"""

#: Columns ``rows()`` and the exports return (the bulky JSON columns are opt-in).
SUMMARY_COLUMNS = (
    "id", "finished_at", "status", "error", "device", "adapter", "fingerprint_hash",
    "protocol_hash", "kind", "workload_key", "space", "resolution", "batch_size", "width_mult",
    "median_ms", "mean_ms", "p90_ms", "p95_ms", "p99_ms", "min_ms", "max_ms", "std_ms", "iqr_ms",
    "cv", "ci95_low_ms", "ci95_high_ms", "count", "unstable", "attempts", "arch_json",
    "contended", "other_cpu", "steal", "load_avg_1m", "rounds", "estimator", "run_id",
)  # fmt: skip


#: JSON columns and the key under which :func:`nested` puts their decoded value.
NESTED_NAMES = {
    "arch_json": "arch", "samples_json": "samples_ms", "warmup_json": "warmup_ms",
    "summary_json": "summary_ms", "prepare_json": "prepare_s", "protocol_json": "protocol",
    "fingerprint_json": "fingerprint", "meta_json": "meta",
}  # fmt: skip

#: Columns of the long samples CSV: one row per timed run of an ok measurement.
SAMPLE_COLUMNS = (
    "id", "device", "fingerprint_hash", "protocol_hash", "kind", "workload_key", "resolution",
    "batch_size", "run", "latency_ms",
)  # fmt: skip


def nested(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row with its JSON columns decoded in place of their text (``arch_json`` -> ``arch``)
    and ``unstable`` as a bool, so that a JSON export needs no second parse."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k in NESTED_NAMES:
            try:
                out[NESTED_NAMES[k]] = json.loads(v) if v is not None else None
            except (json.JSONDecodeError, TypeError) as exc:  # a damaged store
                raise StoreError(
                    f"results store row {row.get('id')}: column {k} is not JSON ({exc}); "
                    "the store is damaged"
                ) from None
        elif k == "unstable" and v is not None:
            out[k] = bool(v)
        else:
            out[k] = v
    return out


def samples_long_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """One CSV row per timed run (``run`` counts from 0) of rows that hold ``samples_json``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SAMPLE_COLUMNS)
    for r in rows:
        head = [r[c] for c in SAMPLE_COLUMNS[:-2]]
        for i, ms in enumerate(json.loads(r["samples_json"] or "[]")):
            w.writerow([*head, i, ms])
    return buf.getvalue()
