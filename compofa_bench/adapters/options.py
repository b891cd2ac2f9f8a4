"""Device options: one frozen dataclass per adapter, and the validators they all share.

A device file's ``[options]`` table is checked once, by the parser of its adapter's options
class, wherever it is read: by the adapter when it opens (``profile``, ``search``, ...) and by
``devices show`` before anything is opened (:func:`compofa_bench.adapters.validate_options`).
So a device that ``devices show`` accepts is one that ``profile`` accepts, and the other way
round.

The validators take TOML values as they come and refuse what is not exactly the type asked
for: ``spinning = "false"`` is an error, not ``bool("false") == True``; ``threads = true`` is
not the integer 1. A typo in a key is an error naming the valid keys, never silently ignored.

Parsing is pure Python (no runtime is imported), so every rule is tested on any machine. The
GPU adapters' classes live in :mod:`compofa_bench.adapters.gpu_options` and use the same
validators.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from compofa_bench.errors import DeviceError
from compofa_bench.tflite_convert import PRECISIONS as TFLITE_PRECISIONS

#: ONNX opset of exported subnets (the one compofa_bench.convert uses by default).
DEFAULT_OPSET = 17

# ------------------------------------------------------------------------------ validators


def check_keys(device: str, options: Mapping[str, Any], allowed: set[str], kind: str = "") -> None:
    """Every key of ``options`` must be one of ``allowed``."""
    unknown = sorted(set(options) - allowed)
    if unknown:
        what = f"{kind} option(s)" if kind else "option(s)"
        raise DeviceError(
            f"device {device}: unknown {what} {', '.join(unknown)}; "
            f"valid options: {', '.join(sorted(allowed))}"
        )


def check_bool(device: str, key: str, value: Any) -> bool:
    """A TOML boolean; the string ``"false"`` is refused (``bool("false")`` would be True)."""
    if not isinstance(value, bool):
        raise DeviceError(f"device {device}: option {key} must be true or false, got {value!r}")
    return value


def check_int(device: str, key: str, value: Any, lo: int, hi: int | None = None) -> int:
    """An integer (not a boolean) in ``[lo, hi]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise DeviceError(f"device {device}: option {key} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise DeviceError(f"device {device}: option {key} must be {rng}, got {value}")
    return value


def check_float(device: str, key: str, value: Any, lo: float = 0.0) -> float:
    """A number (not a boolean) >= ``lo``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < lo:
        raise DeviceError(f"device {device}: option {key} must be a number >= {lo}, got {value!r}")
    return float(value)


def check_choice(device: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        raise DeviceError(
            f"device {device}: option {key} must be one of {', '.join(choices)}; got {value!r}"
        )
    return value


def check_path(device: str, key: str, value: Any) -> str | None:
    """An optional non-empty path string, ``~`` expanded."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise DeviceError(f"device {device}: option {key} must be a path string")
    return os.path.expanduser(value)


def check_str_list(device: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise DeviceError(f"device {device}: option {key} must be a list of strings")
    return tuple(value)


def field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# ------------------------------------------------------------------------------ cpu-ort

ORT_GRAPH_OPTIMIZATIONS = ("all", "extended", "basic", "disable")
ORT_TIMERS = ("wall", "thread_cpu")


@dataclass(frozen=True)
class OrtCpuOptions:
    """``[options]`` of an ``adapter = "cpu-ort"`` device (see compofa_bench/adapters/ort_cpu.py)."""

    #: intra-op threads; 0: one per physical core (resolved when the adapter opens)
    threads: int = 0
    inter_op_threads: int = 1
    graph_optimization: str = "all"
    affinity: tuple[int, ...] = ()
    spinning: bool = True
    parity_check: bool = True
    cache_dir: str | None = None
    opset: int = DEFAULT_OPSET
    timer: str = "wall"


def parse_ort_cpu_options(options: Mapping[str, Any], device: str = "cpu-ort") -> OrtCpuOptions:
    """Validate a ``cpu-ort`` device's ``[options]``; :class:`DeviceError` on any unknown key,
    wrong type, CPU outside this process's affinity or contradictory combination."""
    check_keys(device, options, field_names(OrtCpuOptions), "cpu-ort")
    d = OrtCpuOptions()
    affinity = options.get("affinity") or []
    if not isinstance(affinity, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) for c in affinity
    ):
        raise DeviceError(f"device {device}: affinity must be a list of CPU ids")
    if affinity and not hasattr(os, "sched_setaffinity"):
        raise DeviceError(f"device {device}: CPU affinity is not supported on this OS")
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if affinity and not set(affinity) <= set(available):
        raise DeviceError(f"device {device}: affinity {affinity} names CPUs outside {available}")
    opts = OrtCpuOptions(
        threads=check_int(device, "threads", options.get("threads", d.threads), 0),
        inter_op_threads=check_int(
            device, "inter_op_threads", options.get("inter_op_threads", d.inter_op_threads), 1
        ),
        graph_optimization=check_choice(
            device,
            "graph_optimization",
            options.get("graph_optimization", d.graph_optimization),
            ORT_GRAPH_OPTIMIZATIONS,
        ),
        affinity=tuple(sorted(affinity)),
        spinning=check_bool(device, "spinning", options.get("spinning", d.spinning)),
        parity_check=check_bool(device, "parity_check", options.get("parity_check", True)),
        cache_dir=check_path(device, "cache_dir", options.get("cache_dir")),
        opset=check_int(device, "opset", options.get("opset", d.opset), 7),
        timer=check_choice(device, "timer", options.get("timer", d.timer), ORT_TIMERS),
    )
    if opts.timer == "thread_cpu" and opts.threads != 1:
        raise DeviceError(
            f"device {device}: timer = 'thread_cpu' needs threads = 1 (with a thread "
            "pool the calling thread's CPU time misses the other threads' work)"
        )
    return opts


# ------------------------------------------------------------------------------ tflite-local


@dataclass(frozen=True)
class TfliteLocalOptions:
    """``[options]`` of an ``adapter = "tflite-local"`` device."""

    #: interpreter threads; 0: one per physical core (resolved when the adapter opens)
    threads: int = 1
    xnnpack: bool = True
    parity_check: bool = True
    cache_dir: str | None = None
    precision: str = "float32"


def parse_tflite_local_options(
    options: Mapping[str, Any], device: str = "tflite-local"
) -> TfliteLocalOptions:
    """Validate a ``tflite-local`` device's ``[options]``."""
    check_keys(device, options, field_names(TfliteLocalOptions), "tflite-local")
    d = TfliteLocalOptions()
    return TfliteLocalOptions(
        threads=check_int(device, "threads", options.get("threads", d.threads), 0),
        xnnpack=check_bool(device, "xnnpack", options.get("xnnpack", d.xnnpack)),
        parity_check=check_bool(device, "parity_check", options.get("parity_check", True)),
        cache_dir=check_path(device, "cache_dir", options.get("cache_dir")),
        precision=check_choice(
            device, "precision", options.get("precision", d.precision), TFLITE_PRECISIONS
        ),
    )


def physical_cores() -> int:
    """What ``threads = 0`` means: one thread per physical core."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


# ------------------------------------------------------------------------------ android-adb


@dataclass(frozen=True)
class AndroidAdbOptions:
    """``[options]`` of an ``adapter = "android-adb"`` device (see
    compofa_bench/adapters/android_adb.py and docs/android.md)."""

    serial: str
    benchmark_binary: str
    threads: int = 4
    cpu_mask: str | None = None
    xnnpack: bool = True
    gpu: bool = False
    op_profiling: bool = False
    extra_args: tuple[str, ...] = ()
    remote_dir: str = "/data/local/tmp"
    key_path: str | None = None
    connect_timeout_s: float | None = None
    auth_timeout_s: float | None = None
    command_timeout_s: float | None = None
    retries: int = 2
    cooldown_below_c: float | None = None
    cooldown_zones: str | None = None
    cooldown_max_wait_s: float | None = 300.0
    cooldown_poll_s: float | None = 5.0
    record_state: bool = True
    parity_check: bool = True
    cache_dir: str | None = None
    precision: str = "float32"


def _opt_float(device: str, key: str, value: Any) -> float | None:
    return None if value is None else check_float(device, key, value)


def parse_android_adb_options(
    options: Mapping[str, Any], device: str = "android-adb"
) -> AndroidAdbOptions:
    """Validate an ``android-adb`` device's ``[options]`` (types and values; whether the
    binary exists and the phone answers is checked when the adapter opens)."""
    check_keys(device, options, field_names(AndroidAdbOptions), "android-adb")
    serial = options.get("serial")
    if not isinstance(serial, str) or not serial.strip():
        raise DeviceError(f"device {device}: option serial is required (host:port or a USB serial)")
    binary = options.get("benchmark_binary")
    if not isinstance(binary, str) or not binary:
        raise DeviceError(
            f"device {device}: option benchmark_binary is required: the path of TFLite's "
            "benchmark_model for android_aarch64 (see docs/android.md)"
        )
    mask = str(options.get("cpu_mask", "") or "").lower().removeprefix("0x")
    if mask and not all(c in "0123456789abcdef" for c in mask):
        raise DeviceError(f'device {device}: cpu_mask must be hex like "f0", got {mask!r}')
    remote = str(options.get("remote_dir", "/data/local/tmp")).rstrip("/")
    if not remote.startswith("/"):
        raise DeviceError(f"device {device}: remote_dir must be an absolute path")
    zones = options.get("cooldown_zones")
    if zones is not None:
        import re

        if not isinstance(zones, str):
            raise DeviceError(f"device {device}: cooldown_zones must be a regex string")
        try:
            re.compile(zones)
        except re.error as exc:
            raise DeviceError(f"device {device}: cooldown_zones is not a regex: {exc}") from None
    d = AndroidAdbOptions(serial="", benchmark_binary="")
    n = {
        k: _opt_float(device, k, options.get(k, getattr(d, k)))
        for k in (
            "connect_timeout_s",
            "auth_timeout_s",
            "command_timeout_s",
            "cooldown_below_c",
            "cooldown_max_wait_s",
            "cooldown_poll_s",
        )
    }
    return AndroidAdbOptions(
        serial=serial.strip(),
        benchmark_binary=os.path.expanduser(binary),
        threads=check_int(device, "threads", options.get("threads", d.threads), 0),
        cpu_mask=mask or None,
        xnnpack=check_bool(device, "xnnpack", options.get("xnnpack", d.xnnpack)),
        gpu=check_bool(device, "gpu", options.get("gpu", d.gpu)),
        op_profiling=check_bool(device, "op_profiling", options.get("op_profiling", False)),
        extra_args=check_str_list(device, "extra_args", options.get("extra_args", [])),
        remote_dir=remote,
        key_path=check_path(device, "key_path", options.get("key_path")),
        retries=check_int(device, "retries", options.get("retries", d.retries), 0),
        cooldown_zones=zones or None,
        record_state=check_bool(device, "record_state", options.get("record_state", True)),
        parity_check=check_bool(device, "parity_check", options.get("parity_check", True)),
        cache_dir=check_path(device, "cache_dir", options.get("cache_dir")),
        precision=check_choice(
            device, "precision", options.get("precision", d.precision), TFLITE_PRECISIONS
        ),
        **n,
    )
