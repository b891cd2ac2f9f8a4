"""GPU state around a measurement, read through NVML (``nvidia-ml-py``, the ``gpu`` extra).

A GPU's latency depends on its clocks, and its clocks on temperature, power cap and what else
runs on it. A snapshot before and after each model lets a reader see what was measured, and
:func:`drift_warnings` flags measurements during which the state moved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from compofa_bench.adapters.gpu_options import DriftThresholds
from compofa_bench.errors import DeviceError, MissingDependencyError


@dataclass(frozen=True)
class GpuSnapshot:
    """One reading of a GPU's state. Fields NVML cannot report on a card are ``None``."""

    name: str
    driver: str
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    temperature_c: float | None
    power_w: float | None
    memory_used_mib: float | None = None
    throttle_reasons: int | None = None
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _relative_change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before <= 0:
        return None
    return abs(after - before) / before


def drift_warnings(
    before: GpuSnapshot, after: GpuSnapshot, thresholds: DriftThresholds
) -> list[str]:
    """One human-readable line per quantity that moved beyond ``thresholds`` between the two
    snapshots. Empty when nothing moved (or NVML could not read it)."""
    out: list[str] = []
    for label, b, a in (
        ("SM clock", before.sm_clock_mhz, after.sm_clock_mhz),
        ("memory clock", before.mem_clock_mhz, after.mem_clock_mhz),
    ):
        change = _relative_change(b, a)
        if change is not None and change > thresholds.max_clock_change:
            out.append(
                f"{label} moved {b} -> {a} MHz ({change:.0%} > {thresholds.max_clock_change:.0%})"
                " during the measurement; lock clocks (nvidia-smi -lgc) for stable numbers"
            )
    if before.temperature_c is not None and after.temperature_c is not None:
        dt = after.temperature_c - before.temperature_c
        if abs(dt) > thresholds.max_temp_change_c:
            out.append(
                f"GPU temperature moved {before.temperature_c:g} -> {after.temperature_c:g} C "
                f"(|{dt:+g}| > {thresholds.max_temp_change_c:g} C) during the measurement; "
                "the card was not at a steady state (longer warmup or cooldown_s helps)"
            )
    return out


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        raise MissingDependencyError("nvidia-ml-py", "gpu", "GPU telemetry") from None
    return pynvml


class Telemetry:
    """An NVML session on one GPU. Open with :meth:`open`; ``None`` comes back in ``auto``
    mode when NVML is unusable, so measurement goes on without telemetry."""

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self._nvml = pynvml
        self._handle = handle

    @classmethod
    def open(cls, mode: str, uuid: str | None = None, index: int = 0) -> Telemetry | None:
        """``mode`` is ``on`` (fail when NVML is unusable), ``auto`` or ``off``. ``uuid``
        (from torch's device properties) picks the same card as CUDA even when
        ``CUDA_VISIBLE_DEVICES`` renumbers devices; ``index`` is the fallback."""
        if mode == "off":
            return None
        try:
            pynvml = _import_pynvml()
        except MissingDependencyError:
            if mode == "on":
                raise
            return None
        try:
            pynvml.nvmlInit()
            handle = None
            if uuid:
                try:
                    handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                except pynvml.NVMLError:
                    handle = None
            if handle is None:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as exc:
            if mode == "on":
                raise DeviceError(f"GPU telemetry: NVML is not usable here ({exc})") from None
            return None
        return cls(pynvml, handle)

    def _read(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(self._handle, *args)
        except self._nvml.NVMLError:
            return None

    def snapshot(self) -> GpuSnapshot:
        n = self._nvml
        name = self._read(n.nvmlDeviceGetName)
        try:
            driver = n.nvmlSystemGetDriverVersion()
        except n.NVMLError:
            driver = None
        power_mw = self._read(n.nvmlDeviceGetPowerUsage)
        mem = self._read(n.nvmlDeviceGetMemoryInfo)
        reasons_fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            n, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        return GpuSnapshot(
            name=_text(name) or "unknown",
            driver=_text(driver) or "unknown",
            sm_clock_mhz=self._read(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_SM),
            mem_clock_mhz=self._read(n.nvmlDeviceGetClockInfo, n.NVML_CLOCK_MEM),
            temperature_c=self._read(n.nvmlDeviceGetTemperature, n.NVML_TEMPERATURE_GPU),
            power_w=None if power_mw is None else power_mw / 1000.0,
            memory_used_mib=None if mem is None else mem.used / 2**20,
            throttle_reasons=None if reasons_fn is None else self._read(reasons_fn),
            wall_time=time.time(),
        )

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def telemetry_extra(
    before: GpuSnapshot | None, after: GpuSnapshot | None, thresholds: DriftThresholds
) -> dict[str, Any]:
    """What a Timing's ``extra`` carries: both snapshots and the drift warnings."""
    if before is None or after is None:
        return {}
    return {
        "telemetry": {"before": before.to_dict(), "after": after.to_dict()},
        "warnings": drift_warnings(before, after, thresholds),
    }
