"""The profile loop: resume, failures, Ctrl-C / kill, several devices, the CLI and bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch.nn as nn

from compofa_bench import spaces
from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.cli import main
from compofa_bench.devices import DeviceSpec
from compofa_bench.measure import Protocol
from compofa_bench.profile import Job, measure_workloads, profile_archs, select_archs
from compofa_bench.store import SCHEMA_VERSION, ResultStore

FAST = Protocol(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_s=0.0, max_s=1.0)
FAST_ARGS = ["--warmup-runs", "1", "--warmup-seconds", "0", "--runs", "5", "--min-seconds", "0",
             "--max-seconds", "1"]  # fmt: skip


def tiny(width: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 4),
    ).eval()  # fmt: skip


def spec(tmp_path: Path, name: str = "t") -> DeviceSpec:
    return DeviceSpec(name, "cpu-ort", {"threads": 1, "cache_dir": str(tmp_path / "cache")}, FAST)


def job(key: str, width: int = 8, fail: bool = False, interrupt: bool = False) -> Job:
    def build() -> Workload:
        if interrupt:
            raise KeyboardInterrupt
        if fail:
            raise RuntimeError(f"cannot build {key}")
        return Workload(key, tiny(width), (1, 3, 16, 16), f"tiny-{key}")

    return Job(key=key, cache_key=f"tiny-{key}", build=build, kind="layer", meta={"w": width})


def test_measure_records_failures_and_resumes(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    with ResultStore(tmp_path / "r.db") as store:
        jobs = [job("a", 8), job("bad", fail=True), job("b", 16), job("a", 8)]
        s = measure_workloads(jobs, adapter, store, FAST)
        assert [o.status for o in s.outcomes] == ["ok", "failed", "ok"]  # duplicate measured once
        failed = s.by_status("failed")[0]
        assert "RuntimeError: cannot build bad" in failed.error
        rows = store.rows(("workload_key", "status", "error", "kind", "count"))
        assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
        assert rows[0]["kind"] == "layer" and rows[0]["count"] >= 5
        assert "cannot build bad" in rows[1]["error"]

        # rerun: measured ones are skipped without being built; the failed one is retried
        s2 = measure_workloads(jobs, adapter, store, FAST)
        assert sorted(o.status for o in s2.outcomes) == ["failed", "skipped", "skipped"]
        s3 = measure_workloads(jobs, adapter, store, FAST, retry_failed=False)
        assert {o.status for o in s3.outcomes} == {"skipped"}
        # another protocol is another measurement
        other = FAST.replace(min_runs=6)
        s4 = measure_workloads(jobs[:1], adapter, store, other)
        assert [o.status for o in s4.outcomes] == ["ok"]
        # the fingerprint stored has volatile before/after and the stable hash used for resume
        row = store.lookup("a", kind="layer", protocol_hash=FAST.hash())
        fp = json.loads(row["fingerprint_json"])
        assert set(fp["volatile"]) == {"before", "after"}
        assert fp["stable"]["adapter"]["intra_op_threads"] == 1
        assert json.loads(row["meta_json"])["w"] == 8
        assert json.loads(row["prepare_json"])["export_s"] > 0


def test_ctrl_c_keeps_finished_measurements(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    with ResultStore(tmp_path / "r.db") as store:
        jobs = [job("a"), job("b", interrupt=True), job("c")]
        with pytest.raises(KeyboardInterrupt):
            measure_workloads(jobs, adapter, store, FAST)
        assert [r["workload_key"] for r in store.rows()] == ["a"]
        s = measure_workloads([job("a"), job("b"), job("c")], adapter, store, FAST)
        assert [o.status for o in s.outcomes] == ["skipped", "ok", "ok"]


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, torch.nn as nn
    from compofa_bench.adapters.base import Workload
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.adapters import open_adapter
    from compofa_bench.measure import Protocol
    from compofa_bench.profile import Job, measure_workloads
    from compofa_bench.store import ResultStore
    store_path, cache = sys.argv[1], sys.argv[2]
    p = Protocol(warmup_runs=1, warmup_min_s=0.0, min_runs=5, min_s=0.05, max_s=1.0)
    adapter = open_adapter(DeviceSpec("t", "cpu-ort", {"threads": 1, "cache_dir": cache}, p))
    def make(w):
        return lambda: Workload(f"w{w}", nn.Sequential(nn.Conv2d(3, w, 3), nn.ReLU()),
                                (1, 3, 16, 16), f"k{w}")
    jobs = [Job(f"w{w}", f"k{w}", make(w)) for w in range(1, 13)]
    with ResultStore(store_path) as store:
        measure_workloads(jobs, adapter, store, p,
                          on_outcome=lambda o: print("done", o.key, flush=True))
    """
)


@pytest.mark.slow
def test_kill_leaves_store_consistent_and_rerun_resumes(tmp_path: Path) -> None:
    db, cache = tmp_path / "r.db", tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(db), str(cache)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    done = 0
    assert proc.stdout is not None
    for line in proc.stdout:
        done += line.startswith("done")
        if done == 3:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, complete = con.execute(
        "SELECT count(*), sum(median_ms > 0 AND samples_json LIKE '[%]') FROM measurements"
    ).fetchone()
    con.close()
    assert 3 <= n < 12 and complete == n  # every row that exists is whole
    for f in cache.glob("*.onnx"):
        import onnx

        onnx.load(str(f))  # every cached model is complete
    # resume: a rerun measures only what is missing
    out = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(db), str(cache)],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("done") == 12 - n
    with ResultStore(db, readonly=True) as store:
        assert store.count(status="ok") == 12


def test_two_devices_one_store(tmp_path: Path) -> None:
    space = spaces.get("compofa", [128])
    archs = space.sample_many(3, np.random.default_rng(0))
    # two configurations (same name, same options would be the same device to the store)
    b = spec(tmp_path, "dev-b")
    b = b.with_options(graph_optimization="basic")
    devices = [spec(tmp_path, "dev-a"), b]
    with ResultStore(tmp_path / "r.db") as store:
        summaries = profile_archs(
            archs, devices, store, space="compofa",
            build_module=lambda arch: tiny(8 + arch.d[0]),
        )  # fmt: skip
        assert sorted(s.device for s in summaries) == ["dev-a", "dev-b"]
        rows = store.rows()
        # both share this host's CPUs: their timing runs came one after the other
        runs = sorted(store.runs(), key=lambda r: r["id"])
        assert [r["device"] for r in runs] == ["dev-a", "dev-b"]
        assert runs[0]["finished_at"] <= runs[1]["started_at"]
    assert sorted((r["device"], r["workload_key"]) for r in rows) == sorted(
        (d, a.key()) for d in ("dev-a", "dev-b") for a in archs
    )
    assert all(r["status"] == "ok" and r["space"] == "compofa" for r in rows)
    assert all(json.loads(r["arch_json"])["r"] == [128] for r in rows)


@pytest.mark.slow
def test_profile_real_subnets(tmp_path: Path) -> None:
    """End to end with the supernet: random-init subnets, exported, parity-checked, timed."""
    archs = select_archs("compofa", sample=2, seed=1, resolutions=[128])
    with ResultStore(tmp_path / "r.db") as store:
        [s] = profile_archs(archs, [spec(tmp_path)], store, space="compofa")
        assert [o.status for o in s.outcomes] == ["ok", "ok"], [o.error for o in s.outcomes]
        d = s.to_dict()
        assert d["fastest"]["median_ms"] <= d["slowest"]["median_ms"]
        assert {"build_s", "export_s", "parity_s", "session_s"} <= set(d["prepare_s"])
        row = store.lookup(archs[0].key(), width_mult=1.0)
        assert row is not None and row["resolution"] == 128
        assert "random" in row["cache_key"]


def test_select_archs(tmp_path: Path) -> None:
    assert len(select_archs("compofa", all_archs=True, resolutions=[160])) == 243
    a = select_archs("compofa", sample=5, seed=3)
    assert a == select_archs("compofa", sample=5, seed=3) and len(set(a)) == 5
    f = tmp_path / "archs.json"
    f.write_text(json.dumps([x.to_ofa("r") for x in a]))
    assert select_archs("compofa", arch_file=f) == a
    two = select_archs("compofa", arch_file=f, resolutions=[128, 160])
    assert len(two) == 10 and {x.resolution for x in two} == {128, 160}
    from compofa_bench.errors import ArchError

    with pytest.raises(ArchError, match="exactly one"):
        select_archs("compofa", sample=3, all_archs=True)


# ----------------------------------------------------------------------------- CLI


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COMPOFA_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: room for whole keys
    return tmp_path


def test_cli_profile_then_results(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from compofa_bench import hostlock
    from compofa_bench.devices import load_device
    from compofa_bench.timing_run import device_cpus

    # lock files left by a dead process (and one unreadable): taken over, with a message
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    names = hostlock.cpu_lock_names(device_cpus(load_device("cpu-ort-1t")))
    locks = cli_env / "cache" / "locks"
    locks.mkdir(parents=True)
    stale = {"pid": int(dead.stdout), "started": 1.0, "command": "profile", "since": 1.0}
    (locks / f"{names[0]}.lock").write_text(json.dumps(stale))
    (locks / f"{names[-1]}.lock").write_bytes(b"\x00garbage")  # the same file on one CPU
    rc = main(["profile", "--device", "cpu-ort-1t", "--sample", "1", "--resolutions", "128",
               "--store", "r.db", "--json", *FAST_ARGS])  # fmt: skip
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["devices"][0]["measured"] == 1
    assert f"took over the stale lock {names[0]}.lock of pid {int(dead.stdout)}" in captured.err
    if len(names) > 1:
        assert "was unreadable; overwriting it" in captured.err
    # kept even if this busy host made it unstable or contended
    rc = main(["profile", "--device", "cpu-ort-1t", "--sample", "1", "--resolutions", "128",
               "--store", "r.db", "--json", "--accept-unstable", *FAST_ARGS])  # fmt: skip
    assert rc == 0 and json.loads(capsys.readouterr().out)["devices"][0]["skipped"] == 1
    assert main(["results", "show", "--store", "r.db", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["arch"]["r"] == [128] and rows[0]["median_ms"] > 0
    # what else ran on the host, and how the estimate was made, are part of every row
    assert rows[0]["contended"] in (0, 1) and 0.0 <= rows[0]["other_cpu"] <= 1.0
    assert rows[0]["rounds"] == 1 and rows[0]["estimator"] == "median" and rows[0]["run_id"]
    assert main(["results", "export", "--store", "r.db", "--format", "csv", "--out", "o.csv"]) == 0
    assert (cli_env / "o.csv").read_text().startswith("id,")
    assert main(["results", "show", "--store", "r.db"]) == 0
    assert "cpu-ort-1t" in capsys.readouterr().out
    assert main(["results", "devices", "--store", "r.db", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["ok"] == 1


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and match in err and err.count("\n") == 1, err


def test_cli_bad_input(cli_env: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    base = ["profile", "--sample", "1", "--store", "r.db", *FAST_ARGS]
    _bad([*base, "--device", "no-such-device"], capsys, "unknown device")
    bad_arch = spaces.get("compofa").largest(224).to_ofa("r")
    bad_arch["e"] = [5] * 20
    (cli_env / "bad.json").write_text(json.dumps(bad_arch))
    _bad(["profile", "--device", "cpu-ort-1t", "--arch-file", "bad.json", "--store", "r.db"],
         capsys, "expand ratio 5")  # fmt: skip
    _bad([*base, "--device", "cpu-ort-1t", "--runs", "0"], capsys, "min_runs")
    assert not (cli_env / "r.db").exists()  # nothing written by any of those
    _bad(["profile", "--device", "cpu-ort-1t", "--sample", "1", "--store", "no/such/dir.db"],
         capsys, "not a directory")  # fmt: skip
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)
        _bad([*base, "--device", "cpu-ort-1t"], capsys, "onnxruntime")
    assert not (cli_env / "r.db").exists()
    # a store from the future is refused and left alone
    ResultStore(cli_env / "new.db").close()
    con = sqlite3.connect(cli_env / "new.db")
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.commit()
    con.close()
    before = (cli_env / "new.db").read_bytes()
    _bad([*base[:-10], "--device", "cpu-ort-1t", "--store", "new.db"], capsys, "newer")
    _bad(["results", "show", "--store", "new.db"], capsys, "newer")
    assert (cli_env / "new.db").read_bytes() == before
    _bad(["results", "show", "--store", "missing.db"], capsys, "does not exist")


def test_cli_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    text = capsys.readouterr().out
    assert "examples:" in text and "--arch-file" in text and "resume" in text


def test_progress_does_not_break_without_tty(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    from compofa_bench.cli.progress import progress_display

    with ResultStore(tmp_path / "r.db") as store, progress_display() as progress:
        t0 = time.perf_counter()
        s = measure_workloads([job("a")], adapter, store, FAST, progress=progress)
        assert s.outcomes[0].status == "ok" and s.wall_s <= time.perf_counter() - t0 + 1e-6


def test_cached_exports_skip_building_the_subnet(tmp_path: Path) -> None:
    archs = spaces.get("compofa", [128]).sample_many(2, np.random.default_rng(5))
    built: list[str] = []

    def build(arch: spaces.Arch) -> nn.Module:
        built.append(arch.key())
        return tiny(8)

    devices = [spec(tmp_path)]
    with ResultStore(tmp_path / "r.db") as store:
        [s1] = profile_archs(archs, devices, store, build_module=build)
        assert len(built) == 2 and all(o.prepare_s["build_s"] > 0 for o in s1.outcomes)
        # measured again (no skipping), but the ONNX cache holds both: nothing is built
        [s2] = profile_archs(archs, devices, store, build_module=build,
                             skip_done=False)  # fmt: skip
        assert len(built) == 2 and [o.status for o in s2.outcomes] == ["ok", "ok"]
        assert all(o.prepare_s["export_s"] == 0.0 for o in s2.outcomes)


def test_eager_adapters_get_a_built_module(tmp_path: Path) -> None:
    from compofa_bench.adapters.base import Adapter, Prepared, Timing

    class Eager(Adapter):
        kind = "eager-test"

        def describe(self) -> dict[str, object]:
            return {"runtime": "eager"}

        def prepare(self, workload: Workload) -> Prepared:
            assert isinstance(workload.module, nn.Module)  # resolved before prepare
            return Prepared(workload, None)

        def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
            return Timing(samples_ms=[1.0, 1.1, 0.9])

    lazy = Job("k", "ck", lambda: Workload("k", None, (1, 3, 8, 8), "ck", module_factory=tiny))
    with ResultStore(tmp_path / "r.db") as store:
        s = measure_workloads([lazy], Eager(spec(tmp_path)), store, FAST)
    assert s.outcomes[0].status == "ok", s.outcomes[0].error


def test_stop_event_ends_between_jobs(tmp_path: Path) -> None:
    import threading

    stop = threading.Event()
    adapter = open_adapter(spec(tmp_path))
    with ResultStore(tmp_path / "r.db") as store:
        s = measure_workloads([job("a"), job("b"), job("c")], adapter, store, FAST,
                              stop=stop, on_outcome=lambda o: stop.set())  # fmt: skip
        assert s.interrupted and [o.key for o in s.outcomes] == ["a"]
        assert store.count() == 1
