"""The android-adb device against the test ADB daemon: push, run, parse, record, clean up, and
every fault the issue lists. The "benchmark binary" here is a shell script that prints real
benchmark_model output (tests/data) and records its arguments; the real-TFLite end-to-end run
is in test_android_e2e.py. Conversion is skipped by seeding the conversion cache, the way a
second profiling run of the same archs finds it."""

from __future__ import annotations

import importlib.util
import json
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from adbd import AdbDaemon, DeviceProps, Faults

pytest.importorskip("adb_shell")
if importlib.util.find_spec("litert_torch") is None:  # not imported: it takes seconds
    pytest.skip("litert-torch (the tflite extra) is not installed", allow_module_level=True)

import torch.nn as nn

from compofa_bench import spaces, tflite_convert
from compofa_bench.adapters.android_adb import AndroidAdbAdapter, BenchmarkRunError
from compofa_bench.adapters.base import Workload
from compofa_bench.devices import parse_device
from compofa_bench.errors import DeviceError, MeasurementError
from compofa_bench.measure import Stats

DATA = Path(__file__).parent / "data"
SHAPE = (1, 3, 8, 8)
NASTY = 'it\'s a "test"; rm -rf / $(echo x)'


@pytest.fixture(scope="module")
def config_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One host key for the module: making an RSA key costs up to a second.
    return tmp_path_factory.mktemp("config")


@pytest.fixture(autouse=True)
def private_dirs(tmp_path: Path, config_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def fake_binary(path: Path, body: str) -> Path:
    """A stand-in for benchmark_model: logs argv and cwd to the phone's tmp dir, then ``body``."""
    path.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$@" > "$ANDROID_DATA_TMP/last_args.txt"\n'
        'pwd > "$ANDROID_DATA_TMP/last_pwd.txt"\n'
        'ls -l > "$ANDROID_DATA_TMP/last_ls.txt"\n' + textwrap.dedent(body)
    )
    path.chmod(0o755)
    return path


@pytest.fixture
def cat_binary(tmp_path: Path) -> Path:
    return fake_binary(
        tmp_path / "benchmark_model", f"cat {DATA / 'benchmark_model_android.txt'}\n"
    )


def seed_cache(cache_dir: Path, cache_key: str, shape: tuple[int, ...] = SHAPE) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / tflite_convert.cache_name(cache_key, shape, "float32")
    path.write_bytes(b"TFL3 not a real model: the fake binary never reads it")
    return path


def spec_for(daemon: AdbDaemon, binary: Path, tmp_path: Path, **options: Any):
    name = options.pop("name", "phone")
    opts = {
        "serial": daemon.serial,
        "benchmark_binary": str(binary),
        "cache_dir": str(tmp_path / "tflite-cache"),
        "threads": 2,
        "cpu_mask": "1",  # real taskset on the host: CPU 0 exists everywhere
        "connect_timeout_s": 5,
        "auth_timeout_s": 1,
        "command_timeout_s": 30,
        "retries": 2,
        **options,
    }
    raw = {
        "name": name,
        "adapter": "android-adb",
        "shares_host_cpus": False,  # as the android-example.toml template says
        "options": opts,
        "protocol": {"warmup_runs": 3, "min_runs": 7, "min_s": 0.25, "max_s": 2.0},
    }
    return parse_device(raw)


def workload(key: str = "k1") -> Workload:
    return Workload("w", nn.Identity(), SHAPE, key)


def run_dirs(daemon: AdbDaemon) -> list[Path]:
    return sorted(daemon.tmp_dir.glob("compofa-bench-*"))


def test_measures_records_state_and_cleans_up(tmp_path: Path, cat_binary: Path) -> None:
    with AdbDaemon(tmp_path / "phone") as d:
        spec = spec_for(d, cat_binary, tmp_path, extra_args=[f"--benchmark_name={NASTY}"])
        seed_cache(tmp_path / "tflite-cache", "k1")
        adapter = AndroidAdbAdapter(spec)
        desc = adapter.describe()
        assert desc["phone"]["props"]["ro.product.model"] == "AdbdTest"
        assert desc["phone"]["props"]["ro.soc.model"] == "TestSoC 1000"
        assert desc["phone"]["cpu_max_khz"] == [1780000] * 4 + [2840000] * 4
        assert desc["cpu_mask"] == "1" and desc["threads"] == 2

        prepared = adapter.prepare(workload())
        (run_dir,) = run_dirs(d)
        assert stat.S_IMODE((run_dir / "benchmark_model").stat().st_mode) == 0o755
        assert (run_dir / "model.tflite").read_bytes().startswith(b"TFL3")

        timing = adapter.time(prepared, spec.protocol)
        stats = Stats.from_timing(timing)
        assert stats.count == 76 and stats.mean_ms == pytest.approx(13.1184)
        assert "Inference timings in us" in timing.raw_output
        assert timing.extra["benchmark"]["init_ms"] == pytest.approx(48.204)
        before, after = timing.extra["phone_before"], timing.extra["phone_after"]
        assert before["temperatures_c"] == {
            "thermal_zone0:cpu-big": 41.0,
            "thermal_zone1:battery": 38.5,
        }
        assert before["cpu_cur_khz"] == [1708800] * 4 + [2419200] * 4
        assert after["governors"] == ["schedutil"]
        json.dumps(timing.extra)  # goes into the store's meta column

        args = (d.tmp_dir / "last_args.txt").read_text().splitlines()
        assert args == [
            f"--graph={run_dir}/model.tflite",
            "--num_threads=2",
            "--warmup_runs=3",
            "--warmup_min_secs=0.2",
            "--num_runs=7",
            "--min_secs=0.25",
            "--max_secs=2",
            "--use_xnnpack=true",
            f"--benchmark_name={NASTY}",
        ]
        assert (d.tmp_dir / "last_pwd.txt").read_text().strip() == str(run_dir)

        adapter.release(prepared)
        assert run_dirs(d) == []
        adapter.close()


def test_unparsable_output_is_kept(tmp_path: Path) -> None:
    binary = fake_binary(
        tmp_path / "benchmark_model", "echo 'INFO: STARTING!'; echo 'gibberish 42'\n"
    )
    with AdbDaemon(tmp_path / "phone") as d:
        spec = spec_for(d, binary, tmp_path)
        seed_cache(tmp_path / "tflite-cache", "k1")
        adapter = AndroidAdbAdapter(spec)
        prepared = adapter.prepare(workload())
        with pytest.raises(BenchmarkRunError, match="raw output saved to") as info:
            adapter.time(prepared, spec.protocol)
        assert "gibberish 42" in info.value.raw_output
        saved = Path(str(info.value).rsplit("raw output saved to ", 1)[1])
        assert "gibberish 42" in saved.read_text()
        adapter.release(prepared)
        assert run_dirs(d) == []


def test_binary_the_phone_cannot_execute(tmp_path: Path) -> None:
    binary = tmp_path / "benchmark_model"
    # An aarch64 ELF header: the x86 "phone" cannot run it, like an x86 build on a phone.
    binary.write_bytes(bytes.fromhex("7f454c4602010100") + b"\0" * 8 + bytes.fromhex("0200b700"))
    with AdbDaemon(tmp_path / "phone") as d:
        spec = spec_for(d, binary, tmp_path)
        seed_cache(tmp_path / "tflite-cache", "k1")
        adapter = AndroidAdbAdapter(spec)
        prepared = adapter.prepare(workload())
        with pytest.raises(DeviceError, match="cannot execute benchmark_model"):
            adapter.time(prepared, spec.protocol)
        adapter.release(prepared)
        assert run_dirs(d) == []


def test_missing_binary_and_bad_options(tmp_path: Path) -> None:
    with AdbDaemon(tmp_path / "phone") as d:
        with pytest.raises(DeviceError, match="does not exist"):
            AndroidAdbAdapter(spec_for(d, tmp_path / "nope", tmp_path))
        binary = fake_binary(tmp_path / "benchmark_model", "true\n")
        with pytest.raises(DeviceError, match="cpu_mask"):
            AndroidAdbAdapter(spec_for(d, binary, tmp_path, cpu_mask="big"))
        with pytest.raises(DeviceError, match="unknown android-adb option"):
            AndroidAdbAdapter(spec_for(d, binary, tmp_path, thread=4))


def test_disconnect_mid_run_is_retried(tmp_path: Path, cat_binary: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(drop_on="--graph=", drop_times=1)) as d:
        spec = spec_for(d, cat_binary, tmp_path)
        seed_cache(tmp_path / "tflite-cache", "k1")
        adapter = AndroidAdbAdapter(spec)
        prepared = adapter.prepare(workload())
        timing = adapter.time(prepared, spec.protocol)
        assert d.drops == 1
        assert timing.summary_ms["count"] == 76
        adapter.release(prepared)
        assert run_dirs(d) == []


def test_disconnect_every_time_gives_up_after_retries(tmp_path: Path, cat_binary: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(drop_on="--graph=")) as d:
        spec = spec_for(d, cat_binary, tmp_path, retries=1)
        seed_cache(tmp_path / "tflite-cache", "k1")
        adapter = AndroidAdbAdapter(spec)
        prepared = adapter.prepare(workload())
        with pytest.raises(MeasurementError, match="dropped 2 times"):
            adapter.time(prepared, spec.protocol)
        assert d.drops == 2
        adapter.release(prepared)
        assert run_dirs(d) == []


def test_full_storage_fails_prepare_and_leaves_nothing(tmp_path: Path, cat_binary: Path) -> None:
    with AdbDaemon(tmp_path / "phone", faults=Faults(storage_full=True)) as d:
        spec = spec_for(d, cat_binary, tmp_path)
        seed_cache(tmp_path / "tflite-cache", "k1")
        adapter = AndroidAdbAdapter(spec)
        with pytest.raises(DeviceError, match="storage is full"):
            adapter.prepare(workload())
        assert run_dirs(d) == []


@pytest.mark.parametrize(
    "faults,message", [(Faults(offline=True), "offline"), (Faults(unauthorized=True), "accept")]
)
def test_unreachable_phone_fails_at_open(
    tmp_path: Path, cat_binary: Path, faults: Faults, message: str
) -> None:
    with (
        AdbDaemon(tmp_path / "phone", faults=faults) as d,
        pytest.raises(DeviceError, match=message),
    ):
        AndroidAdbAdapter(spec_for(d, cat_binary, tmp_path))


def test_cooldown_waits_for_the_threshold(tmp_path: Path, cat_binary: Path) -> None:
    props = DeviceProps(temperatures_mc=(52000, 30000))
    with AdbDaemon(tmp_path / "phone", props=props) as d:
        seed_cache(tmp_path / "tflite-cache", "k1")
        # Only the battery zone is watched: it is cool, so no wait.
        spec = spec_for(d, cat_binary, tmp_path, cooldown_below_c=45.0, cooldown_zones="battery")
        adapter = AndroidAdbAdapter(spec)
        prepared = adapter.prepare(workload())
        timing = adapter.time(prepared, spec.protocol)
        assert timing.extra["cooldown"]["timed_out"] is False
        assert timing.extra["cooldown"]["start_c"] == 30.0
        adapter.release(prepared)
        # The CPU zone stays at 52 °C: the rule gives up after max_wait and says so.
        spec = spec_for(
            d, cat_binary, tmp_path, cooldown_below_c=45.0, cooldown_zones="cpu",
            cooldown_max_wait_s=0.3, cooldown_poll_s=0.1,
        )  # fmt: skip
        adapter = AndroidAdbAdapter(spec)
        prepared = adapter.prepare(workload())
        timing = adapter.time(prepared, spec.protocol)
        cd = timing.extra["cooldown"]
        assert cd["timed_out"] is True and cd["end_c"] == 52.0 and cd["waited_s"] >= 0.3
        adapter.release(prepared)


def test_cool_down_rule_polls_until_cool() -> None:
    from compofa_bench.adapters.android_probe import CooldownRule, cool_down

    readings = iter([{"z:cpu": 50.0}, {"z:cpu": 47.0}, {"z:cpu": 44.0}])
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    out = cool_down(lambda: next(readings), CooldownRule(45.0, poll_s=2.0), sleep, lambda: now[0])
    assert out == {"waited_s": 4.0, "start_c": 50.0, "end_c": 44.0, "timed_out": False}
    assert slept == [2.0, 2.0]


def test_two_phones_profile_into_one_store(tmp_path: Path, cat_binary: Path) -> None:
    from compofa_bench.profile import arch_cache_key, profile_archs
    from compofa_bench.store import ResultStore

    space = spaces.get("compofa")
    archs = space.sample_many(3, np.random.default_rng(0))
    for a in archs:
        seed_cache(
            tmp_path / "tflite-cache",
            arch_cache_key(a, batch_size=1),
            (1, 3, a.resolution, a.resolution),
        )
    # The second phone drops the connection on every benchmark run: its failures are recorded
    # and the first phone's measurements are unaffected.
    with (
        AdbDaemon(tmp_path / "p1") as d1,
        AdbDaemon(tmp_path / "p2", faults=Faults(drop_on="--graph=")) as d2,
        ResultStore(tmp_path / "results.db") as store,
    ):
        # two phones (the loopback daemons describe the same phone: threads tell them apart)
        specs = [
            spec_for(d1, cat_binary, tmp_path, name="phone-1"),
            spec_for(d2, cat_binary, tmp_path, name="phone-2", retries=0, threads=1),
        ]
        summaries = profile_archs(
            archs, specs, store, space="compofa",
            build_module=lambda arch: nn.Identity(),
        )  # fmt: skip
        by_device = {s.device: s for s in summaries}
        assert len(by_device["phone-1"].by_status("ok")) == 3
        assert len(by_device["phone-2"].by_status("failed")) == 3
        rows = store.rows(("device", "status", "error", "mean_ms", "raw_output", "meta_json"))
        assert len(rows) == 6
        ok = [r for r in rows if r["status"] == "ok"]
        assert {r["device"] for r in ok} == {"phone-1"}
        assert all(r["mean_ms"] == pytest.approx(13.1184) for r in ok)
        assert all("Inference timings in us" in r["raw_output"] for r in ok)
        assert all("phone_before" in json.loads(r["meta_json"]) for r in ok)
        failed = [r for r in rows if r["status"] == "failed"]
        assert all("connection dropped" in r["error"] for r in failed)
        assert run_dirs(d1) == [] and run_dirs(d2) == []
        # Resume: a second run measures nothing new on the healthy phone.
        again = profile_archs(
            archs, specs[:1], store, space="compofa",
            build_module=lambda arch: nn.Identity(),
        )  # fmt: skip
        assert len(again[0].by_status("skipped")) == 3


def test_failed_run_keeps_raw_output_in_the_store(tmp_path: Path) -> None:
    from compofa_bench.profile import arch_cache_key, profile_archs
    from compofa_bench.store import ResultStore

    binary = fake_binary(tmp_path / "benchmark_model", "echo 'Segmentation fault in op 7'\n")
    arch = spaces.get("compofa").smallest(128)
    seed_cache(tmp_path / "tflite-cache", arch_cache_key(arch, batch_size=1), (1, 3, 128, 128))
    with AdbDaemon(tmp_path / "phone") as d, ResultStore(tmp_path / "r.db") as store:
        (summary,) = profile_archs(
            [arch], [spec_for(d, binary, tmp_path)], store,
            build_module=lambda a: nn.Identity(),
        )  # fmt: skip
        assert len(summary.by_status("failed")) == 1
        (row,) = store.rows(("status", "error", "raw_output"))
    assert row["status"] == "failed"
    assert "Segmentation fault" in row["error"]  # the tool's own line, in one line
    assert "Segmentation fault in op 7" in row["raw_output"]
