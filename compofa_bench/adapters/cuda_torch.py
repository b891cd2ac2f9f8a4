"""``cuda-torch``: PyTorch inference on an NVIDIA GPU, timed with CUDA events.

Why events and not a host clock: kernel launches return before the GPU has run anything, so
``time.time()`` around ``model(x)`` without a synchronize (CompOFA's GPU recipe) measures
launch overhead, not inference. Every iteration here is bracketed by events recorded on a
dedicated stream and read after a synchronize (see :class:`~.gpu_timing.CudaEventRunner`).

Options (``[options]`` of the device file, validated in :mod:`.gpu_options`): precision
``fp32|fp16|bf16``, ``channels_last``, ``cudnn_benchmark``, ``tf32``, ``cuda_graph`` (capture
one forward, time replays), ``compile`` (``torch.compile`` mode), ``include_transfers`` (time
host->device and device->host copies too, reported apart), ``telemetry`` (NVML snapshots),
``device_index``, ``oom_search``. The batch size is the protocol's (64 in the shipped files,
as the papers measure GPUs).
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from compofa_bench.adapters.base import Adapter, Prepared, Timing, Workload
from compofa_bench.adapters.gpu_options import CudaTorchOptions, parse_cuda_torch_options
from compofa_bench.adapters.gpu_telemetry import Telemetry
from compofa_bench.adapters.gpu_timing import (
    TorchFlags,
    cast_for_run,
    is_oom,
    largest_fitting_batch,
    oom_message,
    require_cuda,
    time_on_stream,
)
from compofa_bench.errors import DeviceError, MeasurementError, MissingDependencyError

if TYPE_CHECKING:
    import torch

    from compofa_bench.devices import DeviceSpec
    from compofa_bench.measure import Protocol

#: Eager forwards run on the capture stream before capturing a CUDA graph, so lazy
#: initialization (cuDNN autotuning, allocator pools) is not captured.
GRAPH_WARMUP_RUNS = 3


@dataclass
class _Loaded:
    """A workload ready on the GPU: ``step`` runs one inference on the stream."""

    model: Any
    x: torch.Tensor
    step: Any
    output: list[Any]
    graph: Any = None
    host_in: torch.Tensor | None = None
    host_out: torch.Tensor | None = None


def gpu_description(torch: Any, index: int) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 2),
        "multiprocessors": props.multi_processor_count,
        "cuda_runtime": torch.version.cuda,
        "uuid": _uuid(props),
    }


def _uuid(props: Any) -> str | None:
    u = getattr(props, "uuid", None)
    if u is None:
        return None
    text = str(u)
    return text if text.startswith("GPU-") else f"GPU-{text}"


class CudaTorchAdapter(Adapter):
    kind: ClassVar[str] = "cuda-torch"
    native_timing: ClassVar[bool] = True

    @classmethod
    def check_options(cls, spec: DeviceSpec) -> None:
        parse_cuda_torch_options(spec.options, spec.name)

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self.options: CudaTorchOptions = parse_cuda_torch_options(spec.options, spec.name)
        torch = require_cuda(self.options.device_index, f"device {spec.name}")
        self._torch = torch
        self.device = torch.device("cuda", self.options.device_index)
        props = torch.cuda.get_device_properties(self.device)
        if self.options.precision == "bf16" and (props.major, props.minor) < (8, 0):
            raise DeviceError(
                f"device {spec.name}: bf16 needs compute capability 8.0 or newer; "
                f"{props.name} has {props.major}.{props.minor}"
            )
        self.stream = torch.cuda.Stream(device=self.device)
        self.gpu_uuid = _uuid(props)
        self.telemetry = Telemetry.open(
            self.options.telemetry, self.gpu_uuid, self.options.device_index
        )

    # ------------------------------------------------------------------ protocol
    def describe(self) -> dict[str, Any]:
        torch = self._torch
        gpu = gpu_description(torch, self.options.device_index)
        # The card's serial identity is no part of "the same device", as the hostname is not
        # (fingerprint.py): two H200s with one driver and one setting resume each other's runs.
        # Each row still records which card it ran on (``gpu_uuid`` in its meta).
        del gpu["uuid"]
        out: dict[str, Any] = {
            "runtime": "torch",
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version(),
            **gpu,
            "precision": self.options.precision,
            "channels_last": self.options.channels_last,
            "cudnn_benchmark": self.options.cudnn_benchmark,
            "tf32": self.options.tf32,
            "cuda_graph": self.options.cuda_graph,
            "compile": self.options.compile_mode,
            "include_transfers": self.options.include_transfers,
            "timing": "cuda-events",
        }
        if self.telemetry is not None:
            snap = self.telemetry.snapshot()
            out["driver"] = snap.driver
        return out

    def prepare(self, workload: Workload) -> Prepared:
        try:
            loaded, prepare_s = self._load(workload, workload.input_shape)
        except Exception as exc:
            if not is_oom(exc):
                raise
            # Leave the except block first: the traceback's frames hold the tensors that did
            # not fit, and the halving search needs that memory back.
            loaded = None
        if loaded is None:
            raise self._oom_error(workload, workload.input_shape[0])
        return Prepared(workload=workload, handle=loaded, prepare_s=prepare_s)

    def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
        loaded: _Loaded = prepared.handle
        o = self.options
        timing = None
        try:
            with TorchFlags(o.cudnn_benchmark, o.tf32), self._torch.inference_mode():
                timing = time_on_stream(
                    prepared.workload.name,
                    loaded.step,
                    self.stream,
                    protocol,
                    self.telemetry,
                    o.drift,
                    h2d=self._h2d(loaded) if o.include_transfers else None,
                    d2h=self._d2h(loaded) if o.include_transfers else None,
                )
        except Exception as exc:
            if not is_oom(exc):
                raise
        if timing is None:
            del loaded  # the search below needs this memory back
            self.release(prepared)
            raise self._oom_error(prepared.workload, prepared.workload.input_shape[0])
        timing.extra["gpu_uuid"] = self.gpu_uuid
        return timing

    def release(self, prepared: Prepared) -> None:
        # Wait for our stream before dropping the tensors: the allocator may hand their
        # memory to another stream at once.
        self.stream.synchronize()
        prepared.handle = None
        self._free()

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
            self.telemetry = None

    # ------------------------------------------------------------------ internals
    def _load(self, workload: Workload, shape: tuple[int, ...]) -> tuple[_Loaded, dict[str, float]]:
        torch = self._torch
        o = self.options
        prepare_s: dict[str, float] = {}
        t0 = time.perf_counter()
        with TorchFlags(o.cudnn_benchmark, o.tf32), torch.inference_mode():
            model, x = cast_for_run(
                workload.module, tuple(shape), o.precision, o.channels_last, self.device
            )
            torch.cuda.synchronize(self.device)
            prepare_s["load_s"] = time.perf_counter() - t0
            fn = model
            if o.compile_mode is not None:
                fn = self._compile(model)
            output: list[Any] = [None]

            def eager_step() -> None:
                output[0] = fn(x)

            t1 = time.perf_counter()
            with torch.cuda.stream(self.stream):
                # The first call compiles (torch.compile) and autotunes (cudnn.benchmark); it
                # belongs to preparation, not to the warmup of the timed loop.
                eager_step()
            self.stream.synchronize()
            prepare_s["first_run_s"] = time.perf_counter() - t1
            loaded = _Loaded(model=fn, x=x, step=eager_step, output=output)
            if o.cuda_graph:
                t2 = time.perf_counter()
                loaded = self._capture(fn, x)
                prepare_s["capture_s"] = time.perf_counter() - t2
            if o.include_transfers:
                loaded.host_in = torch.empty(x.shape, dtype=x.dtype, device="cpu", pin_memory=True)
                loaded.host_in.copy_(x)
                out0 = loaded.output[0]
                loaded.host_out = torch.empty(
                    out0.shape, dtype=out0.dtype, device="cpu", pin_memory=True
                )
        return loaded, prepare_s

    def _compile(self, model: Any) -> Any:
        torch = self._torch
        # Every arch's forward shares one code object; without a reset dynamo would hit its
        # recompile limit after a few archs and silently fall back to eager.
        torch._dynamo.reset()
        try:
            return torch.compile(model, mode=self.options.compile_mode, dynamic=False)
        except ImportError as exc:  # triton missing or broken
            raise MissingDependencyError("triton", "gpu", f"torch.compile ({exc})") from None

    def _capture(self, fn: Any, x: torch.Tensor) -> _Loaded:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            for _ in range(GRAPH_WARMUP_RUNS):
                fn(x)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            static_out = fn(x)
        self.stream.synchronize()
        # Replays read x and write static_out in place: the step is one graph launch.
        return _Loaded(model=fn, x=x, step=graph.replay, output=[static_out], graph=graph)

    def _h2d(self, loaded: _Loaded) -> Any:
        x, host = loaded.x, loaded.host_in
        assert host is not None

        def copy_in() -> None:
            x.copy_(host, non_blocking=True)

        return copy_in

    def _d2h(self, loaded: _Loaded) -> Any:
        host, output = loaded.host_out, loaded.output
        assert host is not None

        def copy_out() -> None:
            host.copy_(output[0], non_blocking=True)

        return copy_out

    def _free(self) -> None:
        gc.collect()
        self._torch.cuda.synchronize(self.device)
        self._torch.cuda.empty_cache()

    def _oom_error(self, workload: Workload, batch: int) -> MeasurementError:
        self._free()
        fits: int | None = None
        if self.options.oom_search:

            def try_batch(b: int) -> None:
                loaded, _ = self._load(workload, (b, *workload.input_shape[1:]))
                del loaded
                self._free()

            fits = largest_fitting_batch(try_batch, batch, on_oom=self._free)
        props = self._torch.cuda.get_device_properties(self.device)
        where = f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
        return MeasurementError(oom_message(workload.name, batch, fits, where))
