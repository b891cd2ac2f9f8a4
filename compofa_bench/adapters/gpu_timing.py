"""Device-independent pieces of GPU timing, kept free of CUDA so they run in CPU tests.

- :func:`chunked_timed_loop`: the warmup / min-runs / min-seconds / max-seconds rule for a
  runtime that enqueues many iterations back to back and learns their times only after one
  synchronize (CUDA events). Synchronizing after every iteration would leave the GPU idle
  between runs and let it drop clocks; enqueueing everything first would overshoot ``max_s``.
  Chunks that double in size are the middle way (trtexec does the same).
- :func:`largest_fitting_batch`: the halving search behind the out-of-memory message.
- :func:`cast_for_run`: precision and memory format applied to a module and its input.
- :func:`require_cuda`: the one-line error when CUDA is absent.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from compofa_bench.errors import DeviceError, MeasurementError

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from compofa_bench.measure import Protocol

#: Largest number of iterations enqueued between two host synchronizations.
MAX_CHUNK = 64


@dataclass
class LoopResult:
    warmup_ms: list[float]
    samples_ms: list[float]
    warmup_s: float
    timed_s: float


def _phase(
    run_chunk: Callable[[int], list[float]],
    min_runs: int,
    min_s: float,
    max_s: float | None,
    clock: Callable[[], float],
    runs_before_cap: int,
) -> tuple[list[float], float]:
    samples: list[float] = []
    t0 = clock()
    chunk = 1
    while True:
        elapsed = clock() - t0
        enough = len(samples) >= min_runs and elapsed >= min_s
        out_of_time = max_s is not None and elapsed >= max_s and len(samples) >= runs_before_cap
        if enough or out_of_time:
            return samples, elapsed
        n = chunk
        if samples:
            per_run_s = elapsed / len(samples)
            # Size the chunk to what is still needed, so max_s is overshot by one run at most.
            if max_s is not None and per_run_s > 0:
                left = math.ceil((max_s - elapsed) / per_run_s)
                n = min(n, max(1, left, runs_before_cap - len(samples)))
            need_runs = max(0, min_runs - len(samples))
            need_time = max(0.0, min_s - elapsed)
            need = max(need_runs, math.ceil(need_time / per_run_s) if per_run_s > 0 else 1)
            n = max(1, min(n, need))
        got = run_chunk(n)
        if len(got) != n:
            raise MeasurementError(f"timing loop: asked for {n} runs, got {len(got)} times")
        samples.extend(got)
        chunk = min(chunk * 2, MAX_CHUNK)


def chunked_timed_loop(
    run_chunk: Callable[[int], list[float]],
    protocol: Protocol,
    clock: Callable[[], float] = time.perf_counter,
    after_warmup: Callable[[], Any] | None = None,
) -> LoopResult:
    """Warm up, then time, under ``protocol``'s rule.

    ``run_chunk(n)`` runs ``n`` iterations back to back and returns their ``n`` latencies in
    milliseconds, after waiting for all of them (host time advances by their duration).
    The rule is :func:`compofa_bench.measure.timed_loop`'s: warmup lasts ``warmup_runs``
    runs and at least ``warmup_min_s`` seconds, the seconds capped by ``max_s``; timing lasts
    ``min_runs`` runs and at least ``min_s`` seconds, and stops at ``max_s`` (with at least
    one sample) even when ``min_runs`` is not reached yet. ``after_warmup`` runs between the
    phases (a telemetry snapshot of the warmed-up GPU); its time is not counted in either.
    """
    warmup_ms, warmup_s = _phase(
        run_chunk,
        protocol.warmup_runs,
        protocol.warmup_min_s,
        protocol.max_s,
        clock,
        runs_before_cap=protocol.warmup_runs,
    )
    if after_warmup is not None:
        after_warmup()
    samples_ms, timed_s = _phase(
        run_chunk, max(1, protocol.min_runs), protocol.min_s, protocol.max_s, clock, 1
    )
    return LoopResult(warmup_ms, samples_ms, warmup_s, timed_s)


# --------------------------------------------------------------------------- out of memory
def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory, whichever way the runtime reported it."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    # cuDNN/cuBLAS sometimes report allocation failure as a plain RuntimeError.
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA out of memory" in text
        or "CUDNN_STATUS_ALLOC_FAILED" in text
        or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def largest_fitting_batch(
    try_batch: Callable[[int], None],
    failed_batch: int,
    on_oom: Callable[[], None] | None = None,
) -> int:
    """Halve ``failed_batch`` until ``try_batch(b)`` stops raising out-of-memory; return that
    ``b``, or 0 when even batch 1 does not fit. ``on_oom`` runs after each failure (free the
    allocator's cache). Errors other than out-of-memory propagate: they are not about size."""
    b = failed_batch // 2
    while b >= 1:
        fitted = False
        try:
            try_batch(b)
            fitted = True
        except Exception as exc:
            if not is_oom(exc):
                raise
        if fitted:
            return b
        # Outside the except block: the traceback no longer pins the failed attempt's tensors.
        if on_oom is not None:
            on_oom()
        b //= 2
    return 0


def oom_message(name: str, batch: int, fits: int | None, device: str) -> str:
    if fits is None:
        hint = "set a smaller batch_size in the device's [protocol] or pass --batch-size"
    elif fits == 0:
        hint = "not even batch 1 fits; free GPU memory (other processes?) or use a smaller model"
    else:
        hint = (
            f"the largest batch that fits is {fits} (found by halving); set batch_size = {fits} "
            f"in the device's [protocol] or pass --batch-size {fits}"
        )
    return f"{name}: batch {batch} does not fit in the memory of {device}; {hint}"


# --------------------------------------------------------------------------- precision
def dtype_for(precision: str) -> torch.dtype:
    import torch

    try:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    except KeyError:
        raise DeviceError(f"unknown precision {precision!r}; use fp32, fp16 or bf16") from None


def cast_for_run(
    module: nn.Module,
    input_shape: tuple[int, ...],
    precision: str,
    channels_last: bool,
    device: torch.device | str,
    seed: int = 0,
) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``module`` and a random input, both on ``device`` in ``precision`` and
    memory format. The workload's own module is left untouched: callers reuse it (export,
    parity checks, the next adapter). The input is drawn on ``device`` itself, so a batch
    too large for the GPU fails there (out of memory, handled) and not in host memory.
    ``channels_last`` applies to 4-d inputs only; others keep their layout."""
    import torch

    dtype = dtype_for(precision)
    # Lookup tables time the classifier alone on an (N, C) input: no memory format applies.
    channels_last = channels_last and len(input_shape) == 4
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(module).eval()
    model = model.to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=fmt)
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(input_shape, generator=gen, dtype=torch.float32, device=device)
    x = x.to(dtype=dtype).contiguous(memory_format=fmt)
    return model, x


# --------------------------------------------------------------------------- CUDA presence
def require_cuda(device_index: int, what: str) -> Any:
    """Return torch after checking that CUDA device ``device_index`` can be used."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (CPU-only build)"
        raise DeviceError(
            f"{what} needs an NVIDIA GPU with a working driver, but torch.cuda.is_available() "
            f"is False (torch {torch.__version__}, built for CUDA {built})"
        )
    count = torch.cuda.device_count()
    if device_index >= count:
        raise DeviceError(
            f"{what}: device_index {device_index} does not exist; this machine has {count} "
            "visible CUDA device(s)"
        )
    return torch


# --------------------------------------------------------------------------- CUDA events
@dataclass
class TransferTimes:
    """Host<->device copy times, kept apart from compute time as trtexec reports them."""

    h2d_ms: list[float]
    d2h_ms: list[float]


class CudaEventRunner:
    """``run_chunk`` for :func:`chunked_timed_loop` on a CUDA stream.

    Every iteration is bracketed by CUDA events recorded on ``stream``, so each latency is
    GPU-side time from the start of its work to its end, whatever the host did meanwhile;
    the host synchronizes once per chunk, on the last event. With ``h2d``/``d2h`` copies the
    compute time stays the sample and the copies are timed by their own events.
    """

    def __init__(
        self,
        step: Callable[[], Any],
        stream: torch.cuda.Stream,
        h2d: Callable[[], Any] | None = None,
        d2h: Callable[[], Any] | None = None,
    ) -> None:
        import torch

        self._torch = torch
        self.step = step
        self.stream = stream
        self.h2d = h2d
        self.d2h = d2h
        self.transfers = TransferTimes([], [])
        self._events = [
            [torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(MAX_CHUNK)
        ]

    def __call__(self, n: int) -> list[float]:
        torch = self._torch
        if n > len(self._events):
            self._events.extend(
                [torch.cuda.Event(enable_timing=True) for _ in range(4)]
                for _ in range(n - len(self._events))
            )
        with torch.cuda.stream(self.stream):
            for i in range(n):
                e = self._events[i]
                if self.h2d is not None:
                    e[0].record(self.stream)
                    self.h2d()
                e[1].record(self.stream)
                self.step()
                e[2].record(self.stream)
                if self.d2h is not None:
                    self.d2h()
                    e[3].record(self.stream)
        last = self._events[n - 1][3 if self.d2h is not None else 2]
        last.synchronize()
        out = []
        for i in range(n):
            e = self._events[i]
            out.append(e[1].elapsed_time(e[2]))
            if self.h2d is not None:
                self.transfers.h2d_ms.append(e[0].elapsed_time(e[1]))
            if self.d2h is not None:
                self.transfers.d2h_ms.append(e[2].elapsed_time(e[3]))
        return out


class TorchFlags:
    """Set cuDNN/cuBLAS flags for one measurement and restore them after: they are process
    globals, and leaking them would change what the next device in the process measures."""

    def __init__(self, cudnn_benchmark: bool, tf32: bool) -> None:
        self.cudnn_benchmark = cudnn_benchmark
        self.tf32 = tf32
        self._saved: tuple[bool, bool, bool] | None = None

    def __enter__(self) -> TorchFlags:
        import torch

        b = torch.backends
        self._saved = (b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32)
        b.cudnn.benchmark = self.cudnn_benchmark
        b.cudnn.allow_tf32 = self.tf32
        b.cuda.matmul.allow_tf32 = self.tf32
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        assert self._saved is not None
        b = torch.backends
        b.cudnn.benchmark, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = self._saved


def time_on_stream(
    name: str,
    step: Callable[[], Any],
    stream: torch.cuda.Stream,
    protocol: Protocol,
    telemetry: Any,
    drift: Any,
    h2d: Callable[[], Any] | None = None,
    d2h: Callable[[], Any] | None = None,
) -> Any:
    """Time ``step`` on ``stream`` under ``protocol`` with CUDA events, with telemetry
    snapshots around it; returns a :class:`~compofa_bench.adapters.base.Timing`. Shared by
    the ``cuda-torch`` and ``tensorrt`` adapters so both measure by the same rule."""
    import logging

    from compofa_bench.adapters.base import Timing
    from compofa_bench.adapters.gpu_telemetry import telemetry_extra

    # Drift is judged over the timed phase only: an idle GPU before warmup runs at low clocks
    # and would flag every model. The idle reading is kept as context.
    idle = telemetry.snapshot() if telemetry is not None else None
    warmed: list[Any] = []
    runner = CudaEventRunner(step, stream, h2d=h2d, d2h=d2h)
    result = chunked_timed_loop(
        runner,
        protocol,
        after_warmup=(lambda: warmed.append(telemetry.snapshot())) if telemetry else None,
    )
    after = telemetry.snapshot() if telemetry is not None else None
    before = warmed[0] if warmed else None
    extra: dict[str, Any] = {
        "timing": "cuda-events",
        "timed_wall_s": result.timed_s,
        "warmup_wall_s": result.warmup_s,
        **telemetry_extra(before, after, drift),
    }
    if idle is not None and "telemetry" in extra:
        extra["telemetry"]["before_warmup"] = idle.to_dict()
    n = len(result.samples_ms)
    if h2d is not None:
        # Copies of warmup runs come first in the runner's lists; keep the timed ones.
        extra["h2d_ms"] = runner.transfers.h2d_ms[-n:]
    if d2h is not None:
        extra["d2h_ms"] = runner.transfers.d2h_ms[-n:]
    for w in extra.get("warnings", []):
        logging.getLogger("compofa_bench.adapters").warning("%s: %s", name, w)
    return Timing(samples_ms=result.samples_ms, warmup_ms=result.warmup_ms, extra=extra)
