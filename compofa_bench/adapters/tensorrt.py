"""``tensorrt``: TensorRT engines built from ONNX, timed with CUDA events.

Flow per workload: ONNX export (fp32: the graph every device exports, cached by
:func:`compofa_bench.convert.cached_onnx`; fp16: an fp16 graph built strongly typed, see
:func:`network_flags`) -> engine build through the TensorRT 10/11 Python API with one
optimization profile for the workload's batch -> serialized engine cached on disk ->
execution context whose I/O tensors are torch CUDA tensors (``set_tensor_address``) ->
``execute_async_v3`` on a dedicated torch stream, bracketed by CUDA events.

I/O buffers are torch tensors, so pycuda (and cuda-python) are not needed: torch already owns
a CUDA context, an allocator, pinned host memory and streams; a second CUDA binding would add
a dependency and a second context for nothing.

Engines are cached under ``<cache>/tensorrt/`` (see :func:`engine_file_name`): the key holds
the workload's cache key (arch and resolution), the input shape (batch), the precision and
every builder setting, the GPU model and compute capability, and the TensorRT version. An
engine is only valid for the GPU model and TensorRT version that built it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from compofa_bench.adapters.base import Adapter, Prepared, Timing, Workload
from compofa_bench.adapters.cuda_torch import gpu_description
from compofa_bench.adapters.gpu_options import TensorRTOptions, parse_tensorrt_options
from compofa_bench.adapters.gpu_telemetry import Telemetry
from compofa_bench.adapters.gpu_timing import require_cuda, time_on_stream
from compofa_bench.errors import DeviceError, ExportError, MissingDependencyError
from compofa_bench.fileio import atomic_write_bytes

if TYPE_CHECKING:
    import torch

    from compofa_bench.devices import DeviceSpec
    from compofa_bench.measure import Protocol

MIN_TENSORRT_MAJOR = 10

#: TensorRT DataType names -> torch dtype names (by name, so the table is testable without
#: TensorRT installed).
TRT_TO_TORCH_DTYPE: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def import_tensorrt() -> Any:
    """``tensorrt`` itself, or a one-line error saying how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(
            "tensorrt", "tensorrt", "the tensorrt device (NVIDIA GPU + TensorRT 10 or newer)"
        ) from None
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise DeviceError(
            f"the tensorrt device needs TensorRT >= {MIN_TENSORRT_MAJOR} (its execute_async_v3 "
            f"/ set_tensor_address API); found {trt.__version__}"
        )
    return trt


def torch_dtype(torch: Any, trt_dtype_name: str) -> Any:
    try:
        return getattr(torch, TRT_TO_TORCH_DTYPE[trt_dtype_name])
    except KeyError:
        raise DeviceError(
            f"TensorRT tensor type {trt_dtype_name} has no torch equivalent"
        ) from None


# --------------------------------------------------------------------------- pure helpers
def profile_shapes(
    input_shape: tuple[int, ...],
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) of the optimization profile for ``input_shape`` (NCHW, or (N, C) for a
    classifier layer timed alone by ``lut build``).

    All three are the measured shape: the batch is fixed by the protocol, and an engine
    tuned for exactly that shape is what the papers' batch-64 numbers describe. A wider
    profile would let TensorRT pick kernels that are worse at the measured batch.
    """
    shape = tuple(input_shape)
    if not shape or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape):
        raise DeviceError(
            f"a TensorRT profile needs a shape of positive integers, got {input_shape!r}"
        )
    return shape, shape, shape


def check_network_input(network_shape: tuple[int, ...], input_shape: tuple[int, ...]) -> None:
    """Raise ExportError when the ONNX graph's input cannot take ``input_shape`` (-1: free)."""
    ok = len(network_shape) == len(input_shape) and all(
        n in (-1, s) for n, s in zip(network_shape, input_shape, strict=True)
    )
    if not ok:
        raise ExportError(
            f"the ONNX graph's input shape {tuple(network_shape)} does not accept the workload's "
            f"{tuple(input_shape)}"
        )


def _slug(text: str, limit: int = 80) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")
    return s[:limit] or "x"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on. Two workloads share an engine file only when every
    field is equal."""

    workload_key: str
    input_shape: tuple[int, ...]
    precision: str
    tf32: bool
    workspace_mib: int
    optimization_level: int
    gpu_name: str
    compute_capability: str
    tensorrt_version: str

    def digest(self) -> str:
        text = json.dumps(
            [
                self.workload_key,
                list(self.input_shape),
                self.precision,
                self.tf32,
                self.workspace_mib,
                self.optimization_level,
                self.gpu_name,
                self.compute_capability,
                self.tensorrt_version,
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def file_name(self) -> str:
        """Readable and unique: ``<workload>__b64x3x224x224__fp16__<gpu>-sm90__trt10.3__<hash>``.
        The hash covers every field (the readable parts are for people and may be cut)."""
        shape = "x".join(str(d) for d in self.input_shape)
        gpu = _slug(self.gpu_name, 40)
        cc = self.compute_capability.replace(".", "")
        return (
            f"{_slug(self.workload_key)}__b{shape}__{self.precision}__{gpu}-sm{cc}"
            f"__trt{_slug(self.tensorrt_version, 20)}__{self.digest()}.engine"
        )


def engine_file_name(key: EngineKey) -> str:
    return key.file_name()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def network_flags(trt: Any, precision: str) -> int:
    """Network creation flags: fp16 networks are built strongly typed from an fp16 ONNX graph.

    TensorRT 11 dropped the weakly-typed ``BuilderFlag.FP16`` (strong typing is always on);
    TensorRT 10 has both. A strongly typed fp16 graph works on both and runs every layer in
    fp16, as the ``cuda-torch`` fp16 device does, so the two devices measure the same thing.
    """
    if precision == "fp32":
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def export_onnx(
    module: Any, input_shape: tuple[int, ...], path: Path, precision: str
) -> tuple[Path, float]:
    """The ONNX graph TensorRT builds from: float32 as exported for every device, or a
    float16 copy (weights, input and output in fp16) for strongly typed fp16 engines."""
    import copy
    import warnings

    import torch

    from compofa_bench.convert import to_onnx

    t0 = time.perf_counter()
    if precision == "fp32":
        return to_onnx(module, input_shape, path), time.perf_counter() - t0
    half = copy.deepcopy(module).eval().half()
    dummy = torch.zeros(*input_shape, dtype=torch.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                half,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
    except Exception as exc:
        raise ExportError(f"fp16 ONNX export of a {type(module).__name__} failed: {exc}") from exc
    return path, time.perf_counter() - t0


def build_serialized_engine(
    trt: Any, logger: Any, onnx_path: Path, input_shape: tuple[int, ...], o: TensorRTOptions
) -> bytes:
    """ONNX file -> serialized TensorRT engine with one optimization profile for
    ``input_shape`` and ``o``'s precision and builder settings."""
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, o.precision))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, o.workspace_mib << 20)
    config.builder_optimization_level = o.optimization_level
    if not o.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_shapes(input_shape)
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        check_network_input(tuple(tensor.shape), input_shape)
        profile.set_shape(tensor.name, lo, opt, hi)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"TensorRT failed to build an engine from {onnx_path} "
            f"({o.precision}, workspace {o.workspace_mib} MiB); see the log above"
        )
    return bytes(serialized)


def build_engine_file(
    module: Any,
    input_shape: tuple[int, ...],
    out_path: str | Path,
    options: TensorRTOptions | None = None,
) -> Path:
    """Export ``module`` to a standalone TensorRT engine file (``search --export tensorrt``).

    The engine only runs on the GPU model and TensorRT version that built it: build it on the
    deployment machine. Needs CUDA and TensorRT here, like the device.
    """
    o = options or TensorRTOptions()
    trt = import_tensorrt()
    torch = require_cuda(o.device_index, "building a TensorRT engine")
    torch.cuda.set_device(o.device_index)
    logger = trt.Logger(trt.Logger.WARNING)
    out = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, _ = export_onnx(
            module, tuple(input_shape), Path(tmp) / "model.onnx", o.precision
        )
        data = build_serialized_engine(trt, logger, onnx_path, tuple(input_shape), o)
    write_atomic(out, data)
    return out


# --------------------------------------------------------------------------- adapter
@dataclass
class _Engine:
    engine: Any
    context: Any
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    host_in: dict[str, torch.Tensor]
    host_out: dict[str, torch.Tensor]
    step: Any


class TensorRTAdapter(Adapter):
    kind: ClassVar[str] = "tensorrt"
    native_timing: ClassVar[bool] = True

    @classmethod
    def check_options(cls, spec: DeviceSpec) -> None:
        parse_tensorrt_options(spec.options, spec.name)

    def __init__(self, spec: DeviceSpec) -> None:
        super().__init__(spec)
        self.options: TensorRTOptions = parse_tensorrt_options(spec.options, spec.name)
        self.trt = import_tensorrt()
        torch = require_cuda(self.options.device_index, f"device {spec.name}")
        self._torch = torch
        self.device = torch.device("cuda", self.options.device_index)
        # TensorRT builds and deserializes on the current CUDA device; make it ours.
        torch.cuda.set_device(self.device)
        self.gpu = gpu_description(torch, self.options.device_index)
        self.stream = torch.cuda.Stream(device=self.device)
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)
        self.telemetry = Telemetry.open(
            self.options.telemetry, self.gpu.get("uuid"), self.options.device_index
        )

    def describe(self) -> dict[str, Any]:
        o = self.options
        out: dict[str, Any] = {
            "runtime": "tensorrt",
            "tensorrt": self.trt.__version__,
            "torch": self._torch.__version__,
            **self.gpu,
            "precision": o.precision,
            "tf32": o.tf32,
            "workspace_mib": o.workspace_mib,
            "optimization_level": o.optimization_level,
            "include_transfers": o.include_transfers,
            "timing": "cuda-events",
        }
        if self.telemetry is not None:
            out["driver"] = self.telemetry.snapshot().driver
        return out

    def engine_key(self, workload: Workload) -> EngineKey:
        o = self.options
        return EngineKey(
            workload_key=workload.cache_key,
            input_shape=tuple(workload.input_shape),
            precision=o.precision,
            tf32=o.tf32,
            workspace_mib=o.workspace_mib,
            optimization_level=o.optimization_level,
            gpu_name=str(self.gpu["gpu"]),
            compute_capability=str(self.gpu["compute_capability"]),
            tensorrt_version=str(self.trt.__version__),
        )

    def prepare(self, workload: Workload) -> Prepared:
        from compofa_bench.convert import cached_onnx

        prepare_s: dict[str, float] = {}
        key = self.engine_key(workload)
        path = self.options.effective_cache_dir() / key.file_name()
        data = path.read_bytes() if path.is_file() else None
        engine = self.runtime.deserialize_cuda_engine(data) if data is not None else None
        fresh = engine is None
        if fresh:
            shape = tuple(workload.input_shape)
            with tempfile.TemporaryDirectory(dir=_mkdir(path.parent)) as tmp:
                if self.options.precision == "fp32":
                    # The float32 graph is the one every device exports: share its cache.
                    onnx_path, _, export_s = cached_onnx(workload.module, shape, workload.cache_key)
                else:
                    onnx_path, export_s = export_onnx(
                        workload.module, shape, Path(tmp) / "model.onnx", self.options.precision
                    )
                prepare_s["export_s"] = export_s
                t0 = time.perf_counter()
                data = self._build(onnx_path, shape)
                prepare_s["build_s"] = time.perf_counter() - t0
            write_atomic(path, data)
            write_atomic(
                path.with_suffix(".json"),
                json.dumps({**dataclasses.asdict(key), "build_s": prepare_s["build_s"]}).encode(),
            )
            engine = self.runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise ExportError(f"TensorRT could not load the engine it just built ({path})")
        t1 = time.perf_counter()
        loaded = self._load(engine, tuple(workload.input_shape))
        prepare_s["load_s"] = time.perf_counter() - t1
        if fresh and self.options.parity_check:
            self._check_parity(workload, loaded)
        return Prepared(workload, loaded, artifact_path=str(path), prepare_s=prepare_s)

    def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
        e: _Engine = prepared.handle
        o = self.options
        h2d = d2h = None
        if o.include_transfers:

            def h2d() -> None:
                for name, t in e.inputs.items():
                    t.copy_(e.host_in[name], non_blocking=True)

            def d2h() -> None:
                for name, t in e.outputs.items():
                    e.host_out[name].copy_(t, non_blocking=True)

        return time_on_stream(
            prepared.workload.name, e.step, self.stream, protocol, self.telemetry, o.drift, h2d, d2h
        )

    def release(self, prepared: Prepared) -> None:
        self.stream.synchronize()
        prepared.handle = None
        self._torch.cuda.synchronize(self.device)
        self._torch.cuda.empty_cache()

    def close(self) -> None:
        if self.telemetry is not None:
            self.telemetry.close()
            self.telemetry = None

    # ------------------------------------------------------------------ internals
    def _build(self, onnx_path: Path, input_shape: tuple[int, ...]) -> bytes:
        return build_serialized_engine(self.trt, self.logger, onnx_path, input_shape, self.options)

    def _load(self, engine: Any, input_shape: tuple[int, ...]) -> _Engine:
        trt = self.trt
        torch = self._torch
        context = engine.create_execution_context()
        if context is None:
            raise DeviceError("TensorRT could not create an execution context (GPU memory?)")
        gen = torch.Generator().manual_seed(0)
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, input_shape)
                dtype = torch_dtype(torch, engine.get_tensor_dtype(name).name)
                t = torch.randn(input_shape, generator=gen).to(device=self.device, dtype=dtype)
                inputs[name] = t
                context.set_tensor_address(name, t.data_ptr())
        for name in names:
            if engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(context.get_tensor_shape(name))
                dtype = torch_dtype(torch, engine.get_tensor_dtype(name).name)
                t = torch.empty(shape, dtype=dtype, device=self.device)
                outputs[name] = t
                context.set_tensor_address(name, t.data_ptr())
        stream = self.stream
        # The buffers were filled on the default stream; the engine runs on ours.
        torch.cuda.synchronize(self.device)

        def step() -> None:
            context.execute_async_v3(stream.cuda_stream)

        # One checked run: execute_async_v3 reports failure by return value, which the timed
        # loop does not look at.
        with torch.cuda.stream(stream):
            if not context.execute_async_v3(stream.cuda_stream):
                raise DeviceError("TensorRT execute_async_v3 failed on the first run")
        stream.synchronize()
        host_in: dict[str, torch.Tensor] = {}
        host_out: dict[str, torch.Tensor] = {}
        if self.options.include_transfers:
            for name, t in inputs.items():
                host_in[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)
            for name, t in outputs.items():
                host_out[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return _Engine(engine, context, inputs, outputs, host_in, host_out, step)

    def _check_parity(self, workload: Workload, e: _Engine) -> None:
        """The engine against the PyTorch module on the CPU in fp32, on the same input."""
        torch = self._torch
        if len(e.inputs) != 1 or len(e.outputs) != 1:
            return
        x = next(iter(e.inputs.values()))
        with torch.cuda.stream(self.stream):
            e.step()
        self.stream.synchronize()
        got = next(iter(e.outputs.values())).float().cpu().numpy()
        workload.module.eval()
        with torch.no_grad():
            ref = workload.module(x.float().cpu()).numpy()
        if got.shape != ref.shape:
            raise ExportError(
                f"TensorRT output shape {got.shape} differs from PyTorch's {ref.shape}"
            )
        err = float(np.abs(got.astype(np.float64) - ref).max(initial=0.0))
        atol = self.options.effective_parity_atol()
        if not np.isfinite(err) or err > atol + 1e-2 * float(np.abs(ref).max(initial=0.0)):
            raise ExportError(
                f"{workload.name}: TensorRT {self.options.precision} engine differs from PyTorch "
                f"by {err:.3g} (tolerance {atol} + 1% of max |output|); parity_check = false skips"
            )
