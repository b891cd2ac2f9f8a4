"""The ``cuda-torch`` device. Without a GPU only the refusal paths run; everything else is
skipped with the reason (this project's CI has no GPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.cli import main
from compofa_bench.devices import load_device
from compofa_bench.errors import DeviceError, MeasurementError
from compofa_bench.measure import Protocol

# `pytest -m gpu` (benchmarks/gpu_check.sh) selects this module on a GPU host.
pytestmark = pytest.mark.gpu
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs an NVIDIA GPU with CUDA (none here)")


def _spec(**options):
    return load_device("cuda-torch").with_options(telemetry="auto", **options)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, groups=16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    ).eval()


def _workload(batch: int = 4, res: int = 32) -> Workload:
    return Workload("tiny", _net(), (batch, 3, res, res), f"tiny-b{batch}-r{res}")


FAST = Protocol(warmup_runs=3, warmup_min_s=0.0, min_runs=10, min_s=0.0, max_s=5.0, batch_size=4)


# --------------------------------------------------------------------------- no GPU


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available; the no-GPU error cannot be observed")
def test_open_without_gpu_is_one_line_device_error() -> None:
    with pytest.raises(DeviceError) as info:
        open_adapter(load_device("cuda-torch"))
    msg = str(info.value)
    assert "needs an NVIDIA GPU" in msg and "torch.cuda.is_available() is False" in msg
    assert "\n" not in msg


def test_bad_option_is_reported_before_looking_for_a_gpu() -> None:
    with pytest.raises(DeviceError, match="unknown option"):
        open_adapter(_spec(cuda_grpah=True))


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available; the no-GPU error cannot be observed")
def test_cli_profile_on_cuda_without_gpu_exits_2(capsys) -> None:
    from compofa_bench.cli import COMMAND_MODULES

    if "profile" not in COMMAND_MODULES:
        pytest.skip("the profile command is not registered yet")
    code = main(["profile", "--device", "cuda-torch", "--space", "compofa", "--sample", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "NVIDIA GPU" in err[0]


# --------------------------------------------------------------------------- with a GPU


@needs_gpu
def test_eager_timing_with_events() -> None:
    with open_adapter(_spec()) as a:
        prepared = a.prepare(_workload())
        timing = a.time(prepared, FAST)
        a.release(prepared)
        info = a.describe()
    assert len(timing.samples_ms) >= FAST.min_runs
    assert len(timing.warmup_ms) >= FAST.warmup_runs
    assert all(math.isfinite(ms) and ms > 0 for ms in timing.samples_ms)
    assert timing.extra["timing"] == "cuda-events"
    assert info["runtime"] == "torch" and info["gpu"]


@needs_gpu
def test_events_see_gpu_work_that_the_host_does_not_wait_for() -> None:
    # A matmul chain big enough to take milliseconds: event time must grow with the work,
    # which an unsynchronized host clock around the launch would not show.
    class Chain(nn.Module):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(self.n):
                x = torch.tanh(x @ x)
            return x

    proto = Protocol(warmup_runs=2, warmup_min_s=0, min_runs=5, min_s=0, max_s=5, batch_size=1)
    medians = []
    with open_adapter(_spec(cudnn_benchmark=False)) as a:
        for n in (2, 16):
            p = a.prepare(Workload(f"chain{n}", Chain(n), (1, 1, 1024, 1024), f"chain{n}"))
            t = a.time(p, proto)
            a.release(p)
            medians.append(sorted(t.samples_ms)[len(t.samples_ms) // 2])
    assert medians[1] > 4 * medians[0]


@needs_gpu
def test_cuda_graph_replays_the_eager_computation() -> None:
    w = _workload()
    with open_adapter(_spec()) as a:
        eager = a.prepare(w)
        with torch.inference_mode():
            eager.handle.step()
        torch.cuda.synchronize()
        ref = eager.handle.output[0].float().cpu()
    with open_adapter(_spec(cuda_graph=True)) as a:
        graphed = a.prepare(w)
        assert graphed.handle.graph is not None and "capture_s" in graphed.prepare_s
        graphed.handle.step()  # same seeded input; the replay writes the static output
        torch.cuda.synchronize()
        out = graphed.handle.output[0].float().cpu()
        timing = a.time(graphed, FAST)
    assert torch.allclose(out, ref, atol=1e-4)
    assert len(timing.samples_ms) >= FAST.min_runs


@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_and_channels_last(precision: str) -> None:
    major, _ = torch.cuda.get_device_capability()
    if precision == "bf16" and major < 8:
        pytest.skip("bf16 needs compute capability 8.0")
    with open_adapter(_spec(precision=precision, channels_last=True)) as a:
        p = a.prepare(_workload())
        x = p.handle.x
        assert x.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        assert x.is_contiguous(memory_format=torch.channels_last)
        t = a.time(p, FAST)
    assert len(t.samples_ms) >= FAST.min_runs


@needs_gpu
def test_transfers_are_timed_apart_from_compute() -> None:
    with open_adapter(_spec(include_transfers=True)) as a:
        p = a.prepare(_workload(batch=8, res=64))
        t = a.time(p, FAST)
    n = len(t.samples_ms)
    assert len(t.extra["h2d_ms"]) == n and len(t.extra["d2h_ms"]) == n
    assert all(ms > 0 for ms in t.extra["h2d_ms"])


@needs_gpu
def test_out_of_memory_names_the_largest_batch_that_fits() -> None:
    # The allocator is capped at ~2 GiB for this test: on a 140 GB card the halving search
    # otherwise runs forwards of batches in the millions, tens of seconds each (an H200 run
    # hit its time limit here). The cap raises the same torch.OutOfMemoryError.
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = min(1.0, 2 * 2**30 / total)
    cap = fraction * total
    per_image = 3 * 32 * 32 * 4
    batch = 1 << math.ceil(math.log2(2 * cap / per_image))  # input alone: twice the cap
    torch.cuda.set_per_process_memory_fraction(fraction, 0)
    try:
        with open_adapter(_spec()) as a, pytest.raises(MeasurementError) as info:
            a.prepare(_workload(batch=batch))
        msg = str(info.value)
        assert f"batch {batch} does not fit" in msg
        assert "largest batch that fits is" in msg
        fits = int(msg.split("largest batch that fits is ")[1].split()[0])
        assert 1 <= fits < batch and batch % fits == 0
        # The batch it names really fits.
        with open_adapter(_spec(oom_search=False)) as a:
            p = a.prepare(_workload(batch=fits))
            a.release(p)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


@needs_gpu
def test_fingerprint_names_the_gpu_model_and_each_row_the_card() -> None:
    # Two cards of one model, driver and setting are one device (resume works across them);
    # which card ran a row is still recorded with the row.
    with open_adapter(_spec()) as a:
        desc = a.describe()
        p = a.prepare(_workload())
        t = a.time(p, FAST)
    assert "uuid" not in desc and desc["gpu"] == torch.cuda.get_device_name(0)
    assert str(t.extra["gpu_uuid"]).startswith("GPU-")


@needs_gpu
def test_telemetry_snapshots_when_nvml_is_present() -> None:
    pytest.importorskip("pynvml", reason="nvidia-ml-py (the gpu extra) is not installed")
    with open_adapter(_spec(telemetry="on")) as a:
        p = a.prepare(_workload())
        t = a.time(p, FAST)
    snap = t.extra["telemetry"]
    assert snap["before"]["name"] and snap["after"]["wall_time"] >= snap["before"]["wall_time"]
    assert isinstance(t.extra["warnings"], list)


@needs_gpu
@pytest.mark.slow
def test_torch_compile_mode() -> None:
    with open_adapter(_spec(compile="default")) as a:
        p = a.prepare(_workload())
        t = a.time(p, FAST)
    assert len(t.samples_ms) >= FAST.min_runs


@needs_gpu
def test_profile_archs_on_cuda_torch(tmp_path) -> None:
    from compofa_bench import spaces
    from compofa_bench.profile import profile_archs
    from compofa_bench.store import ResultStore

    space = spaces.get("compofa")
    archs = [space.smallest(160), space.largest(160)]
    with ResultStore(tmp_path / "r.db") as store:
        summaries = profile_archs(
            archs,
            [_spec()],
            store,
            space="compofa",
            protocol_overrides={"batch_size": 8, "min_runs": 5, "min_s": 0.0, "warmup_min_s": 0.0},
        )
        assert [o.status for o in summaries[0].outcomes] == ["ok", "ok"]
        assert store.count() == 2


@pytest.mark.skipif(HAS_CUDA, reason="CUDA is available; the no-GPU error cannot be observed")
def test_profile_archs_fails_before_any_work_without_gpu(tmp_path) -> None:
    from compofa_bench import spaces
    from compofa_bench.profile import profile_archs
    from compofa_bench.store import ResultStore

    built = []
    with ResultStore(tmp_path / "r.db") as store, pytest.raises(DeviceError, match="NVIDIA GPU"):
        profile_archs(
            [spaces.get("compofa").smallest(160)],
            [_spec()],
            store,
            build_module=lambda arch: built.append(arch),
        )
    assert built == []


@needs_gpu
def test_lut_build_on_cuda_torch(tmp_path) -> None:
    # Every layer kind, the (N, C) classifier included, goes through the adapter.
    from compofa_bench import spaces
    from compofa_bench.lut import LatencyTable
    from compofa_bench.lut.build import build_table

    space = spaces.get("compofa", (128,))
    spec = _spec().with_protocol(FAST.replace(batch_size=8))
    table, _ = build_table(
        spec, space, batch_size=8, store_path=tmp_path / "r.db", out=tmp_path / "t.json",
    )  # fmt: skip
    archs = space.sample_many(5, np.random.default_rng(0))
    predicted = LatencyTable.load(tmp_path / "t.json").predict_ms(archs)
    assert np.all(np.isfinite(predicted)) and np.all(predicted > 0)
    assert np.allclose(table.predict_ms(archs), predicted)  # the file holds what was built
