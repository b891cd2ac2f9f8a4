"""SQLite results store: schema, round trip, resume keys, look-ups, concurrency, bad files."""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compofa_bench.errors import MissingDependencyError, StoreError
from compofa_bench.measure import Protocol, Stats
from compofa_bench.store import SCHEMA_VERSION, Measurement, ResultStore

P = Protocol(min_runs=3)


def _m(key: str, samples: list[float], fp_hash: str = "fp1", **kw: object) -> Measurement:
    base = dict(
        device="dev", adapter="cpu-ort", fingerprint={"stable_hash": fp_hash, "stable": {}},
        protocol=P.to_dict(), protocol_hash=P.hash(), kind="network", workload_key=key,
        cache_key=f"mbv3-{key}", batch_size=1,
        samples_ms=samples, space="compofa", arch={"ks": [3], "r": [160]}, resolution=160,
        width_mult=1.0,
    )  # fmt: skip
    base.update(kw)
    if "stats" not in kw:
        base["stats"] = Stats.from_samples(samples)
    return Measurement(**base)  # type: ignore[arg-type]


def test_round_trip_and_lookup(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        store.add(_m("a", [1.0, 2.0, 3.0]))
        store.add(_m("b", [5.0, 5.0, 5.0]))
        store.add(_m("a", [4.0, 4.0, 4.0]))  # a later re-measurement of a
        store.add(_m("c", [], status="failed", error="boom", stats=None))
        rows = store.rows()
        assert [r["workload_key"] for r in rows] == ["a", "b", "a", "c"]
        assert rows[0]["median_ms"] == 2.0 and json.loads(rows[0]["arch_json"])["r"] == [160]
        assert rows[3]["status"] == "failed" and rows[3]["median_ms"] is None
        assert store.lookup("a", fingerprint_hash="fp1")["median_ms"] == 4.0  # latest wins
        assert store.lookup("a", fingerprint_hash="other") is None
        assert store.lookup("c") is None  # failed rows are never answers
        assert store.lookup("a", width_mult=1.2) is None
        assert store.lookup_many(["a", "b", "zz"], fingerprint_hash="fp1") == {"a": 4.0, "b": 5.0}
        assert store.done_keys("fp1", P.hash(), "network") == {"mbv3-a", "mbv3-b"}
        assert store.done_keys("fp1", P.hash(), "network", include_failed=True) == {
            "mbv3-a",
            "mbv3-b",
            "mbv3-c",
        }
        assert store.done_keys("fp1", Protocol().hash(), "network") == set()
        assert store.done_keys("fp1", P.hash(), "layer") == set()
        samples = dict(store.iter_samples(status="ok"))
        assert samples["b"] == [5.0, 5.0, 5.0]
        assert store.count(status="ok") == 3
        assert store.devices()[0]["ok"] == 3 and store.devices()[0]["failed"] == 1


def test_nan_stats_are_stored_as_null(tmp_path: Path) -> None:
    s = Stats.from_summary(count=10, mean_ms=3.0, std_ms=0.1)
    with ResultStore(tmp_path / "r.db") as store:
        store.add(_m("a", [], stats=s))
        r = store.rows()[0]
    assert r["iqr_ms"] is None and r["ci95_low_ms"] is None and r["median_ms"] == 3.0


def test_ok_needs_stats(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store, pytest.raises(StoreError):
        store.add(_m("a", [], stats=None))


def test_export_csv_and_json(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        store.add(_m("a", [1.0, 2.0, 3.0]))
        store.add(_m("b", [2.0, 2.0, 2.0], device="other"))
        text = store.export(None, "csv")
        store.export(tmp_path / "o.json", "json", device="other")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["workload_key"] for r in rows] == ["a", "b"]
    assert float(rows[0]["median_ms"]) == 2.0
    data = json.loads((tmp_path / "o.json").read_text())
    assert [r["workload_key"] for r in data] == ["b"]
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def test_to_dataframe_optional(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r.db") as store:
        store.add(_m("a", [1.0, 2.0, 3.0]))
        try:
            import pandas  # noqa: F401
        except ImportError:
            with pytest.raises(MissingDependencyError, match="pandas"):
                store.to_dataframe()
        else:
            df = store.to_dataframe()
            assert list(df["workload_key"]) == ["a"]


def test_schema_version_and_wal(tmp_path: Path) -> None:
    ResultStore(tmp_path / "r.db").close()
    con = sqlite3.connect(tmp_path / "r.db")
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    ResultStore(path).close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="newer compofa-bench"):
        ResultStore(path)
    with pytest.raises(StoreError, match="newer compofa-bench"):
        ResultStore(path, readonly=True)


def test_bad_files_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a compofa-bench results store"):
        ResultStore(junk)
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="not a results store"):
        ResultStore(other)
    with pytest.raises(StoreError, match="is not a directory"):
        ResultStore(tmp_path / "missing-dir" / "r.db")
    with pytest.raises(StoreError, match="does not exist"):
        ResultStore(tmp_path / "nope.db", readonly=True)
    (tmp_path / "adir").mkdir()
    with pytest.raises(StoreError):
        ResultStore(tmp_path / "adir")


def test_readonly_store_cannot_write(tmp_path: Path) -> None:
    ResultStore(tmp_path / "r.db").close()
    with ResultStore(tmp_path / "r.db", readonly=True) as store, pytest.raises(StoreError):
        store.add(_m("a", [1.0]))


WRITER = textwrap.dedent(
    """
    import sys
    from compofa_bench.measure import Protocol, Stats
    from compofa_bench.store import Measurement, ResultStore
    path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    p = Protocol()
    store = ResultStore(path)
    for i in range(n):
        samples = [1.0 + i, 2.0 + i, 3.0 + i]
        store.add(Measurement(
            device=who, adapter="cpu-ort", fingerprint={"stable_hash": who},
            protocol=p.to_dict(), protocol_hash=p.hash(), kind="network",
            workload_key=f"{who}-{i}", cache_key=f"{who}-{i}", batch_size=1,
            stats=Stats.from_samples(samples), samples_ms=samples,
        ))
        store.rows(limit=5)  # readers interleave with writers
    store.close()
    """
)


def test_concurrent_writer_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    n = 40
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(path), f"w{k}", str(n)],
                         stderr=subprocess.PIPE, text=True)
        for k in range(3)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with ResultStore(path, readonly=True) as store:
        rows = store.rows(("workload_key", "device", "median_ms"))
    assert len(rows) == 3 * n
    assert {r["workload_key"] for r in rows} == {f"w{k}-{i}" for k in range(3) for i in range(n)}
    for r in rows:
        i = int(r["workload_key"].split("-")[1])
        assert math.isclose(r["median_ms"], 2.0 + i)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
