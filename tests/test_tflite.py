"""Real TFLite: conversion of a CompOFA subnet (NHWC, parity, cache), the tflite-local device,
and the android-adb device end to end through the test ADB daemon with a real TFLite runtime
(ai-edge-litert's litert-benchmark behind a benchmark_model-style wrapper) and the CLI.

One subnet (the smallest CompOFA arch at 128 px) is converted once for the whole module: a
conversion takes 15-50 s here."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

import torch

from compofa_bench import spaces, supernet, tflite_convert
from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.devices import parse_device
from compofa_bench.errors import ExportError
from compofa_bench.measure import Stats
from compofa_bench.profile import arch_cache_key

sys.path.insert(0, str(Path(__file__).parent))

pytestmark = pytest.mark.slow

PROTOCOL = {"warmup_runs": 2, "warmup_min_s": 0.0, "min_runs": 5, "min_s": 0.05, "max_s": 2.0}


class Converted:
    def __init__(self, arch, module, shape, cache_dir, info) -> None:
        self.arch, self.module, self.shape, self.cache_dir, self.info = (
            arch, module, shape, cache_dir, info,
        )  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    arch = spaces.get("compofa").smallest(128)
    torch.manual_seed(0)
    module = supernet.build("mbv3").extract(arch).eval()
    shape = (1, 3, 128, 128)
    cache_dir = tmp_path_factory.mktemp("tflite-cache")
    # The key profile uses for a random-init subnet, so profiling below hits this cache.
    key = arch_cache_key(arch, batch_size=1)
    info = tflite_convert.convert_cached(module, shape, None, cache_dir, cache_key=key)
    return Converted(arch, module, shape, cache_dir, info)


def test_conversion_is_channel_last_and_matches_pytorch(converted: Converted) -> None:
    info = converted.info
    assert not info.cached and info.convert_s > 0
    assert info.parity is not None and info.parity.ok
    io = tflite_convert.model_io(info.path)
    # NHWC input, so the graph carries no layout transposes a phone app would not run.
    assert io["inputs"] == [{"shape": [1, 128, 128, 3], "dtype": "float32"}]
    assert io["outputs"] == [{"shape": [1, 1000], "dtype": "float32"}]
    again = tflite_convert.check_parity(converted.module, info.path, converted.shape, seed=7)
    assert again.ok and again.max_abs_diff <= again.tolerance


def test_parity_check_catches_a_different_network(converted: Converted) -> None:
    other = copy.deepcopy(converted.module)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.05 * torch.randn_like(p))
    result = tflite_convert.check_parity(other, converted.info.path, converted.shape)
    assert not result.ok
    assert result.max_abs_diff > 10 * result.tolerance


def test_cache_hit_returns_the_same_file_without_converting(
    converted: Converted, tmp_path: Path
) -> None:
    key = arch_cache_key(converted.arch, batch_size=1)
    hit = tflite_convert.convert_cached(
        converted.module, converted.shape, None, converted.cache_dir, cache_key=key
    )
    assert hit.cached and hit.path == converted.info.path and hit.convert_s == 0.0
    out = tflite_convert.to_tflite(
        converted.module, converted.shape, tmp_path / "copy.tflite", converted.cache_dir,
        cache_key=key,
    )  # fmt: skip
    assert out.read_bytes() == converted.info.path.read_bytes()
    # Everything that changes the graph changes the cache name.
    base = tflite_convert.cache_name(key, converted.shape, "float32")
    assert tflite_convert.cache_name(key + "x", converted.shape, "float32") != base
    assert tflite_convert.cache_name(key, (2, 3, 128, 128), "float32") != base
    assert tflite_convert.cache_name(key, converted.shape, "float16") != base


def test_bad_requests_are_export_errors(converted: Converted, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="input shape"):
        tflite_convert.to_tflite(converted.module, (3, 128, 128), tmp_path / "x.tflite")
    with pytest.raises(ExportError, match="precision"):
        tflite_convert.convert(converted.module, converted.shape, tmp_path / "x.tflite", "int4")
    with pytest.raises(ExportError, match="needs an out_path or a cache_dir"):
        tflite_convert.to_tflite(converted.module, converted.shape, None)


@pytest.mark.parametrize("xnnpack", [True, False])
def test_tflite_local_device(converted: Converted, xnnpack: bool) -> None:
    spec = parse_device(
        {
            "name": "tl",
            "adapter": "tflite-local",
            "options": {"threads": 1, "xnnpack": xnnpack, "cache_dir": str(converted.cache_dir)},
            "protocol": PROTOCOL,
        }
    )
    with open_adapter(spec) as adapter:
        assert adapter.describe()["xnnpack"] is xnnpack
        key = arch_cache_key(converted.arch, batch_size=1)
        prepared = adapter.prepare(Workload("w", converted.module, converted.shape, key))
        assert prepared.artifact_path == str(converted.info.path)  # cache hit
        timing = adapter.time(prepared, spec.protocol)
        stats = Stats.from_timing(timing)
        assert stats.count >= 5 and stats.min_ms > 0
        assert timing.extra["xnnpack"] is xnnpack


def litert_wrapper(path: Path) -> Path:
    """A benchmark_model-compatible front end for ai-edge-litert's litert-benchmark, so the
    "phone" runs a real TFLite runtime on x86."""
    tool = Path(sys.executable).parent / "litert-benchmark"
    if not tool.exists():
        pytest.skip("litert-benchmark (ai-edge-litert) is not installed")
    path.write_text(
        "#!/bin/sh\n"
        "# benchmark_model flags -> litert-benchmark flags\n"
        "graph=; threads=1; warm=1; runs=50\n"
        'for a in "$@"; do case "$a" in\n'
        '  --graph=*) graph="${a#--graph=}";;\n'
        '  --num_threads=*) threads="${a#--num_threads=}";;\n'
        '  --warmup_runs=*) warm="${a#--warmup_runs=}";;\n'
        '  --num_runs=*) runs="${a#--num_runs=}";;\n'
        "esac; done\n"
        f'exec {tool} --model="$graph" --num_threads="$threads" '
        '--warmup_runs="$warm" --num_runs="$runs"\n'
    )
    path.chmod(0o755)
    return path


def test_android_end_to_end_with_real_tflite_through_the_cli(
    converted: Converted, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("adb_shell")
    from adbd import AdbDaemon

    from compofa_bench.cli import main
    from compofa_bench.store import ResultStore

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    wrapper = litert_wrapper(tmp_path / "benchmark_model")
    arch_file = tmp_path / "archs.json"
    arch_file.write_text(json.dumps([converted.arch.to_ofa("r")]))
    with AdbDaemon(tmp_path / "phone") as d:
        device = tmp_path / "phone.toml"
        device.write_text(
            f'name = "test-phone"\nadapter = "android-adb"\n[options]\n'
            f'serial = "{d.serial}"\nbenchmark_binary = "{wrapper.name}"\n'
            f'cache_dir = "{converted.cache_dir}"\nthreads = 1\ncpu_mask = "1"\n'
            "connect_timeout_s = 5\nauth_timeout_s = 2\n"
            "[protocol]\n" + "".join(f"{k} = {v}\n" for k, v in PROTOCOL.items())
        )
        store_path = tmp_path / "results.db"
        rc = main(
            ["profile", "--device", str(device), "--arch-file", str(arch_file),
             "--store", str(store_path), "--no-progress", "--json"]
        )  # fmt: skip
        assert rc == 0
        assert list(d.tmp_dir.glob("compofa-bench-*")) == []
        # The real .tflite crossed the ADB sync protocol: the model the runtime ran was ours.
        assert any(s.startswith("sync:") for s in d.services)
    with ResultStore(store_path) as store:
        (row,) = store.rows(
            ("status", "error", "device", "adapter", "mean_ms", "median_ms", "count",
             "raw_output", "meta_json", "workload_key")
        )  # fmt: skip
    assert row["status"] == "ok", row["error"]
    assert (row["device"], row["adapter"]) == ("test-phone", "android-adb")
    assert row["workload_key"] == converted.arch.key()
    assert row["count"] == PROTOCOL["min_runs"]
    assert "BENCHMARK RESULTS" in row["raw_output"]
    assert np.isfinite(row["median_ms"]) and row["median_ms"] > 0
    meta = json.loads(row["meta_json"])
    assert meta["benchmark"]["tool"] == "litert-benchmark"
    assert meta["phone_before"]["temperatures_c"]


@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset")
def test_wrapper_is_a_faithful_stand_in(converted: Converted, tmp_path: Path) -> None:
    """The wrapper runs the converted model for real: a wrong graph path fails loudly."""
    import subprocess

    wrapper = litert_wrapper(tmp_path / "benchmark_model")
    ok = subprocess.run(
        [str(wrapper), f"--graph={converted.info.path}", "--num_runs=3", "--warmup_runs=1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    from compofa_bench import benchmark_output

    result = benchmark_output.parse(ok.stdout + ok.stderr)
    assert result.summary_ms["count"] == 3
    bad = subprocess.run(
        [str(wrapper), f"--graph={tmp_path / 'missing.tflite'}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0


def test_classifier_layer_input_and_concurrent_conversions_share_one(tmp_path: Path) -> None:
    """(N, C) input (a classifier timed alone by lut build), and two devices converting the same
    workload at once: one conversion, the other waits and gets the cached file."""
    import threading

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(64, 10)).eval()
    results: list[tflite_convert.ConversionInfo] = []

    def work() -> None:
        results.append(
            tflite_convert.convert_cached(layer, (1, 64), None, tmp_path, cache_key="fc-64-10")
        )

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.cached for r in results) == [False, True]
    assert results[0].path == results[1].path
    fresh = next(r for r in results if not r.cached)
    assert fresh.parity is not None and fresh.parity.ok
    assert tflite_convert.model_io(fresh.path)["inputs"][0]["shape"] == [1, 64]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".tflite") == [fresh.path.name]
