"""``cpu-ort``: ONNX Runtime's CPUExecutionProvider on the machine running compofa-bench.

Options (``[options]`` of a device file):

``threads``            intra-op threads; 0 means one per physical core (default 0)
``inter_op_threads``   inter-op threads (default 1: subnets are a chain of layers)
``graph_optimization`` ``all`` | ``extended`` | ``basic`` | ``disable`` (default ``all``)
``affinity``           CPU ids to pin this process to while timing (default: leave as is)
``spinning``           let idle intra-op threads spin (ORT default true); false is kinder to a
                       shared machine but adds wake-up latency
``parity_check``       compare each freshly exported ONNX file with PyTorch (default true)
``cache_dir``          where exported ONNX files are kept (default ``~/.cache/compofa-bench/onnx``)
``opset``              ONNX opset (default 17)
``timer``              ``wall`` (default): wall-clock latency. ``thread_cpu``: CPU time of the
                       calling thread, which runs the whole inference when ``threads = 1``;
                       blind to preemption, so rankings survive a busy shared machine, but it
                       is not a wall-clock latency (only allowed with ``threads = 1``)

Inputs and outputs are bound once with IO binding, so the timed loop is nothing but
``run_with_iobinding``.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, ClassVar

import numpy as np

from compofa_bench.adapters.base import Adapter, Prepared, Timing, Workload
from compofa_bench.adapters.options import parse_ort_cpu_options, physical_cores
from compofa_bench.convert import cached_onnx
from compofa_bench.errors import MeasurementError, MissingDependencyError
from compofa_bench.measure import Protocol, timed_loop

_OPT_LEVELS = {
    "all": "ORT_ENABLE_ALL",
    "extended": "ORT_ENABLE_EXTENDED",
    "basic": "ORT_ENABLE_BASIC",
    "disable": "ORT_DISABLE_ALL",
}


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("onnxruntime", "ort", "the cpu-ort adapter") from None
    return ort


class OrtCpuAdapter(Adapter):
    kind: ClassVar[str] = "cpu-ort"
    native_timing: ClassVar[bool] = False
    lazy_module: ClassVar[bool] = True

    @classmethod
    def check_options(cls, spec: Any) -> None:
        parse_ort_cpu_options(spec.options, spec.name)

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._ort = _import_ort()
        opts = parse_ort_cpu_options(spec.options, spec.name)
        self.options = opts
        self.threads = opts.threads or physical_cores()
        self.inter_op_threads = opts.inter_op_threads
        self.graph_optimization = opts.graph_optimization
        self.affinity = list(opts.affinity)
        self.spinning = opts.spinning
        self.parity_check = opts.parity_check
        self.cache_dir = opts.cache_dir
        self.opset = opts.opset
        self.timer = opts.timer
        self._saved_affinity: set[int] | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "runtime": "onnxruntime",
            "version": self._ort.__version__,
            "provider": "CPUExecutionProvider",
            "intra_op_threads": self.threads,
            "inter_op_threads": self.inter_op_threads,
            "graph_optimization": self.graph_optimization,
            "affinity": self.affinity,
            "spinning": self.spinning,
            "opset": self.opset,
            "timer": self.timer,
        }

    # ----------------------------------------------------------------- prepare
    def _session_options(self) -> Any:
        ort = self._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = self.inter_op_threads
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPT_LEVELS[self.graph_optimization]
        )
        so.log_severity_level = 3
        so.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        return so

    def session(self, onnx_path: str) -> Any:
        """An ORT session with this device's settings (also used by the agreement benchmark)."""
        return self._ort.InferenceSession(
            onnx_path, self._session_options(), providers=["CPUExecutionProvider"]
        )

    def prepare(self, workload: Workload) -> Prepared:
        path, _fresh, seconds = cached_onnx(
            workload.module if workload.module is not None else workload.get_module,
            workload.input_shape,
            workload.cache_key,
            self.cache_dir,
            self.opset,
            parity=self.parity_check,
        )
        t0 = time.perf_counter()
        # Linux affinity is per thread and inherited: pin while ORT spawns its thread pool so
        # the intra-op threads land on the chosen CPUs too.
        self._pin()
        try:
            sess = self.session(str(path))
        finally:
            self._unpin()
        session_s = time.perf_counter() - t0
        return Prepared(
            workload=workload,
            handle=sess,
            artifact_path=str(path),
            prepare_s={**seconds, "session_s": session_s},
        )

    # ----------------------------------------------------------------- time
    def bind(self, sess: Any, input_shape: tuple[int, ...]) -> Any:
        """IO binding with a random input and a preallocated output, both bound once."""
        ort = self._ort
        inp = sess.get_inputs()[0]
        x = np.random.default_rng(0).standard_normal(input_shape, dtype=np.float32)
        x_val = ort.OrtValue.ortvalue_from_numpy(x)
        out_meta = sess.get_outputs()[0]
        out_shape = tuple(int(d) for d in out_meta.shape)
        y_val = ort.OrtValue.ortvalue_from_numpy(np.empty(out_shape, dtype=np.float32))
        binding = sess.io_binding()
        binding.bind_ortvalue_input(inp.name, x_val)
        binding.bind_ortvalue_output(out_meta.name, y_val)
        # keep the buffers alive as long as the binding
        binding._compofa_keep = (x_val, y_val)  # type: ignore[attr-defined]
        return binding

    def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
        sess = prepared.handle
        shape = tuple(prepared.workload.input_shape)
        if shape[0] != protocol.batch_size:
            raise MeasurementError(
                f"workload batch {shape[0]} differs from the protocol's batch_size "
                f"{protocol.batch_size}"
            )
        binding = self.bind(sess, shape)
        run = functools.partial(sess.run_with_iobinding, binding)
        self._pin()
        try:
            sample_clock = time.thread_time if self.timer == "thread_cpu" else None
            timing = timed_loop(run, protocol, sample_clock=sample_clock)
        finally:
            self._unpin()
        timing.extra["threads"] = self.threads
        return timing

    def _pin(self) -> None:
        if self.affinity:
            self._saved_affinity = os.sched_getaffinity(0)
            os.sched_setaffinity(0, self.affinity)

    def _unpin(self) -> None:
        if self._saved_affinity is not None:
            os.sched_setaffinity(0, self._saved_affinity)
            self._saved_affinity = None

    def release(self, prepared: Prepared) -> None:
        prepared.handle = None
