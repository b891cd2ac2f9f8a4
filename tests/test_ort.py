"""The cpu-ort adapter and ONNX export/parity, on small real modules through real ONNX Runtime."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.convert import cached_onnx, check_onnx_parity, to_onnx
from compofa_bench.devices import DeviceSpec
from compofa_bench.errors import DeviceError, ExportError, MissingDependencyError
from compofa_bench.measure import Protocol, Stats

FAST = Protocol(warmup_runs=2, warmup_min_s=0.0, min_runs=10, min_s=0.0, max_s=2.0)


def tiny(seed: int = 0, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 5),
    )  # fmt: skip
    with torch.no_grad():
        m[1].running_mean.uniform_(-0.5, 0.5)
        m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def spec(tmp_path: Path, **options: object) -> DeviceSpec:
    opts = {"threads": 1, "cache_dir": str(tmp_path / "cache"), **options}
    return DeviceSpec("t", "cpu-ort", opts, FAST)


def test_prepare_time_and_cache(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    w = Workload("tiny", tiny(), (1, 3, 32, 32), "tiny-v1")
    p = adapter.prepare(w)
    assert Path(p.artifact_path).is_file() and p.artifact_path.startswith(str(tmp_path))
    assert p.prepare_s["export_s"] > 0 and p.prepare_s["parity_s"] > 0
    t = adapter.time(p, FAST)
    s = Stats.from_timing(t)
    assert s.count >= 10 and s.median_ms > 0 and len(t.warmup_ms) >= 2
    # a second prepare of the same cache key reuses the file: no export, no parity check
    p2 = adapter.prepare(w)
    assert p2.artifact_path == p.artifact_path and p2.prepare_s["export_s"] == 0.0
    assert p2.prepare_s["parity_s"] == 0.0
    # another cache key is another file
    p3 = adapter.prepare(Workload("tiny", tiny(), (1, 3, 32, 32), "tiny-v2"))
    assert p3.artifact_path != p.artifact_path


def test_io_binding_computes_the_model(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    m = tiny(1)
    p = adapter.prepare(Workload("tiny", m, (2, 3, 16, 16), "tiny-b2"))
    binding = adapter.bind(p.handle, (2, 3, 16, 16))
    p.handle.run_with_iobinding(binding)
    got = binding.copy_outputs_to_cpu()[0]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_batch_mismatch_refused(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path))
    p = adapter.prepare(Workload("tiny", tiny(), (2, 3, 16, 16), "tiny-b2"))
    from compofa_bench.errors import MeasurementError

    with pytest.raises(MeasurementError, match="batch"):
        adapter.time(p, FAST)


def test_parity_check_catches_a_wrong_model(tmp_path: Path) -> None:
    path = to_onnx(tiny(0), (1, 3, 16, 16), tmp_path / "a.onnx")
    assert check_onnx_parity(tiny(0), path, (1, 3, 16, 16))["ok"]
    with pytest.raises(ExportError, match="parity"):
        check_onnx_parity(tiny(1), path, (1, 3, 16, 16))


def test_export_is_atomic_and_failure_is_export_error(tmp_path: Path) -> None:
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("cannot trace me")

    with pytest.raises(ExportError, match="cannot trace me"):
        to_onnx(Bad(), (1, 3, 8, 8), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []  # no partial file left for the cache to trust


def test_cached_onnx_keys_on_shape(tmp_path: Path) -> None:
    a, fresh_a, _ = cached_onnx(tiny(), (1, 3, 16, 16), "k", tmp_path)
    b, fresh_b, _ = cached_onnx(tiny(), (1, 3, 16, 16), "k", tmp_path)
    c, fresh_c, _ = cached_onnx(tiny(), (1, 3, 24, 24), "k", tmp_path)
    assert a == b != c and fresh_a and not fresh_b and fresh_c
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == sorted([a.name, c.name])


def test_cache_never_publishes_a_failed_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import compofa_bench.convert as convert

    def wrong_export(module: nn.Module, shape: tuple[int, ...], path: Path, opset: int) -> Path:
        return to_onnx(tiny(seed=7), shape, path, opset)  # not the module asked for

    monkeypatch.setattr(convert, "to_onnx", wrong_export)
    with pytest.raises(ExportError, match="parity"):
        cached_onnx(tiny(0), (1, 3, 16, 16), "k", tmp_path)
    assert list(tmp_path.glob("*.onnx")) == []


def test_concurrent_workers_share_one_export(tmp_path: Path) -> None:
    import threading

    results: list[tuple[Path, bool]] = []

    def work(seed: int) -> None:
        # different random weights, same cache key: each worker's check must see its own file
        path, fresh, _ = cached_onnx(tiny(seed), (1, 3, 16, 16), "shared", tmp_path)
        results.append((path, fresh))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p for p, _ in results}) == 1 and sum(f for _, f in results) == 1


def test_describe_and_threads(tmp_path: Path) -> None:
    import psutil

    d = open_adapter(spec(tmp_path, threads=0)).describe()
    assert d["intra_op_threads"] == (psutil.cpu_count(logical=False) or os.cpu_count())
    assert d["runtime"] == "onnxruntime" and d["inter_op_threads"] == 1
    one = open_adapter(spec(tmp_path)).describe()
    assert one["intra_op_threads"] == 1 and one != d


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_affinity_applied_while_timing_and_restored(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    adapter = open_adapter(spec(tmp_path, affinity=[min(before)]))
    p = adapter.prepare(Workload("tiny", tiny(), (1, 3, 16, 16), "aff"))
    seen: list[set[int]] = []
    real = adapter._pin

    def pin_and_record() -> None:
        real()
        seen.append(os.sched_getaffinity(0))

    adapter._pin = pin_and_record  # type: ignore[method-assign]
    adapter.time(p, FAST)
    assert seen == [{min(before)}]
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize(
    "options,match",
    [
        ({"threads": -1}, "threads"),
        ({"graph_optimization": "max"}, "graph_optimization"),
        ({"affinity": [10_000]}, "affinity"),
        ({"turbo": True}, "unknown cpu-ort option"),
    ],
)
def test_bad_options(tmp_path: Path, options: dict[str, object], match: str) -> None:
    with pytest.raises(DeviceError, match=match):
        open_adapter(spec(tmp_path, **options))


def test_missing_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(MissingDependencyError, match=r"compofa-bench\[ort\]"):
        open_adapter(spec(tmp_path))


def test_thread_cpu_timer(tmp_path: Path) -> None:
    adapter = open_adapter(spec(tmp_path, timer="thread_cpu"))
    assert adapter.describe()["timer"] == "thread_cpu"
    p = adapter.prepare(Workload("tiny", tiny(), (1, 3, 32, 32), "tiny-cpu"))
    s = Stats.from_timing(adapter.time(p, FAST))
    assert s.count >= 10 and s.median_ms > 0
    with pytest.raises(DeviceError, match="threads = 1"):
        open_adapter(spec(tmp_path, timer="thread_cpu", threads=2))
    with pytest.raises(DeviceError, match="timer"):
        open_adapter(spec(tmp_path, timer="sundial"))
