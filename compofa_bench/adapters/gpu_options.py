"""Options of the GPU devices (``cuda-torch``, ``tensorrt``), parsed from a device TOML.

Parsing is pure Python so that every rule here is tested on machines without a GPU. A typo
in a device file must fail loudly with the list of valid keys, not be silently ignored: a
silently ignored ``precision = "fp61"`` would label fp32 numbers as fp16.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compofa_bench.adapters.options import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_keys,
)
from compofa_bench.errors import DeviceError

PRECISIONS_TORCH = ("fp32", "fp16", "bf16")
PRECISIONS_TENSORRT = ("fp32", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TELEMETRY_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class DriftThresholds:
    """How far GPU state may move between the snapshots before and after one model's timing
    before the measurement is flagged: a clock that moved means boost/throttling changed what
    was measured, a temperature rise means the card was still heating up."""

    max_clock_change: float = 0.05
    max_temp_change_c: float = 10.0


@dataclass(frozen=True)
class CudaTorchOptions:
    """``[options]`` of an ``adapter = "cuda-torch"`` device."""

    device_index: int = 0
    precision: str = "fp32"
    channels_last: bool = False
    cudnn_benchmark: bool = True
    # Strict fp32 by default: PyTorch lets cuDNN use TF32 for convolutions on Ampere and later,
    # which would make "fp32" numbers incomparable across GPU generations.
    tf32: bool = False
    cuda_graph: bool = False
    compile_mode: str | None = None
    include_transfers: bool = False
    telemetry: str = "auto"
    drift: DriftThresholds = DriftThresholds()
    oom_search: bool = True


@dataclass(frozen=True)
class TensorRTOptions:
    """``[options]`` of an ``adapter = "tensorrt"`` device."""

    device_index: int = 0
    precision: str = "fp32"
    # TensorRT (like trtexec) allows TF32 unless told otherwise; off keeps fp32 strict.
    tf32: bool = False
    workspace_mib: int = 4096
    optimization_level: int = 3
    cache_dir: Path | None = None
    include_transfers: bool = False
    telemetry: str = "auto"
    drift: DriftThresholds = DriftThresholds()
    parity_check: bool = True
    parity_atol: float | None = None

    def effective_cache_dir(self) -> Path:
        """``cache_dir``, else ``tensorrt/`` in the project cache (``$COMPOFA_BENCH_CACHE``)."""
        if self.cache_dir is not None:
            return self.cache_dir
        from compofa_bench.convert import default_cache_dir

        return default_cache_dir() / "tensorrt"

    def effective_parity_atol(self) -> float:
        # fp16 engines drift by ~1e-2 on logits of random-init nets; fp32 (no TF32) stays tight.
        if self.parity_atol is not None:
            return self.parity_atol
        return 5e-2 if self.precision == "fp16" or self.tf32 else 1e-3


# --------------------------------------------------------------------------- parsing helpers
# (the validators are the ones every adapter's options share: compofa_bench.adapters.options)


def _telemetry(device: str, value: Any) -> str:
    # TOML users write true/false; "auto" records telemetry only when nvidia-ml-py is present.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return check_choice(device, "telemetry", value, TELEMETRY_MODES)


def _compile_mode(device: str, value: Any) -> str | None:
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    return check_choice(device, "compile", value, COMPILE_MODES)


def _drift(device: str, options: Mapping[str, Any]) -> DriftThresholds:
    base = DriftThresholds()
    return DriftThresholds(
        max_clock_change=check_float(
            device, "max_clock_change", options.get("max_clock_change", base.max_clock_change)
        ),
        max_temp_change_c=check_float(
            device, "max_temp_change_c", options.get("max_temp_change_c", base.max_temp_change_c)
        ),
    )


_DRIFT_KEYS = {"max_clock_change", "max_temp_change_c"}


def parse_cuda_torch_options(
    options: Mapping[str, Any], device: str = "cuda-torch"
) -> CudaTorchOptions:
    """Validate a ``cuda-torch`` device's ``[options]`` table; :class:`DeviceError` on any
    unknown key, wrong type or contradictory combination."""
    fields = {f.name for f in dataclasses.fields(CudaTorchOptions)} - {"compile_mode", "drift"}
    check_keys(device, options, fields | {"compile"} | _DRIFT_KEYS)
    d = CudaTorchOptions()
    opts = CudaTorchOptions(
        device_index=check_int(
            device, "device_index", options.get("device_index", d.device_index), 0
        ),
        precision=check_choice(
            device, "precision", options.get("precision", d.precision), PRECISIONS_TORCH
        ),
        channels_last=check_bool(
            device, "channels_last", options.get("channels_last", d.channels_last)
        ),
        cudnn_benchmark=check_bool(
            device, "cudnn_benchmark", options.get("cudnn_benchmark", d.cudnn_benchmark)
        ),
        tf32=check_bool(device, "tf32", options.get("tf32", d.tf32)),
        cuda_graph=check_bool(device, "cuda_graph", options.get("cuda_graph", d.cuda_graph)),
        compile_mode=_compile_mode(device, options.get("compile", None)),
        include_transfers=check_bool(
            device, "include_transfers", options.get("include_transfers", d.include_transfers)
        ),
        telemetry=_telemetry(device, options.get("telemetry", d.telemetry)),
        drift=_drift(device, options),
        oom_search=check_bool(device, "oom_search", options.get("oom_search", d.oom_search)),
    )
    if opts.cuda_graph and opts.compile_mode is not None:
        # A manual capture around a compiled module breaks on any graph break or recompile;
        # torch.compile's own "reduce-overhead" mode is the supported way to get both.
        raise DeviceError(
            f"device {device}: cuda_graph and compile cannot be combined; "
            'use compile = "reduce-overhead" for compiled code replayed as CUDA graphs'
        )
    if opts.tf32 and opts.precision != "fp32":
        raise DeviceError(f"device {device}: tf32 only applies to precision fp32")
    return opts


def parse_tensorrt_options(options: Mapping[str, Any], device: str = "tensorrt") -> TensorRTOptions:
    """Validate a ``tensorrt`` device's ``[options]`` table."""
    fields = {f.name for f in dataclasses.fields(TensorRTOptions)} - {"drift"}
    check_keys(device, options, fields | _DRIFT_KEYS)
    d = TensorRTOptions()
    cache_dir = options.get("cache_dir")
    if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
        raise DeviceError(f"device {device}: option cache_dir must be a path string")
    atol = options.get("parity_atol")
    opts = TensorRTOptions(
        device_index=check_int(
            device, "device_index", options.get("device_index", d.device_index), 0
        ),
        precision=check_choice(
            device, "precision", options.get("precision", d.precision), PRECISIONS_TENSORRT
        ),
        tf32=check_bool(device, "tf32", options.get("tf32", d.tf32)),
        workspace_mib=check_int(
            device, "workspace_mib", options.get("workspace_mib", d.workspace_mib), 16
        ),
        optimization_level=check_int(
            device,
            "optimization_level",
            options.get("optimization_level", d.optimization_level),
            0,
            5,
        ),
        cache_dir=Path(cache_dir).expanduser() if cache_dir else None,
        include_transfers=check_bool(
            device, "include_transfers", options.get("include_transfers", d.include_transfers)
        ),
        telemetry=_telemetry(device, options.get("telemetry", d.telemetry)),
        drift=_drift(device, options),
        parity_check=check_bool(
            device, "parity_check", options.get("parity_check", d.parity_check)
        ),
        parity_atol=None if atol is None else check_float(device, "parity_atol", atol),
    )
    if opts.tf32 and opts.precision != "fp32":
        raise DeviceError(f"device {device}: tf32 only applies to precision fp32")
    return opts
