"""Latency on a shared host, with real processes: a CPU burner marks rows contended, two
profile processes on one store measure each workload once, a killed lock holder frees its
lock, rounds and noise-floor probes are stored, old stores still open, bad input is one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from compofa_bench import hostlock
from compofa_bench import store as store_mod
from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.cli import main
from compofa_bench.devices import DeviceSpec
from compofa_bench.errors import LockBusyError
from compofa_bench.measure import Protocol
from compofa_bench.profile import Job, measure_workloads
from compofa_bench.store import ResultStore
from compofa_bench.timing_run import RunOptions, combine_rounds

FAST = Protocol(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_s=0.0, max_s=1.0)
ROOT = Path(__file__).resolve().parents[1]

BURNER = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


@contextlib.contextmanager
def other_process_burning(cpu: int) -> Iterator[int]:
    """A CPU burner on ``cpu`` that is *another* process, not one of ours: started through a
    shell that exits at once, so it is orphaned. (The load meter counts this process's own
    descendants as its own work, as it must for adapters that run a benchmark tool; a burner
    forked by the test itself would be subtracted as ours.)"""
    out = subprocess.run(
        ["sh", "-c", f'"{sys.executable}" -c "$1" {cpu} >/dev/null 2>&1 & echo $!', "sh", BURNER],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    pid = int(out.stdout.split()[0])
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 4),
    ).eval()  # fmt: skip


def job(key: str, width: int = 8) -> Job:
    def build() -> Workload:
        return Workload(key, tiny(width), (1, 3, 16, 16), f"tiny-{key}")

    return Job(key=key, cache_key=f"tiny-{key}", build=build, kind="layer")


def spec(tmp_path: Path, protocol: Protocol = FAST, **options: object) -> DeviceSpec:
    return DeviceSpec(
        "t", "cpu-ort", {"threads": 1, "cache_dir": str(tmp_path / "cache"), **options}, protocol
    )


@pytest.fixture(autouse=True)
def own_lock_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # locks of this test only: the lock directory lives in the cache
    monkeypatch.setenv("COMPOFA_BENCH_CACHE", str(tmp_path / "cache"))


needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)"
)


@needs_affinity
def test_cpu_burner_on_the_measured_cpu_marks_rows_contended(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    # half a second per workload: enough kernel ticks to see the burner's share
    proto = FAST.replace(min_s=0.5, max_s=1.0)
    adapter = open_adapter(spec(tmp_path, proto, affinity=[cpu]))
    try:
        with other_process_burning(cpu):
            time.sleep(0.3)
            with ResultStore(tmp_path / "r.db") as store:
                s = measure_workloads(
                    [job("a"), job("b", 16)], adapter, store, proto,
                    run=RunOptions(probe=False),
                )  # fmt: skip
                rows = store.rows()
    finally:
        adapter.close()
    assert [o.status for o in s.outcomes] == ["ok", "ok"]
    assert all(o.contended for o in s.outcomes)
    assert all(r["contended"] == 1 and r["other_cpu"] > 0.2 for r in rows), rows
    assert s.counts()["ok"] == 0 and s.counts()["contended"] == 2
    # not done: a rerun measures them again (cpu-ort's remeasure), unless accepted
    with ResultStore(tmp_path / "r.db") as store:
        fh, ph = s.fingerprint_hash, s.protocol_hash
        assert store.done_keys(fh, ph, "layer", accept_unstable=False, remeasure=1) == set()
        assert store.done_keys(fh, ph, "layer", accept_unstable=False, remeasure=0) == {
            "tiny-a", "tiny-b",
        }  # fmt: skip
        assert store.done_keys(fh, ph, "layer", accept_unstable=True) == {"tiny-a", "tiny-b"}


PROFILE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch.nn as nn
    from compofa_bench import spaces
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.measure import Protocol
    from compofa_bench.profile import profile_archs
    from compofa_bench.store import ResultStore
    from compofa_bench.timing_run import RunOptions

    db, cache = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        import os
        os.sched_setaffinity(0, {int(sys.argv[3])})
    proto = Protocol(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_s=0.0, max_s=1.0)
    dev = DeviceSpec("t", "cpu-ort", {"threads": 1, "cache_dir": cache}, proto)
    archs = spaces.get("compofa", [128]).sample_many(4, np.random.default_rng(0))
    def tiny(arch):
        w = 8 + arch.d[0]
        return nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(w, 4)).eval()
    with ResultStore(db) as store:
        [s] = profile_archs(archs, [dev], store, space="compofa",
                            build_module=tiny, run=RunOptions(accept_unstable=True))
    print(json.dumps(s.counts()))
    """
)


def _two_profiles(tmp_path: Path, cpus: list[str]) -> list[dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-c", PROFILE_SCRIPT, str(tmp_path / "r.db"), str(tmp_path / "cache")]
    procs = [
        subprocess.Popen(
            [*cmd, *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for c in cpus
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    con = sqlite3.connect(tmp_path / "r.db")
    keys = [r[0] for r in con.execute("SELECT workload_key FROM measurements")]
    assert con.execute("SELECT count(*) FROM claims").fetchone()[0] == 0  # all released
    con.close()
    assert len(keys) == 4 and len(set(keys)) == 4
    return [json.loads(o[0].strip().splitlines()[-1]) for o in outs]


def test_two_profile_processes_on_one_store_measure_each_workload_once(tmp_path: Path) -> None:
    counts = _two_profiles(tmp_path, [[], []])
    # same CPUs: the second to get the lock found everything done
    assert sorted(c["measured"] for c in counts) == [0, 4]
    assert sorted(c["skipped"] for c in counts) == [0, 4]


@needs_affinity
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_two_profile_processes_on_other_cpus_split_the_workloads(tmp_path: Path) -> None:
    # different CPUs, so different locks: the store's claims keep them from measuring twice
    a, b = sorted(os.sched_getaffinity(0))[:2]
    counts = _two_profiles(tmp_path, [[str(a)], [str(b)]])
    assert sum(c["measured"] for c in counts) == 4
    assert sum(c["measured"] + c["skipped"] for c in counts) == 8


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from compofa_bench import hostlock
    with hostlock.hold(["h-cpu0"], directory=Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_killing_the_lock_holder_frees_the_lock(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdout=subprocess.PIPE,
                              text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = pytest.raises(LockBusyError, match=f"pid {holder.pid}")
        with busy, hostlock.hold(["h-cpu0"], directory=d, wait=False):
            pass
        said: list[str] = []
        gave_up = pytest.raises(LockBusyError, match="gave up")
        with gave_up, hostlock.hold(["h-cpu0"], directory=d, timeout_s=0.3, say=said.append):
            pass
        assert any("waiting for another timing run" in m for m in said)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    said = []
    with hostlock.hold(["h-cpu0"], directory=d, wait=False, say=said.append):
        assert json.loads((d / "h-cpu0.lock").read_text())["pid"] == os.getpid()
    assert any("took over the stale lock" in m and str(holder.pid) in m and "dead" in m
               for m in said), said  # fmt: skip


def test_corrupt_lock_file_is_overwritten_with_a_message(tmp_path: Path) -> None:
    d = tmp_path / "locks"
    d.mkdir()
    (d / "h-cpu1.lock").write_bytes(b"\xff\x00not json")
    said: list[str] = []
    with hostlock.hold(["h-cpu1"], directory=d, say=said.append):
        pass
    assert any("unreadable" in m for m in said)
    assert (d / "h-cpu1.lock").read_text() == ""  # released cleanly


def test_rounds_are_interleaved_kept_and_combined(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    jobs = [job("a"), job("b", 16), job("c", 24)]
    with ResultStore(tmp_path / "r.db") as store:
        s = measure_workloads(jobs, adapter, store, FAST,
                              run=RunOptions(rounds=3, order_seed=5))  # fmt: skip
        rows = store.rows()
        rounds = store.round_rows(s.run_id)
        (run,) = store.runs()
    assert [r["workload_key"] for r in rows] and len(rows) == 3
    assert all(r["rounds"] == 3 and r["estimator"] == "median_of_round_medians" for r in rows)
    assert len(rounds) == 9
    for r in rows:
        mine = [x["median_ms"] for x in rounds if x["workload_key"] == r["workload_key"]]
        assert r["median_ms"] == pytest.approx(float(np.median(mine)))
    orders = [[x["workload_key"] for x in rounds if x["round"] == k] for k in range(3)]
    assert all(sorted(o) == ["a", "b", "c"] for o in orders)
    from compofa_bench.timing_run import shuffled

    expect = shuffled(3, 3, np.random.default_rng(5))
    assert orders == [[["a", "b", "c"][i] for i in o] for o in expect]
    # the noise floor of the run: both probes and their drift are stored
    assert run["probe_before_ms"] > 0 and run["probe_after_ms"] > 0
    assert run["noise_floor"] == pytest.approx(s.noise_floor)
    assert run["measured"] == 3 and run["rounds"] == 3
    # a one-round rerun finds them done; a four-round one does not
    with ResultStore(tmp_path / "r.db") as store:
        fh, ph = s.fingerprint_hash, s.protocol_hash
        assert store.done_keys(fh, ph, "layer", min_rounds=3) == {"tiny-a", "tiny-b", "tiny-c"}
        assert store.done_keys(fh, ph, "layer", min_rounds=4) == set()
    adapter.close()


def test_combine_rounds_median_of_medians_and_spread() -> None:
    from compofa_bench.measure import Stats
    from compofa_bench.timing_run import Round

    def rnd(xs: list[float]) -> Round:
        return Round(tuple(xs), Stats.from_samples(xs), None, False)

    steady = [rnd([1.0, 1.0, 1.01]), rnd([1.02, 1.02, 1.02]), rnd([5.0, 5.0, 5.0])]
    stats, est, _load, contended = combine_rounds(steady, Protocol())
    assert est == "median_of_round_medians" and stats.median_ms == pytest.approx(1.02)
    assert stats.unstable and not contended  # one round 5x slower: the spread says so
    stats, est, _load, _c = combine_rounds(steady[:1], Protocol())
    assert est == "median" and stats.median_ms == pytest.approx(1.0)


def test_version_1_store_still_opens(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    v1 = store_mod._SCHEMA.replace(store_mod._V2_COLUMNS_SQL, "").replace(store_mod._V2_TABLES, "")
    con.executescript(v1)
    con.execute(
        "INSERT INTO measurements (started_at, finished_at, status, device, adapter, "
        "fingerprint_hash, fingerprint_json, protocol_hash, protocol_json, kind, workload_key, "
        "cache_key, batch_size, median_ms, unstable) VALUES "
        "('t', 't', 'ok', 'd', 'cpu-ort', 'fp', '{}', 'ph', '{}', 'network', 'k', 'ck', 1, "
        "2.5, 0)"
    )
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()
    with ResultStore(db, readonly=True) as ro:  # read as it is: new columns read as NULL
        [row] = ro.rows()
        assert row["median_ms"] == 2.5 and row["contended"] is None and ro.runs() == []
    with ResultStore(db) as rw:  # migrated in place; the old row counts as one clean round
        assert rw.done_keys("fp", "ph", "network", accept_unstable=False) == {"ck"}
        assert rw.runs() == []
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == store_mod.SCHEMA_VERSION
    con.close()


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1, err


def test_cli_bad_timing_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    base = ["profile", "--device", "cpu-ort-1t", "--sample", "1", "--resolutions", "128",
            "--store", "r.db"]  # fmt: skip
    _bad([*base, "--rounds", "0"], capsys, "--rounds must be an integer >= 1")
    _bad([*base, "--wait-idle", "-1"], capsys, "--wait-idle must be a number of seconds >= 0")
    assert not (tmp_path / "r.db").exists()  # refused before the store is touched
    # another timing run holds this process's CPUs: --no-wait fails at once
    from compofa_bench.devices import load_device
    from compofa_bench.timing_run import device_cpus

    names = hostlock.cpu_lock_names(device_cpus(load_device("cpu-ort-1t")))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    d = tmp_path / "cache" / "locks"
    script = HOLDER.replace('["h-cpu0"]', json.dumps(names))
    holder = subprocess.Popen([sys.executable, "-c", script, str(d)], stdout=subprocess.PIPE,
                              text=True, env=env)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        _bad([*base, "--no-wait", "--runs", "3", "--min-seconds", "0"], capsys,
             "another timing run holds")  # fmt: skip
    finally:
        holder.kill()
        holder.wait()


@needs_affinity
def test_wait_idle_says_that_it_waits_and_gives_up_within_its_bound() -> None:
    from compofa_bench.host_load import wait_idle

    cpu = min(os.sched_getaffinity(0))
    said: list[str] = []
    with other_process_burning(cpu):
        time.sleep(0.3)
        t0 = time.monotonic()
        load = wait_idle(1.0, 0.10, [cpu], said.append, window_s=0.3)
        waited = time.monotonic() - t0
    assert load.contended(0.10) and waited < 3.0
    assert said[0].startswith("waiting up to 1 s for a quiet host")
    assert "still busy after 1 s" in said[-1]


def test_verdict_met_missed_and_too_busy_to_tell() -> None:
    from compofa_bench import verdict
    from compofa_bench.cli.search import exit_status

    met = verdict.check(10.0, 9.0, {"median_ms": 10.9}, 0.10)
    assert (
        met.status == "met"
        and met.trusted
        and met.measured_over_predicted == pytest.approx(10.9 / 9.0)
    )
    missed = verdict.check(10.0, 9.0, {"median_ms": 11.2}, 0.10)
    assert missed.missed and missed.label == "MISSED"
    busy = verdict.check(10.0, 9.0, {"median_ms": 11.2, "contended": True}, 0.10)
    assert busy.label == "MISSED (contended: host too busy to tell)" and not busy.trusted
    assert verdict.check(10.0, 9.0, {"median_ms": 11.2}, 0.15).status == "met"
    items = [{"verdict": v.to_dict()} for v in (met, missed, busy)] + [{"verdict": None}]
    doc = {"verdict": verdict.summarize(items, 0.10)}
    assert doc["verdict"]["checked"] == 3 and doc["verdict"]["missed"] == [10.0, 10.0]
    line = doc["verdict"]["line"]
    assert line.startswith("verdict: 1/3 targets met within +10%") and "MISSED" in line
    assert "too busy to tell" in line
    assert exit_status(doc, fail_on_miss=True) == 3 and exit_status(doc, fail_on_miss=False) == 0
    ok = {"verdict": verdict.summarize([{"verdict": met.to_dict()}], 0.10)}
    assert exit_status(ok, fail_on_miss=True) == 0
    from compofa_bench.errors import SearchError

    with pytest.raises(SearchError, match="--tolerance"):
        verdict.check(10.0, 9.0, {"median_ms": 1.0}, -0.1)


def test_an_interrupted_multi_round_run_keeps_every_round(tmp_path: Path) -> None:
    import threading

    stop = threading.Event()
    builds = {"n": 0}

    def counting(key: str, width: int) -> Job:
        def build() -> Workload:
            builds["n"] += 1
            if builds["n"] == 4:  # the first workload of round 2: stop after it
                stop.set()
            return Workload(key, tiny(width), (1, 3, 16, 16), f"tiny-{key}")

        return Job(key=key, cache_key=f"tiny-{key}", build=build, kind="layer")

    adapter = open_adapter(spec(tmp_path))
    jobs = [counting("a", 8), counting("b", 16), counting("c", 24)]
    with ResultStore(tmp_path / "r.db") as store:
        s = measure_workloads(jobs, adapter, store, FAST, stop=stop,
                              run=RunOptions(rounds=2, probe=False))  # fmt: skip
        rows = store.rows()
        rounds = store.round_rows(s.run_id)
        (run,) = store.runs()
    adapter.close()
    assert s.interrupted and run["interrupted"] == 1
    assert len(rounds) == 4 and len(rows) == 3  # nothing measured is lost
    assert sorted(r["rounds"] for r in rows) == [1, 1, 2]
    # the one-round rows do not count as done for a two-round rerun
    with ResultStore(tmp_path / "r.db") as store:
        done = store.done_keys(s.fingerprint_hash, s.protocol_hash, "layer", min_rounds=2)
    assert len(done) == 1
