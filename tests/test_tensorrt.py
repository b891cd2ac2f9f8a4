"""The ``tensorrt`` device. Engine cache keys, profile shapes, dtype mapping, option
validation, the fp16 ONNX graph and the error when TensorRT is absent run everywhere; building
and timing engines needs an NVIDIA GPU and TensorRT and is skipped elsewhere with the reason."""

from __future__ import annotations

import dataclasses
import importlib.util
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.adapters.tensorrt import (
    TRT_TO_TORCH_DTYPE,
    EngineKey,
    build_engine_file,
    check_network_input,
    export_onnx,
    network_flags,
    profile_shapes,
    torch_dtype,
    write_atomic,
)
from compofa_bench.devices import load_device
from compofa_bench.errors import DeviceError, ExportError, MissingDependencyError
from compofa_bench.measure import Protocol

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
# `pytest -m gpu` (benchmarks/gpu_check.sh) selects this module on a GPU host.
pytestmark = pytest.mark.gpu
HAS_CUDA = torch.cuda.is_available()
needs_trt = pytest.mark.skipif(
    not (HAS_TRT and HAS_CUDA),
    reason="needs an NVIDIA GPU and TensorRT 10+ (pip install 'compofa-bench[tensorrt]'); "
    f"here: CUDA {'yes' if HAS_CUDA else 'no'}, tensorrt {'yes' if HAS_TRT else 'no'}",
)


def _key(**kw) -> EngineKey:
    base = dict(
        workload_key="mbv3-w1-c1000-b64-random-r224-d2222-k3333-e3333",
        input_shape=(64, 3, 224, 224),
        precision="fp16",
        tf32=False,
        workspace_mib=4096,
        optimization_level=3,
        gpu_name="NVIDIA A100-SXM4-80GB",
        compute_capability="8.0",
        tensorrt_version="10.3.0",
    )
    base.update(kw)
    return EngineKey(**base)


# --------------------------------------------------------------------------- engine cache


def test_engine_key_changes_with_every_field() -> None:
    ref = _key()
    changes = {
        "workload_key": "mbv3-w1-c1000-b64-random-r192-d2222-k3333-e3333",
        "input_shape": (1, 3, 224, 224),
        "precision": "fp32",
        "tf32": True,
        "workspace_mib": 1024,
        "optimization_level": 5,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "compute_capability": "9.0",
        "tensorrt_version": "10.4.0",
    }
    assert set(changes) == {f.name for f in dataclasses.fields(EngineKey)}
    names = {ref.file_name()}
    for field, value in changes.items():
        other = _key(**{field: value})
        assert other.digest() != ref.digest(), field
        names.add(other.file_name())
    assert len(names) == len(changes) + 1
    assert _key().file_name() == ref.file_name()  # deterministic


def test_engine_file_name_is_readable_and_safe() -> None:
    name = _key().file_name()
    assert name.endswith(".engine")
    for part in (
        "r224-d2222",
        "b64x3x224x224",
        "fp16",
        "NVIDIA_A100-SXM4-80GB",
        "sm80",
        "trt10.3.0",
    ):
        assert part in name
    weird = _key(workload_key="../../etc/passwd key with spaces/" + "x" * 300).file_name()
    assert "/" not in weird and " " not in weird and len(weird) < 255


def test_write_atomic_leaves_no_temporaries(tmp_path) -> None:
    target = tmp_path / "a" / "b.engine"
    write_atomic(target, b"123")
    write_atomic(target, b"4567")
    assert target.read_bytes() == b"4567"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.engine"]


# --------------------------------------------------------------------------- shapes, types


def test_profile_is_the_measured_shape() -> None:
    lo, opt, hi = profile_shapes((64, 3, 224, 224))
    assert lo == opt == hi == (64, 3, 224, 224)
    # lut build times the classifier alone on an (N, C) input.
    assert profile_shapes((64, 1280))[1] == (64, 1280)
    for bad in [(), (0, 3, 224, 224), (1, 3, 224.0, 224), (True, 3, 8, 8)]:
        with pytest.raises(DeviceError, match="shape of positive integers"):
            profile_shapes(bad)


def test_network_input_compatibility() -> None:
    check_network_input((64, 3, 224, 224), (64, 3, 224, 224))
    check_network_input((-1, 3, 224, 224), (8, 3, 224, 224))
    with pytest.raises(ExportError, match=r"\(1, 3, 224, 224\) does not accept"):
        check_network_input((1, 3, 224, 224), (64, 3, 224, 224))
    with pytest.raises(ExportError):
        check_network_input((1, 3, 224), (1, 3, 224, 224))


def test_dtype_mapping_covers_io_types() -> None:
    assert torch_dtype(torch, "FLOAT") is torch.float32
    assert torch_dtype(torch, "HALF") is torch.float16
    assert torch_dtype(torch, "BF16") is torch.bfloat16
    assert all(isinstance(getattr(torch, v), torch.dtype) for v in TRT_TO_TORCH_DTYPE.values())
    with pytest.raises(DeviceError, match="FP8 has no torch equivalent"):
        torch_dtype(torch, "FP8")


def test_fp32_networks_are_built_without_extra_flags() -> None:
    assert network_flags(None, "fp32") == 0


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    ).eval()


def test_fp16_onnx_graph_is_fp16_and_computes_the_model(tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    net = _net()
    path, export_s = export_onnx(net, (2, 3, 16, 16), tmp_path / "m.onnx", "fp16")
    assert export_s >= 0
    graph = onnx.load(str(path)).graph
    fp16 = onnx.TensorProto.FLOAT16
    assert graph.input[0].type.tensor_type.elem_type == fp16
    assert graph.output[0].type.tensor_type.elem_type == fp16
    assert all(t.data_type == fp16 for t in graph.initializer if t.data_type in (1, 10))
    # The caller's module stays float32.
    assert all(p.dtype == torch.float32 for p in net.parameters())
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float16)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0].astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x).float()).numpy()
    assert np.allclose(got, ref, atol=2e-2, rtol=2e-2)


def test_fp32_onnx_graph_is_float32(tmp_path) -> None:
    import onnx

    path, _ = export_onnx(_net(), (1, 3, 8, 8), tmp_path / "m.onnx", "fp32")
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


# --------------------------------------------------------------------------- absent TensorRT


@pytest.mark.skipif(
    HAS_TRT, reason="tensorrt is installed; the missing-package error cannot be seen"
)
def test_open_without_tensorrt_is_a_missing_dependency_error() -> None:
    for name in ("tensorrt", "tensorrt-fp16"):
        with pytest.raises(MissingDependencyError) as info:
            open_adapter(load_device(name))
        msg = str(info.value)
        assert "pip install 'compofa-bench[tensorrt]'" in msg and "\n" not in msg
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        build_engine_file(_net(), (1, 3, 8, 8), "/nonexistent/x.engine")


def test_bad_option_is_reported_before_looking_for_tensorrt() -> None:
    spec = load_device("tensorrt").with_options(precision="int8")
    with pytest.raises(DeviceError, match="precision must be one of fp32, fp16"):
        open_adapter(spec)


# --------------------------------------------------------------------------- with TensorRT


FAST = Protocol(warmup_runs=3, warmup_min_s=0.0, min_runs=10, min_s=0.0, max_s=5.0, batch_size=4)


@needs_trt
@pytest.mark.parametrize("device", ["tensorrt", "tensorrt-fp16"])
def test_build_time_and_reuse_cached_engine(device: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPOFA_BENCH_CACHE", str(tmp_path))
    spec = load_device(device).with_options(telemetry="auto")
    w = Workload("tiny", _net(), (4, 3, 32, 32), "tiny-r32-b4")
    with open_adapter(spec) as a:
        first = a.prepare(w)
        assert "build_s" in first.prepare_s
        t = a.time(first, FAST)
        a.release(first)
        again = a.prepare(w)  # from the cache: no export, no build
        assert "build_s" not in again.prepare_s and again.artifact_path == first.artifact_path
        a.release(again)
        info = a.describe()
    assert len(t.samples_ms) >= FAST.min_runs
    assert all(math.isfinite(ms) and ms > 0 for ms in t.samples_ms)
    assert info["runtime"] == "tensorrt" and info["tensorrt"]
    engines = list((tmp_path / "tensorrt").glob("*.engine"))
    assert len(engines) == 1 and ("fp16" in engines[0].name) == (device == "tensorrt-fp16")


@needs_trt
def test_transfers_reported_apart(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPOFA_BENCH_CACHE", str(tmp_path))
    spec = load_device("tensorrt").with_options(include_transfers=True)
    with open_adapter(spec) as a:
        p = a.prepare(Workload("tiny", _net(), (4, 3, 32, 32), "tiny-r32-b4"))
        t = a.time(p, FAST)
    assert len(t.extra["h2d_ms"]) == len(t.samples_ms) == len(t.extra["d2h_ms"])


@needs_trt
def test_build_engine_file(tmp_path) -> None:
    out = build_engine_file(_net(), (1, 3, 32, 32), tmp_path / "net.engine")
    assert out.is_file() and out.stat().st_size > 0
