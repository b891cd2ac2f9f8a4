"""GPU-device logic that runs without a GPU: options, the chunked timing rule, the OOM halving
search, precision/memory-format handling, backend flags, telemetry drift, and the errors when
CUDA / NVML are absent. The CUDA-only paths are in test_cuda_torch.py and test_tensorrt.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from compofa_bench.adapters.gpu_options import (
    DriftThresholds,
    parse_cuda_torch_options,
    parse_tensorrt_options,
)
from compofa_bench.adapters.gpu_telemetry import (
    GpuSnapshot,
    Telemetry,
    drift_warnings,
    telemetry_extra,
)
from compofa_bench.adapters.gpu_timing import (
    MAX_CHUNK,
    TorchFlags,
    cast_for_run,
    chunked_timed_loop,
    is_oom,
    largest_fitting_batch,
    oom_message,
    require_cuda,
)
from compofa_bench.devices import load_device
from compofa_bench.errors import DeviceError, MeasurementError
from compofa_bench.measure import Protocol

# --------------------------------------------------------------------------- options


def test_shipped_gpu_devices_parse_with_batch_64() -> None:
    for name, parse, precision in (
        ("cuda-torch", parse_cuda_torch_options, "fp32"),
        ("cuda-torch-fp16", parse_cuda_torch_options, "fp16"),
        ("tensorrt", parse_tensorrt_options, "fp32"),
        ("tensorrt-fp16", parse_tensorrt_options, "fp16"),
    ):
        spec = load_device(name)
        assert spec.adapter == name.removesuffix("-fp16")
        assert spec.protocol.batch_size == 64
        opts = parse(spec.options, spec.name)
        assert opts.precision == precision
        assert opts.tf32 is False


def test_cuda_torch_options_defaults_and_values() -> None:
    o = parse_cuda_torch_options({})
    assert (o.precision, o.cuda_graph, o.compile_mode, o.telemetry) == ("fp32", False, None, "auto")
    o = parse_cuda_torch_options(
        {"precision": "bf16", "channels_last": True, "compile": "max-autotune", "telemetry": False}
    )
    assert (o.precision, o.channels_last, o.compile_mode, o.telemetry) == (
        "bf16",
        True,
        "max-autotune",
        "off",
    )
    assert parse_cuda_torch_options({"compile": True}).compile_mode == "default"
    assert parse_cuda_torch_options({"telemetry": True}).telemetry == "on"
    d = parse_cuda_torch_options({"max_clock_change": 0.1, "max_temp_change_c": 2}).drift
    assert d == DriftThresholds(0.1, 2.0)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"precison": "fp16"}, "unknown option(s) precison"),
        ({"precision": "fp8"}, "precision must be one of fp32, fp16, bf16"),
        ({"channels_last": "yes"}, "channels_last must be true or false"),
        ({"device_index": -1}, "device_index must be >= 0"),
        ({"device_index": True}, "device_index must be an integer"),
        ({"compile": "fast"}, "compile must be one of"),
        ({"cuda_graph": True, "compile": "default"}, "cannot be combined"),
        ({"tf32": True, "precision": "fp16"}, "tf32 only applies"),
        ({"max_clock_change": -1}, "max_clock_change must be a number >= 0"),
        ({"telemetry": "sometimes"}, "telemetry must be one of"),
    ],
)
def test_cuda_torch_options_rejected(options: dict, fragment: str) -> None:
    with pytest.raises(DeviceError, match="device d: ") as info:
        parse_cuda_torch_options(options, "d")
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"precision": "bf16"}, "precision must be one of fp32, fp16"),
        ({"optimization_level": 6}, "optimization_level must be in [0, 5]"),
        ({"workspace_mib": 1}, "workspace_mib must be >= 16"),
        ({"cache_dir": 3}, "cache_dir must be a path string"),
        ({"dynamic_batch": True}, "unknown option(s) dynamic_batch"),
        ({"cuda_graph": True}, "unknown option(s) cuda_graph"),
    ],
)
def test_tensorrt_options_rejected(options: dict, fragment: str) -> None:
    with pytest.raises(DeviceError) as info:
        parse_tensorrt_options(options, "t")
    assert fragment in str(info.value)


def test_tensorrt_cache_dir_and_parity_tolerance(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COMPOFA_BENCH_CACHE", str(tmp_path / "c"))
    assert parse_tensorrt_options({}).effective_cache_dir() == tmp_path / "c" / "tensorrt"
    o = parse_tensorrt_options({"cache_dir": str(tmp_path / "e")})
    assert o.effective_cache_dir() == tmp_path / "e"
    # fp16 kernels need a looser parity tolerance than strict fp32 ones.
    fp32 = parse_tensorrt_options({}).effective_parity_atol()
    fp16 = parse_tensorrt_options({"precision": "fp16"}).effective_parity_atol()
    assert fp16 > fp32
    assert parse_tensorrt_options({"parity_atol": 0.5}).effective_parity_atol() == 0.5


# --------------------------------------------------------------------------- timing rule


class SimulatedGpu:
    """A run_chunk whose 'GPU' takes ``run_ms`` per iteration and advances a host clock by
    that much per chunk (plus a fixed sync cost), recording the chunk sizes asked for."""

    def __init__(self, run_ms: float, sync_ms: float = 0.05) -> None:
        self.now = 0.0
        self.run_ms = run_ms
        self.sync_ms = sync_ms
        self.chunks: list[int] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, n: int) -> list[float]:
        self.chunks.append(n)
        self.now += (n * self.run_ms + self.sync_ms) / 1e3
        return [self.run_ms] * n


def _protocol(**kw) -> Protocol:
    base = dict(warmup_runs=5, warmup_min_s=0.0, min_runs=20, min_s=0.0, max_s=10.0)
    base.update(kw)
    return Protocol(**base)


def test_loop_meets_min_runs_and_min_seconds() -> None:
    gpu = SimulatedGpu(run_ms=2.0)
    res = chunked_timed_loop(gpu, _protocol(warmup_runs=5, min_runs=20, min_s=0.5), gpu.clock)
    assert len(res.warmup_ms) >= 5
    # 0.5 s of 2 ms runs needs 250 runs: min_s dominates min_runs here.
    assert len(res.samples_ms) >= 250
    assert res.timed_s >= 0.5
    # Chunks are sized to what is still needed, so the overshoot is below one chunk.
    assert len(res.samples_ms) < 250 + MAX_CHUNK
    assert max(gpu.chunks) <= MAX_CHUNK


def test_loop_min_runs_dominates_for_slow_models() -> None:
    gpu = SimulatedGpu(run_ms=100.0)
    res = chunked_timed_loop(gpu, _protocol(warmup_runs=2, min_runs=7, min_s=0.1), gpu.clock)
    assert len(res.warmup_ms) == 2
    assert len(res.samples_ms) == 7


def test_loop_stops_at_max_s_before_min_runs() -> None:
    gpu = SimulatedGpu(run_ms=400.0)
    res = chunked_timed_loop(
        gpu, _protocol(warmup_runs=1, min_runs=100, min_s=0.0, max_s=2.0), gpu.clock
    )
    assert 1 <= len(res.samples_ms) < 100
    # Stopped within one run of the cap.
    assert 2.0 <= res.timed_s <= 2.0 + 0.4 + 0.01


def test_loop_warmup_runs_are_not_cut_by_max_s() -> None:
    # measure.timed_loop's rule: the warmup count is mandatory, only its seconds are capped.
    gpu = SimulatedGpu(run_ms=1000.0)
    res = chunked_timed_loop(
        gpu, _protocol(warmup_runs=4, warmup_min_s=30.0, min_runs=1, max_s=2.0), gpu.clock
    )
    assert len(res.warmup_ms) == 4
    assert len(res.samples_ms) >= 1


def test_loop_warmup_by_seconds_and_no_warmup() -> None:
    gpu = SimulatedGpu(run_ms=1.0)
    res = chunked_timed_loop(gpu, _protocol(warmup_runs=1, warmup_min_s=0.3), gpu.clock)
    assert res.warmup_s >= 0.3
    assert len(res.warmup_ms) >= 250
    gpu = SimulatedGpu(run_ms=1.0)
    res = chunked_timed_loop(gpu, _protocol(warmup_runs=0, warmup_min_s=0.0), gpu.clock)
    assert res.warmup_ms == []


def test_after_warmup_hook_runs_once_between_the_phases() -> None:
    gpu = SimulatedGpu(run_ms=3.0)
    seen: list[int] = []
    res = chunked_timed_loop(
        gpu,
        _protocol(warmup_runs=7, min_runs=11),
        gpu.clock,
        after_warmup=lambda: seen.append(sum(gpu.chunks)),
    )
    assert seen == [len(res.warmup_ms)]
    assert sum(gpu.chunks) == len(res.warmup_ms) + len(res.samples_ms)


def test_loop_rejects_a_runner_that_loses_samples() -> None:
    with pytest.raises(MeasurementError, match="asked for 1 runs, got 0"):
        chunked_timed_loop(lambda n: [], _protocol())


def test_loop_with_the_real_clock_on_cpu_work() -> None:
    # The rule with time.perf_counter and real (CPU) work: every run is kept.
    layer = nn.Conv2d(3, 8, 3)
    x = torch.randn(1, 3, 16, 16)

    def run_chunk(n: int) -> list[float]:
        import time

        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            layer(x)
            out.append((time.perf_counter() - t0) * 1e3)
        return out

    res = chunked_timed_loop(run_chunk, _protocol(warmup_runs=3, min_runs=10, min_s=0.02))
    assert len(res.warmup_ms) >= 3 and len(res.samples_ms) >= 10
    assert all(ms > 0 for ms in res.samples_ms)


# --------------------------------------------------------------------------- out of memory


class FakeMemory:
    """try_batch for the halving search: batches above ``capacity`` raise the same error
    type CUDA raises (torch.OutOfMemoryError)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.tried: list[int] = []
        self.freed = 0

    def __call__(self, b: int) -> None:
        self.tried.append(b)
        if b > self.capacity:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {b} GiB")

    def free(self) -> None:
        self.freed += 1


@pytest.mark.parametrize(
    ("failed", "capacity", "expected"),
    [(64, 20, 16), (64, 32, 32), (64, 0, 0), (256, 1, 1), (100, 30, 25), (1, 0, 0)],
)
def test_largest_fitting_batch_by_halving(failed: int, capacity: int, expected: int) -> None:
    mem = FakeMemory(capacity)
    assert largest_fitting_batch(mem, failed, on_oom=mem.free) == expected
    # Each try is half the previous one, starting from half the batch that failed.
    assert mem.tried == [failed // 2**i for i in range(1, len(mem.tried) + 1)]
    assert mem.freed == len([b for b in mem.tried if b > capacity])


def test_largest_fitting_batch_lets_other_errors_through() -> None:
    def broken(b: int) -> None:
        raise ValueError("shape mismatch")

    with pytest.raises(ValueError, match="shape mismatch"):
        largest_fitting_batch(broken, 64)


def test_is_oom_recognizes_cuda_allocation_failures() -> None:
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_oom(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_oom(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_oom(ValueError("CUDA out of memory"))


def test_oom_message_names_the_batch_that_fits() -> None:
    msg = oom_message("r224-d44444", 64, 16, "NVIDIA T4 (15.0 GiB)")
    assert msg.startswith("r224-d44444: batch 64 does not fit in the memory of NVIDIA T4")
    assert "largest batch that fits is 16" in msg and "--batch-size 16" in msg
    assert "\n" not in msg
    assert "not even batch 1" in oom_message("a", 8, 0, "gpu")


# --------------------------------------------------------------------------- precision


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cast_for_run_applies_precision_and_layout(precision: str, channels_last: bool) -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model, x = cast_for_run(net, (2, 3, 8, 8), precision, channels_last, "cpu")
    want = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert x.dtype == want and x.shape == (2, 3, 8, 8)
    assert all(p.dtype == want for p in model.parameters())
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    # The workload's own module is untouched (float32, same values, still usable).
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        ref = net(x.float())
        out = model(x).float()
    tol = {"fp32": 1e-5, "fp16": 2e-2, "bf16": 1e-1}[precision]
    assert torch.allclose(out, ref, atol=tol, rtol=tol)


def test_cast_for_run_is_seeded_and_handles_2d_inputs() -> None:
    _, a = cast_for_run(_net(), (1, 3, 4, 4), "fp32", False, "cpu", seed=3)
    _, b = cast_for_run(_net(), (1, 3, 4, 4), "fp32", False, "cpu", seed=3)
    assert torch.equal(a, b)
    # A classifier timed alone (lut build) has an (N, C) input: channels_last is moot there.
    head = nn.Linear(3, 4)
    model, x = cast_for_run(head, (5, 3), "fp16", True, "cpu")
    assert x.shape == (5, 3) and x.dtype == torch.float16 and x.is_contiguous()
    assert model.weight.dtype == torch.float16


def test_torch_flags_are_restored_even_on_error() -> None:
    b = torch.backends
    saved = (b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
    wanted = (not saved[0], not saved[1])
    with pytest.raises(RuntimeError, match="boom"), TorchFlags(*wanted):
        assert (b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == (
            wanted[0],
            wanted[1],
            wanted[1],
        )
        raise RuntimeError("boom")
    assert (b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32) == saved


# --------------------------------------------------------------------------- telemetry


def _snap(**kw) -> GpuSnapshot:
    base = dict(
        name="NVIDIA A100",
        driver="550.54",
        sm_clock_mhz=1410,
        mem_clock_mhz=1215,
        temperature_c=40.0,
        power_w=90.0,
    )
    base.update(kw)
    return GpuSnapshot(**base)


def test_drift_quiet_when_state_holds() -> None:
    assert (
        drift_warnings(_snap(), _snap(sm_clock_mhz=1400, temperature_c=44.0), DriftThresholds())
        == []
    )


def test_drift_flags_clock_and_temperature_moves() -> None:
    w = drift_warnings(
        _snap(), _snap(sm_clock_mhz=1100, temperature_c=52.0), DriftThresholds(0.05, 5.0)
    )
    assert len(w) == 2
    assert "SM clock moved 1410 -> 1100 MHz" in w[0]
    assert "temperature moved 40 -> 52 C" in w[1]
    # A clock that rises (boost kicking in) is a change too; thresholds are configurable.
    assert drift_warnings(_snap(), _snap(mem_clock_mhz=1593), DriftThresholds(0.05, 5.0))
    assert not drift_warnings(_snap(), _snap(mem_clock_mhz=1593), DriftThresholds(0.5, 5.0))


def test_drift_ignores_unreadable_fields() -> None:
    unknown = _snap(sm_clock_mhz=None, mem_clock_mhz=None, temperature_c=None)
    assert drift_warnings(unknown, _snap(), DriftThresholds()) == []
    assert drift_warnings(_snap(), unknown, DriftThresholds()) == []


def test_telemetry_extra_carries_both_snapshots() -> None:
    before, after = _snap(), _snap(temperature_c=60.0)
    extra = telemetry_extra(before, after, DriftThresholds())
    assert extra["telemetry"]["before"]["temperature_c"] == 40.0
    assert extra["telemetry"]["after"]["temperature_c"] == 60.0
    assert len(extra["warnings"]) == 1
    assert telemetry_extra(None, None, DriftThresholds()) == {}


def _nvml_usable() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


def test_telemetry_off_and_auto_without_nvml() -> None:
    assert Telemetry.open("off") is None
    if _nvml_usable():
        pytest.skip("NVML works on this machine; the no-NVML paths cannot be observed")
    assert Telemetry.open("auto") is None


def test_telemetry_on_without_nvml_is_one_clear_error() -> None:
    if _nvml_usable():
        pytest.skip("NVML works on this machine; the no-NVML error cannot be observed")
    try:
        import pynvml  # noqa: F401
    except ImportError:
        from compofa_bench.errors import MissingDependencyError

        with pytest.raises(MissingDependencyError, match=r"compofa-bench\[gpu\]"):
            Telemetry.open("on")
        return
    with pytest.raises(DeviceError, match="NVML is not usable here") as info:
        Telemetry.open("on")
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- absent CUDA


def test_require_cuda_error_without_a_gpu() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here; the no-GPU error cannot be observed")
    with pytest.raises(
        DeviceError, match=r"device x needs an NVIDIA GPU.*is_available\(\) is False"
    ):
        require_cuda(0, "device x")


@settings(max_examples=60, deadline=None)
@given(
    run_s=st.sampled_from([0.0625, 0.125, 0.25, 0.5, 1.0, 2.0]),
    warmup_runs=st.integers(0, 30),
    warmup_min_s=st.sampled_from([0.0, 0.5, 1.0, 4.0]),
    min_runs=st.integers(1, 200),
    min_s=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
    extra_s=st.sampled_from([0.0, 1.0, 8.0]),
)
def test_chunked_loop_takes_as_many_runs_as_measure_timed_loop(
    run_s, warmup_runs, warmup_min_s, min_runs, min_s, extra_s
) -> None:
    # The CUDA loop must stop where the project-wide rule (measure.timed_loop) stops. Run
    # times are powers of two so both clocks add up exactly.
    from compofa_bench.measure import timed_loop

    protocol = Protocol(
        warmup_runs=warmup_runs,
        warmup_min_s=warmup_min_s,
        min_runs=min_runs,
        min_s=min_s,
        max_s=min_s + extra_s + 0.5,
    )
    now = [0.0]

    def one_run() -> None:
        now[0] += run_s

    ref = timed_loop(one_run, protocol, clock=lambda: now[0])
    gpu = SimulatedGpu(run_ms=run_s * 1e3, sync_ms=0.0)
    got = chunked_timed_loop(gpu, protocol, gpu.clock)
    assert len(got.warmup_ms) == len(ref.warmup_ms)
    assert len(got.samples_ms) == len(ref.samples_ms)
