"""PyTorch module -> ``.tflite``, with a cache and a parity check.

Conversion goes through ``litert-torch`` (the ``tflite`` extra). The module is wrapped so the
TFLite graph takes NHWC input (and gives NHWC output for 4-D outputs): TFLite kernels are
channel-last, and a graph with NCHW I/O would carry two transposes that a phone app would never
run, which would bias every latency. The PyTorch side of a parity check therefore sees the same
data permuted to NCHW.

A conversion costs 15-45 s on a laptop CPU, so results are cached: the cache file name hashes the
workload's cache key (arch key + resolution + anything that changes the graph), the input shape
(batch included), the precision and the converter and torch versions. Without a cache key the
module's structure and weights are hashed instead, so a cache hit can never be a different graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench.errors import ExportError, MissingDependencyError
from compofa_bench.fileio import atomic_path

if TYPE_CHECKING:
    import torch.nn as nn

    from compofa_bench.adapters.base import Workload

PRECISIONS = ("float32",)

#: Default parity tolerance: max |tflite - torch| <= ATOL + RTOL * max |torch|.
#: XNNPACK float32 kernels re-associate sums, so bit equality is not expected; 1e-3 of the output
#: range is far below anything a wrong graph (a missing layer, a bad layout) produces.
RTOL = 1e-3
ATOL = 1e-5


@dataclass(frozen=True)
class ParityResult:
    max_abs_diff: float
    max_abs_ref: float
    tolerance: float
    output_shape: tuple[int, ...]

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def _litert_torch() -> Any:
    try:
        import litert_torch
    except ImportError:
        raise MissingDependencyError("litert-torch", "tflite", "Converting to TFLite") from None
    return litert_torch


def _interpreter_cls() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise MissingDependencyError("ai-edge-litert", "tflite", "Running TFLite models") from None
    return Interpreter


def converter_version() -> str:
    """Versions that change the converted graph; part of every cache key. Read from package
    metadata: importing litert-torch takes seconds, and a cache hit must not pay for it."""
    from importlib import metadata

    try:
        lt = metadata.version("litert-torch")
    except metadata.PackageNotFoundError:
        raise MissingDependencyError("litert-torch", "tflite", "Converting to TFLite") from None
    return f"litert-torch={lt};torch={metadata.version('torch')}"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "compofa-bench" / "tflite"


def module_digest(module: nn.Module) -> str:
    """Hash of a module's structure and weights, for caching without a cache key."""
    import torch

    h = hashlib.sha256(repr(module).encode())
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def cache_name(cache_key: str, input_shape: tuple[int, ...], precision: str) -> str:
    payload = json.dumps(
        {
            "key": cache_key,
            "shape": list(input_shape),
            "precision": precision,
            "converter": converter_version(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24] + ".tflite"


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else shape


def _check_shape(input_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    # (N, C, H, W) for networks and most layers; (N, C) for a classifier layer timed alone.
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise ExportError(
            f"TFLite conversion needs an NCHW (or N, C) input shape, got {input_shape}"
        )
    return shape


def _output_ndim(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    import torch

    with torch.no_grad():
        out = module(torch.zeros(input_shape))
    return int(out.ndim)


def convert(
    module: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | Path,
    precision: str = "float32",
) -> Path:
    """Convert without cache or parity check; written atomically to ``out_path``."""
    import torch

    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not supported; use one of {PRECISIONS}")
    # litert-torch prints its own task log, which would tear through our progress bars.
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    lt = _litert_torch()
    shape = _check_shape(input_shape)
    module = module.eval()
    outputs = [0] if _output_ndim(module, shape) >= 3 else []
    inputs = [0] if len(shape) >= 3 else []
    wrapped = lt.to_channel_last_io(module, args=inputs, outputs=outputs).eval()
    sample = torch.zeros(_nhwc(shape))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad():
            edge_model = lt.convert(wrapped, (sample,))
    except Exception as exc:  # the converter raises many unrelated types
        raise ExportError(f"litert-torch could not convert the module: {exc}") from exc
    with atomic_path(out_path) as tmp:
        edge_model.export(str(tmp))
    return out_path


def check_parity(
    module: nn.Module,
    tflite_path: str | Path,
    input_shape: tuple[int, ...],
    rtol: float = RTOL,
    atol: float = ATOL,
    seed: int = 0,
    num_threads: int = 1,
) -> ParityResult:
    """Run the same random input through PyTorch and the TFLite interpreter and compare."""
    import torch

    shape = _check_shape(input_shape)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = module.eval()(torch.from_numpy(x)).numpy()
    if ref.ndim >= 3:
        ref = np.moveaxis(ref, 1, -1)
    interp = load_interpreter(tflite_path, num_threads=num_threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    x_tflite = np.moveaxis(x, 1, -1) if x.ndim >= 3 else x
    interp.set_tensor(inp["index"], np.ascontiguousarray(x_tflite))
    interp.invoke()
    got = interp.get_tensor(out["index"])
    if got.shape != ref.shape:
        raise ExportError(
            f"TFLite output shape {tuple(got.shape)} differs from PyTorch's {tuple(ref.shape)}"
        )
    max_ref = float(np.max(np.abs(ref))) if ref.size else 0.0
    return ParityResult(
        max_abs_diff=float(np.max(np.abs(got - ref))) if ref.size else 0.0,
        max_abs_ref=max_ref,
        tolerance=atol + rtol * max_ref,
        output_shape=tuple(int(s) for s in got.shape),
    )


def load_interpreter(path: str | Path, num_threads: int = 1, xnnpack: bool = True) -> Any:
    """An allocated ``ai_edge_litert`` interpreter. ``xnnpack=False`` runs TFLite's builtin
    reference-optimized kernels instead of the default XNNPACK delegate."""
    interpreter_cls = _interpreter_cls()
    kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": int(num_threads)}
    if not xnnpack:
        from ai_edge_litert.interpreter import OpResolverType

        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interp = interpreter_cls(**kwargs)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"TFLite cannot load {path}: {exc}") from None
    return interp


@dataclass(frozen=True)
class ConversionInfo:
    path: Path
    cached: bool
    convert_s: float
    parity: ParityResult | None
    parity_s: float = 0.0


def to_tflite(
    module: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | Path | None,
    cache_dir: str | Path | None = None,
    *,
    cache_key: str | None = None,
    precision: str = "float32",
    parity: bool = True,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> Path:
    """Convert ``module`` (float32, eval, NCHW input ``input_shape``) to ``out_path``.

    With ``cache_dir`` a previous conversion of the same graph is reused (copied to
    ``out_path``; with ``out_path=None`` the cached file itself is returned). The parity check
    runs on fresh conversions and raises :class:`ExportError` when TFLite disagrees with
    PyTorch; a failing file is never cached.
    """
    return convert_cached(
        module,
        input_shape,
        out_path,
        cache_dir,
        cache_key=cache_key,
        precision=precision,
        parity=parity,
        rtol=rtol,
        atol=atol,
    ).path


def convert_workload(
    workload: Workload,
    cache_dir: str | Path | None,
    *,
    precision: str = "float32",
    parity: bool = True,
) -> ConversionInfo:
    """What every TFLite adapter's ``prepare`` does: convert a workload into the shared cache
    (keyed by its cache_key), parity-checked."""
    return convert_cached(
        workload.module,
        workload.input_shape,
        None,
        cache_dir or default_cache_dir(),
        cache_key=workload.cache_key,
        precision=precision,
        parity=parity,
    )


def convert_cached(
    module: nn.Module,
    input_shape: tuple[int, ...],
    out_path: str | Path | None,
    cache_dir: str | Path | None = None,
    *,
    cache_key: str | None = None,
    precision: str = "float32",
    parity: bool = True,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> ConversionInfo:
    """:func:`to_tflite` that also says whether the cache was hit and how long it took."""
    shape = _check_shape(input_shape)
    if out_path is None and cache_dir is None:
        raise ExportError("to_tflite needs an out_path or a cache_dir")
    if cache_dir is None:
        return _convert_checked(module, shape, Path(out_path), precision, parity, rtol, atol)  # type: ignore[arg-type]
    key = cache_key if cache_key is not None else "digest:" + module_digest(module)
    cached_file = Path(cache_dir) / cache_name(key, shape, precision)
    if _usable(cached_file):
        return ConversionInfo(_deliver(cached_file, out_path), True, 0.0, None)
    cached_file.parent.mkdir(parents=True, exist_ok=True)
    # Several devices profiled at once convert the same archs: the first converts, the others
    # wait on the lock and then find the file (threads and processes alike).
    with _file_lock(cached_file.with_name(cached_file.name + ".lock")):
        if _usable(cached_file):
            return ConversionInfo(_deliver(cached_file, out_path), True, 0.0, None)
        info = _convert_checked(module, shape, cached_file, precision, parity, rtol, atol)
    return ConversionInfo(
        _deliver(info.path, out_path), False, info.convert_s, info.parity, info.parity_s
    )


def _usable(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no cross-process lock, still correct
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _convert_checked(
    module: nn.Module,
    shape: tuple[int, ...],
    target: Path,
    precision: str,
    parity: bool,
    rtol: float,
    atol: float,
) -> ConversionInfo:
    t0 = time.perf_counter()
    # Convert next to the target under a name of our own: a failed parity check must not leave
    # a file that a later run would take for a good conversion.
    staging = target.with_name(f".{target.stem}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tflite")
    convert(module, shape, staging, precision)
    convert_s = time.perf_counter() - t0
    result = None
    t0 = time.perf_counter()
    try:
        if parity:
            result = check_parity(module, staging, shape, rtol=rtol, atol=atol)
            if not result.ok:
                raise ExportError(
                    f"TFLite parity check failed: max |tflite - torch| = {result.max_abs_diff:.3g}"
                    f" > {result.tolerance:.3g} (output range {result.max_abs_ref:.3g})"
                )
        os.replace(staging, target)
    finally:
        if staging.exists():
            staging.unlink()
    return ConversionInfo(target, False, convert_s, result, time.perf_counter() - t0)


def _deliver(source: Path, out_path: str | Path | None) -> Path:
    if out_path is None:
        return source
    out = Path(out_path)
    if out.exists() and os.path.samefile(source, out):
        return out
    with atomic_path(out) as tmp, tmp.open("wb") as dst, open(source, "rb") as src:
        shutil.copyfileobj(src, dst, 1 << 20)
    return out


def model_io(path: str | Path) -> dict[str, Any]:
    """Input/output shapes and dtypes of a ``.tflite`` file (for ``describe`` and docs)."""
    interp = load_interpreter(path)
    return {
        "inputs": [
            {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            for d in interp.get_input_details()
        ],
        "outputs": [
            {"shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            for d in interp.get_output_details()
        ],
    }
