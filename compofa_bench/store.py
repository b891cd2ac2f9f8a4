"""The results store: one SQLite file, one row per measurement.

Safe for several profiling processes (and threads) writing at once: WAL journal, a busy
timeout, and one short ``BEGIN IMMEDIATE`` transaction per measurement, so a Ctrl-C or a kill
loses at most the measurement in flight and never leaves a half-written row.

The schema is versioned with ``PRAGMA user_version``; a file written by a newer compofa-bench
is refused rather than misread, and an older one is migrated in place when opened for writing
(version 1 -> 2 adds the host-load, rounds and run columns and the ``runs`` and ``rounds``
tables; old rows read as one round, not contended). Read-only, an old file is read as it is:
the columns it lacks read as NULL.

Schema 2 adds what makes a number trustworthy on a shared host: each row carries the other
processes' load while it was timed (``other_cpu``, ``steal``, ``load_avg_1m``, ``contended``),
how many interleaved rounds it combines and with which ``estimator``, and the ``run_id`` of
its timing run. ``runs`` holds one row per timing run (its noise-floor probes and counts);
``rounds`` holds every round's samples as it is taken, so an interrupted multi-round run loses
nothing.

Identity of a measurement (what resume skips and memoization looks up):
``(fingerprint_hash, protocol_hash, kind, cache_key)``. ``cache_key`` already holds everything
that changes the graph (arch key with resolution, width, classes, batch); ``workload_key`` is
the human key (``Arch.key()`` or a layer key) used for look-ups by arch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from compofa_bench.errors import MissingDependencyError, StoreError
from compofa_bench.fileio import atomic_write_text
from compofa_bench.measure import Stats
from compofa_bench.store_schema import (
    _SCHEMA,
    _V2_TABLES,
    SAMPLE_COLUMNS,
    SCHEMA_VERSION,
    STAT_COLUMNS,
    SUMMARY_COLUMNS,
    V2_COLUMNS,
    nested,
    samples_long_csv,
)

# re-exported for callers and tests that read the schema through this module
from compofa_bench.store_schema import _V2_COLUMNS_SQL as _V2_COLUMNS_SQL
from compofa_bench.store_schema import NESTED_NAMES as NESTED_NAMES


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Measurement:
    """One row to write. ``stats`` is None for a failed measurement."""

    device: str
    adapter: str
    fingerprint: Mapping[str, Any]
    protocol: Mapping[str, Any]
    protocol_hash: str
    kind: str
    workload_key: str
    cache_key: str
    batch_size: int
    status: str = "ok"
    error: str | None = None
    stats: Stats | None = None
    samples_ms: Sequence[float] = ()
    warmup_ms: Sequence[float] = ()
    summary_ms: Mapping[str, float] = field(default_factory=dict)
    raw_output: str | None = None
    space: str | None = None
    arch: Mapping[str, Any] | None = None
    resolution: int | None = None
    width_mult: float | None = None
    attempts: int = 1
    prepare_s: Mapping[str, float] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    started_at: str = field(default_factory=utc_now)
    finished_at: str = field(default_factory=utc_now)
    #: the other processes' load while it was timed (``HostLoad.to_dict()`` of the worst round)
    host_load: Mapping[str, Any] | None = None
    contended: bool | None = None
    rounds: int = 1
    estimator: str = "median"
    run_id: int | None = None

    @property
    def fingerprint_hash(self) -> str:
        return str(self.fingerprint["stable_hash"])


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), default=str)


def _done(
    rows: Iterable[Sequence[Any]], include_failed: bool, accept_unstable: bool, remeasure: int
) -> set[str]:
    """The cache keys that ``(cache_key, status, bad)`` rows make done (see ``done_keys``)."""
    tries: dict[str, int] = {}
    done: set[str] = set()
    for ck, status, bad in rows:
        if status == "failed":
            if include_failed:
                done.add(ck)
        elif accept_unstable or not bad:
            done.add(ck)
        else:
            tries[ck] = tries.get(ck, 0) + 1
            if tries[ck] > remeasure:
                done.add(ck)
    return done


def _finite(x: float) -> float | None:
    # NaN is stored as NULL so that SQL aggregates and CSV readers see "unknown", not garbage
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


class ResultStore:
    """A results file. Thread-safe: one connection guarded by a lock; several processes may
    open the same file at once."""

    def __init__(self, path: str | Path, readonly: bool = False, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._lock = threading.RLock()
        if readonly and not self.path.exists():
            raise StoreError(f"results store {self.path} does not exist")
        if not readonly:
            parent = self.path.parent
            if not parent.is_dir():
                raise StoreError(
                    f"cannot create results store {self.path}: {parent} is not a directory"
                )
            if self.path.exists() and not os.access(self.path, os.W_OK):
                raise StoreError(f"results store {self.path} is not writable")
            if not self.path.exists() and not os.access(parent, os.W_OK):
                raise StoreError(
                    f"cannot create results store {self.path}: {parent} is not writable"
                )
        try:
            if readonly:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=timeout_s, check_same_thread=False)
            else:
                conn = sqlite3.connect(
                    self.path, timeout=timeout_s, isolation_level=None, check_same_thread=False
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open results store {self.path}: {exc}") from None
        self._conn = conn
        conn.row_factory = sqlite3.Row
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._timeout_s = timeout_s
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path} is not a compofa-bench results store: {exc}") from None
        except StoreError:
            conn.close()
            raise

    # ----------------------------------------------------------------- lifecycle
    def _init_schema(self) -> None:
        conn = self._conn
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} was created by a newer compofa-bench (schema "
                f"{version}; this version reads up to {SCHEMA_VERSION}): upgrade compofa-bench"
            )
        if self.readonly:
            if version == 0:
                raise StoreError(f"{self.path} is not a compofa-bench results store (no schema)")
            return
        # Switching to WAL needs the file to itself and ignores the busy timeout: a second
        # process opening a new store while the first creates it retries instead of failing.
        deadline = time.monotonic() + self._timeout_s
        while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        conn.execute("PRAGMA synchronous = NORMAL")
        if version == SCHEMA_VERSION:
            return
        if version == 1:
            self._migrate_v1()
            return
        if version == 0:
            tables = conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            ).fetchall()
            if tables and "measurements" not in {t[0] for t in tables}:
                raise StoreError(f"{self.path} is an SQLite file but not a results store")
        # Two processes may race to create the schema; BEGIN IMMEDIATE serializes them and
        # IF NOT EXISTS makes the loser's attempt a no-op.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _migrate_v1(self) -> None:
        """Version 1 -> 2: new columns (NULL in old rows: read as one round, not contended)
        and the ``runs`` and ``rounds`` tables. One transaction; a racing process that
        migrated first leaves nothing to do."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] == 1:
                have = {r[1] for r in conn.execute("PRAGMA table_info(measurements)")}
                for col, typ in V2_COLUMNS:
                    if col not in have:
                        conn.execute(f"ALTER TABLE measurements ADD COLUMN {col} {typ}")
                for stmt in _V2_TABLES.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _transaction(self, failure: str) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction under the lock: committed when the block ends,
        rolled back on any exception; an SQLite error becomes one StoreError that starts with
        ``failure`` and names the store."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"{failure} {self.path}: {exc}") from None
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writing
    def add(self, m: Measurement) -> int:
        """Write one measurement in its own transaction; returns its row id."""
        if self.readonly:
            raise StoreError(f"results store {self.path} is open read-only")
        if m.status not in ("ok", "failed"):
            raise StoreError(f"status must be 'ok' or 'failed', not {m.status!r}")
        if m.status == "ok" and m.stats is None:
            raise StoreError("an ok measurement needs stats")
        s = m.stats
        row: dict[str, Any] = {
            "started_at": m.started_at,
            "finished_at": m.finished_at,
            "status": m.status,
            "error": m.error,
            "device": m.device,
            "adapter": m.adapter,
            "fingerprint_hash": m.fingerprint_hash,
            "fingerprint_json": _dumps(m.fingerprint),
            "protocol_hash": m.protocol_hash,
            "protocol_json": _dumps(m.protocol),
            "kind": m.kind,
            "workload_key": m.workload_key,
            "cache_key": m.cache_key,
            "space": m.space,
            "arch_json": _dumps(m.arch) if m.arch is not None else None,
            "resolution": m.resolution,
            "batch_size": m.batch_size,
            "width_mult": m.width_mult,
            "count": s.count if s else None,
            "unstable": int(s.unstable) if s else None,
            "stats_source": s.source if s else None,
            "attempts": m.attempts,
            "samples_json": _dumps([round(x, 6) for x in m.samples_ms]),
            "warmup_json": _dumps([round(x, 6) for x in m.warmup_ms]),
            "summary_json": _dumps(dict(m.summary_ms)) if m.summary_ms else None,
            "raw_output": m.raw_output,
            "prepare_json": _dumps(dict(m.prepare_s)),
            "meta_json": _dumps(dict(m.meta)) if m.meta else None,
            "contended": None if m.contended is None else int(m.contended),
            "other_cpu": (m.host_load or {}).get("other_cpu"),
            "steal": (m.host_load or {}).get("steal"),
            "load_avg_1m": (m.host_load or {}).get("load_avg_1m"),
            "host_load_json": _dumps(dict(m.host_load)) if m.host_load else None,
            "rounds": m.rounds,
            "estimator": m.estimator if m.status == "ok" else None,
            "run_id": m.run_id,
        }
        for c in STAT_COLUMNS:
            row[c] = _finite(getattr(s, c)) if s else None
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        with self._transaction("cannot write to results store") as conn:
            cur = conn.execute(
                f"INSERT INTO measurements ({cols}) VALUES ({marks})", tuple(row.values())
            )
        return int(cur.lastrowid or 0)

    # ----------------------------------------------------------------- resume / memoization
    def done_keys(
        self,
        fingerprint_hash: str,
        protocol_hash: str,
        kind: str,
        include_failed: bool = False,
        *,
        min_rounds: int = 1,
        accept_unstable: bool = True,
        remeasure: int = 0,
    ) -> set[str]:
        """``cache_key``s already measured with this fingerprint and protocol.

        An ok row counts when it combines at least ``min_rounds`` rounds. Unless
        ``accept_unstable``, an unstable or contended row does not make its workload done:
        it is measured again, until ``remeasure`` such rows exist beyond the first (then the
        store keeps them all and the latest is what look-ups return). Failed rows count only
        with ``include_failed``."""
        q = (
            "SELECT cache_key, status, coalesce(unstable, 0) OR coalesce(contended, 0) AS bad "
            "FROM measurements WHERE fingerprint_hash = ? AND protocol_hash = ? AND kind = ? "
            "AND (status = 'failed' OR coalesce(rounds, 1) >= ?)"
        )
        rows = self._query(q, (fingerprint_hash, protocol_hash, kind, min_rounds))
        return _done(rows, include_failed, accept_unstable, remeasure)

    def claim(
        self,
        ident: tuple[str, str, str, str],
        owner: str,
        *,
        include_failed: bool = False,
        min_rounds: int = 1,
        accept_unstable: bool = True,
        remeasure: int = 0,
        alive: Callable[[str], bool] = lambda _owner: True,
    ) -> bool:
        """Claim the workload ``ident = (fingerprint_hash, protocol_hash, kind, cache_key)``
        for measuring, in one transaction: False when it is done already (as
        :meth:`done_keys` decides) or claimed by another ``owner`` that is still ``alive``.
        Two processes on one store thus never measure the same workload twice, whatever CPUs
        they run on. Release with :meth:`release_claims`."""
        fh, ph, kind, ck = ident
        q = (
            "SELECT cache_key, status, coalesce(unstable, 0) OR coalesce(contended, 0) AS bad "
            "FROM measurements WHERE fingerprint_hash = ? AND protocol_hash = ? AND kind = ? "
            "AND cache_key = ? AND (status = 'failed' OR coalesce(rounds, 1) >= ?)"
        )
        # A return inside the block leaves it normally: the transaction commits.
        with self._transaction("cannot write to results store") as conn:
            rows = conn.execute(q, (fh, ph, kind, ck, min_rounds)).fetchall()
            if _done(rows, include_failed, accept_unstable, remeasure):
                return False
            held = conn.execute(
                "SELECT owner FROM claims WHERE fingerprint_hash = ? AND protocol_hash = ? "
                "AND kind = ? AND cache_key = ?",
                ident,
            ).fetchone()
            if held is not None and held[0] != owner and alive(held[0]):
                return False
            conn.execute(
                "INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)",
                (*ident, owner, utc_now()),
            )
            return True

    def release_claims(self, owner: str, cache_key: str | None = None) -> None:
        """Drop ``owner``'s claims (one ``cache_key``'s, or all)."""
        if cache_key is None:
            self._write("DELETE FROM claims WHERE owner = ?", (owner,))
        else:
            self._write("DELETE FROM claims WHERE owner = ? AND cache_key = ?", (owner, cache_key))

    # ----------------------------------------------------------------- timing runs
    def start_run(self, **fields: Any) -> int:
        """A ``runs`` row for a timing run that starts now; returns its id."""
        return self._insert("runs", {"started_at": utc_now(), **fields})

    def finish_run(self, run_id: int, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._write(
            f"UPDATE runs SET finished_at = ?, {sets} WHERE id = ?",
            (utc_now(), *fields.values(), run_id),
        )

    def add_round(self, **fields: Any) -> int:
        """One round of one workload, written as soon as it is timed."""
        return self._insert("rounds", {"finished_at": utc_now(), **fields})

    def runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Timing runs, newest first (none in a version-1 store)."""
        if not self._has_table("runs"):
            return []
        q = "SELECT * FROM runs ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        return [dict(r) for r in self._query(q, ())]

    def round_rows(self, run_id: int | None = None) -> list[dict[str, Any]]:
        if not self._has_table("rounds"):
            return []
        where, params = ("WHERE run_id = ?", (run_id,)) if run_id is not None else ("", ())
        return [dict(r) for r in self._query(f"SELECT * FROM rounds {where} ORDER BY id", params)]

    def _has_table(self, name: str) -> bool:
        q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return bool(self._query(q, (name,)))

    def _insert(self, table: str, row: Mapping[str, Any]) -> int:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        return self._write(f"INSERT INTO {table} ({cols}) VALUES ({marks})", tuple(row.values()))

    def _write(self, q: str, params: Sequence[Any]) -> int:
        if self.readonly:
            raise StoreError(f"results store {self.path} is open read-only")
        with self._transaction("cannot write to results store") as conn:
            cur = conn.execute(q, tuple(params))
        return int(cur.lastrowid or 0)

    def lookup(
        self,
        workload_key: str,
        *,
        fingerprint_hash: str | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        width_mult: float | None = None,
        kind: str = "network",
        protocol_hash: str | None = None,
    ) -> dict[str, Any] | None:
        """The latest ok measurement of ``workload_key`` (an ``Arch.key()``, so resolution
        included) matching the filters, as a row dict; ``None`` if there is none. Filters left
        ``None`` match anything: pin ``batch_size`` (or ``protocol_hash``) when a store holds
        several batch sizes.
        Example: ``store.lookup(arch.key(), fingerprint_hash=fp, width_mult=1.0)["median_ms"]``."""
        where, params = self._filters(
            fingerprint_hash=fingerprint_hash, device=device, batch_size=batch_size,
            width_mult=width_mult, kind=kind, protocol_hash=protocol_hash,
        )  # fmt: skip
        q = (
            f"SELECT * FROM measurements WHERE workload_key = ? AND status = 'ok'{where} "
            "ORDER BY id DESC LIMIT 1"
        )
        rows = self._query(q, (workload_key, *params))
        return dict(rows[0]) if rows else None

    def lookup_many(self, workload_keys: Iterable[str], **filters: Any) -> dict[str, float]:
        """``{workload_key: median_ms}`` of the latest ok measurement of each key found."""
        keys = list(dict.fromkeys(workload_keys))
        where, params = self._filters(**{"kind": "network", **filters})
        out: dict[str, float] = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = (
                "SELECT workload_key, median_ms FROM measurements WHERE status = 'ok' AND "
                f"workload_key IN ({','.join('?' * len(chunk))}){where} ORDER BY id"
            )
            for r in self._query(q, (*chunk, *params)):
                out[r[0]] = r[1]  # ascending ids: the latest wins
        return out

    @staticmethod
    def _filters(**filters: Any) -> tuple[str, list[Any]]:
        where, params = "", []
        for col, val in filters.items():
            if val is None:
                continue
            if col not in {"fingerprint_hash", "device", "batch_size", "width_mult", "kind",
                           "protocol_hash", "space", "status", "resolution", "adapter"}:  # fmt: skip
                raise StoreError(f"unknown filter {col!r}")
            if col == "width_mult":
                where += " AND abs(width_mult - ?) < 1e-9"
            else:
                where += f" AND {col} = ?"
            params.append(val)
        return where, params

    # ----------------------------------------------------------------- reading
    def rows(
        self,
        columns: Sequence[str] = SUMMARY_COLUMNS,
        limit: int | None = None,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Measurements as dicts, oldest first, filtered by column equality."""
        valid = {r[1] for r in self._query("PRAGMA table_info(measurements)", ())}
        newer = {c for c, _ in V2_COLUMNS}
        bad = [c for c in columns if c not in valid and c not in newer]
        if bad:
            raise StoreError(f"unknown column(s) {', '.join(bad)}")
        where, params = self._filters(**filters)
        # a version-1 file opened read-only lacks the schema-2 columns: they read as NULL
        sel = ", ".join(c if c in valid else f"NULL AS {c}" for c in columns)
        q = f"SELECT {sel} FROM measurements WHERE 1=1{where} ORDER BY id"
        if limit is not None:
            q += f" LIMIT {int(limit)}"
        return [dict(r) for r in self._query(q, tuple(params))]

    def iter_samples(self, **filters: Any) -> Iterator[tuple[str, list[float]]]:
        for r in self.rows(("workload_key", "samples_json"), **filters):
            yield r["workload_key"], json.loads(r["samples_json"] or "[]")

    def count(self, **filters: Any) -> int:
        where, params = self._filters(**filters)
        return int(self._query(f"SELECT count(*) FROM measurements WHERE 1=1{where}", params)[0][0])

    def devices(self) -> list[dict[str, Any]]:
        """One row per (device, fingerprint): how many ok/failed measurements it has."""
        q = (
            "SELECT device, adapter, fingerprint_hash, "
            "sum(status = 'ok') AS ok, sum(status = 'failed') AS failed, "
            "max(finished_at) AS last FROM measurements "
            "GROUP BY device, adapter, fingerprint_hash ORDER BY device"
        )
        return [dict(r) for r in self._query(q, ())]

    def to_dataframe(self, columns: Sequence[str] = SUMMARY_COLUMNS, **filters: Any) -> Any:
        try:
            import pandas as pd
        except ImportError:
            raise MissingDependencyError("pandas", "pandas", "ResultStore.to_dataframe") from None
        return pd.DataFrame(self.rows(columns, **filters), columns=list(columns))

    def export(
        self,
        out: str | Path | None,
        fmt: str = "csv",
        columns: Sequence[str] = SUMMARY_COLUMNS,
        **filters: Any,
    ) -> str | None:
        """Write rows as CSV, JSON or a long samples CSV to ``out`` atomically, or return the
        text when ``out`` is None.

        ``json`` nests the JSON columns as real values under names without ``_json``
        (``arch``, ``samples_ms``...; see :func:`nested`). ``samples-csv`` writes one row per
        timed run (:data:`SAMPLE_COLUMNS`), whatever ``columns`` says."""
        if fmt == "samples-csv":
            columns = tuple(dict.fromkeys((*SAMPLE_COLUMNS[:-2], "samples_json")))
        rows = self.rows(columns, **filters)
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            text = buf.getvalue()
        elif fmt == "json":
            text = json.dumps([nested(r) for r in rows], indent=1) + "\n"
        elif fmt == "samples-csv":
            text = samples_long_csv(rows)
        else:
            raise StoreError(f"unknown export format {fmt!r}; use csv, json or samples-csv")
        if out is None:
            return text
        try:
            atomic_write_text(Path(out), text)
        except OSError as exc:
            raise StoreError(f"cannot write {out}: {exc}") from None
        return None

    # ----------------------------------------------------------------- housekeeping
    def prune_candidates(
        self,
        *,
        failed: bool = False,
        duplicates: bool = False,
        fingerprints: Sequence[str] = (),
        old_fingerprints: bool = False,
        **filters: Any,
    ) -> list[dict[str, Any]]:
        """Rows ``prune`` would delete, oldest first, each with the ``reason`` it is chosen for.

        ``failed``: failed rows. ``duplicates``: ok rows with a later ok row of the same
        identity (fingerprint, protocol, kind, cache key): look-ups read only the latest.
        ``fingerprints``: rows of these fingerprint hashes. ``old_fingerprints``: rows of a
        device whose latest row has another fingerprint (the machine or its settings changed).
        """
        where, params = self._filters(**filters)
        rules: list[tuple[str, str, list[Any]]] = []
        if failed:
            rules.append(("failed", "status = 'failed'", []))
        if duplicates:
            rules.append((
                "duplicate",
                "status = 'ok' AND id NOT IN (SELECT max(id) FROM measurements WHERE "
                "status = 'ok' GROUP BY fingerprint_hash, protocol_hash, kind, cache_key)",
                [],
            ))  # fmt: skip
        if fingerprints:
            marks = ",".join("?" * len(fingerprints))
            rules.append(("fingerprint", f"fingerprint_hash IN ({marks})", list(fingerprints)))
        if old_fingerprints:
            rules.append((
                "old fingerprint",
                "fingerprint_hash != (SELECT m2.fingerprint_hash FROM measurements m2 WHERE "
                "m2.device = measurements.device ORDER BY m2.id DESC LIMIT 1)",
                [],
            ))  # fmt: skip
        chosen: dict[int, dict[str, Any]] = {}
        for reason, cond, extra in rules:
            q = (
                "SELECT id, device, fingerprint_hash, workload_key, status, finished_at "
                f"FROM measurements WHERE ({cond}){where} ORDER BY id"
            )
            for r in self._query(q, (*extra, *params)):
                row = chosen.setdefault(r["id"], {**dict(r), "reason": reason})
                if reason not in row["reason"].split(", "):
                    row["reason"] += f", {reason}"
        return [chosen[i] for i in sorted(chosen)]

    def delete(self, ids: Iterable[int]) -> int:
        """Delete rows by id in one transaction; returns how many went."""
        if self.readonly:
            raise StoreError(f"results store {self.path} is open read-only")
        ids = list(ids)
        n = 0
        with self._transaction("cannot delete from") as conn:
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                cur = conn.execute(
                    f"DELETE FROM measurements WHERE id IN ({','.join('?' * len(chunk))})", chunk
                )
                n += cur.rowcount
        return n

    def _query(self, q: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(q, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read results store {self.path}: {exc}") from None
            except UnicodeDecodeError as exc:  # a damaged page inside a text column
                raise StoreError(
                    f"results store {self.path} is damaged (a text column is not UTF-8: {exc}); "
                    "restore it from a copy or measure again into a new store"
                ) from None
