"""Runtime adapters, one module per runtime behind one protocol (:mod:`.base`).

:func:`open_adapter` turns a :class:`~compofa_bench.devices.DeviceSpec` into an open adapter,
importing the adapter's module only then (heavy runtimes load only when used). The registry of
adapter names is :data:`compofa_bench.devices.ADAPTERS` (a device file names its adapter; the
TOML reader checks the name without importing any runtime). See docs/adapters.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from compofa_bench.devices import ADAPTERS, DeviceSpec
from compofa_bench.errors import DeviceError

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter

__all__ = ["ADAPTERS", "adapter_class", "check_device", "open_adapter", "validate_options"]


def validate_options(spec: DeviceSpec) -> Any:
    """The device's ``[options]`` parsed into its adapter's frozen options dataclass, with the
    same checks the adapter makes when it opens (``devices show`` uses this, so it rejects
    exactly what ``profile`` rejects); :class:`DeviceError` naming the bad option otherwise.
    Imports no runtime."""
    from compofa_bench.adapters import gpu_options, options

    parsers: dict[str, Callable[[Mapping[str, Any], str], Any]] = {
        "cpu-ort": options.parse_ort_cpu_options,
        "tflite-local": options.parse_tflite_local_options,
        "android-adb": options.parse_android_adb_options,
        "cuda-torch": gpu_options.parse_cuda_torch_options,
        "tensorrt": gpu_options.parse_tensorrt_options,
    }
    parse = parsers.get(spec.adapter)
    if parse is None:
        raise DeviceError(f"unknown adapter {spec.adapter!r}; known: {', '.join(sorted(ADAPTERS))}")
    return parse(spec.options, spec.name)


def adapter_class(spec: DeviceSpec) -> type[Adapter]:
    """Import the adapter class lazily (heavy runtimes load only when used)."""
    target = ADAPTERS.get(spec.adapter)
    if target is None:
        raise DeviceError(f"unknown adapter {spec.adapter!r}; known: {', '.join(sorted(ADAPTERS))}")
    module_name, _, cls_name = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, cls_name)


def check_device(spec: DeviceSpec) -> DeviceSpec:
    """The one validation of a device's ``[options]``, without opening its runtime: every
    command that takes a device (``devices show``, ``profile``, ...) calls it, so they accept
    and refuse the same files (an adapter's constructor checks the same options again): the
    options parser of :func:`validate_options`, then the adapter's own ``check_options`` hook
    (e.g. android-adb: does the benchmark binary exist)."""
    validate_options(spec)
    adapter_class(spec).check_options(spec)
    return spec


def open_adapter(spec: DeviceSpec) -> Adapter:
    """Build the device's adapter (its constructor validates the options)."""
    return adapter_class(spec)(spec)
