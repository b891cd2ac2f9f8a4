"""``tflite-local``: the TFLite runtime (``ai-edge-litert``) on the machine running compofa-bench.

Subnets are converted with :mod:`compofa_bench.tflite_convert` (NHWC I/O, float32, cached,
parity-checked once) and timed with :func:`compofa_bench.measure.timed_loop` around
``Interpreter.invoke``, so the numbers follow the same protocol as every other device. This is
the TFLite graph a phone runs, on an x86/ARM host: useful to debug the phone path, and as a
third CPU runtime next to ``cpu-ort``.

Options (``[options]`` of a device file):

``threads``        interpreter threads (default 1; 0 = one per physical core)
``xnnpack``        use the XNNPACK delegate, TFLite's default CPU path (default true); false
                   runs TFLite's builtin kernels
``parity_check``   compare each fresh conversion with PyTorch (default true)
``cache_dir``      where converted ``.tflite`` files are kept
                   (default ``$XDG_CACHE_HOME/compofa-bench/tflite``)
``precision``      ``float32`` (the only one so far)
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from compofa_bench.adapters.base import Adapter, Prepared, Timing, Workload
from compofa_bench.adapters.options import parse_tflite_local_options, physical_cores
from compofa_bench.errors import MeasurementError
from compofa_bench.measure import Protocol, timed_loop


class TfliteLocalAdapter(Adapter):
    kind: ClassVar[str] = "tflite-local"
    native_timing: ClassVar[bool] = False

    @classmethod
    def check_options(cls, spec: Any) -> None:
        parse_tflite_local_options(spec.options, spec.name)

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        from compofa_bench import tflite_convert

        opts = parse_tflite_local_options(spec.options, spec.name)
        self.options = opts
        self.threads = opts.threads or physical_cores()
        self.xnnpack = opts.xnnpack
        self.parity_check = opts.parity_check
        self.precision = opts.precision
        self.cache_dir = opts.cache_dir
        # Fail at open time, not on the first workload, when the runtime is missing.
        tflite_convert._interpreter_cls()

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "ai-edge-litert",
            "version": _version("ai-edge-litert"),
            "converter": _version("litert-torch"),
            "threads": self.threads,
            "xnnpack": self.xnnpack,
            "precision": self.precision,
        }

    def prepare(self, workload: Workload) -> Prepared:
        from compofa_bench import tflite_convert

        info = tflite_convert.convert_workload(
            workload, self.cache_dir, precision=self.precision, parity=self.parity_check
        )
        t0 = time.perf_counter()
        interp = tflite_convert.load_interpreter(info.path, self.threads, self.xnnpack)
        session_s = time.perf_counter() - t0
        prepare_s = {"convert_s": info.convert_s, "parity_s": info.parity_s, "session_s": session_s}
        return Prepared(workload, interp, str(info.path), prepare_s)

    def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
        interp = prepared.handle
        shape = tuple(prepared.workload.input_shape)
        if shape[0] != protocol.batch_size:
            raise MeasurementError(
                f"workload batch {shape[0]} differs from the protocol's batch_size "
                f"{protocol.batch_size}"
            )
        inp = interp.get_input_details()[0]
        x = np.random.default_rng(0).standard_normal(tuple(inp["shape"]), dtype=np.float32)
        # Set once: invoke() reads the tensor in place, so the timed loop is inference only.
        interp.set_tensor(inp["index"], x)
        timing = timed_loop(interp.invoke, protocol)
        timing.extra["threads"] = self.threads
        timing.extra["xnnpack"] = self.xnnpack
        return timing

    def release(self, prepared: Prepared) -> None:
        prepared.handle = None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
