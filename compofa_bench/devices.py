"""Devices: named TOML files that say which adapter runs a measurement and how.

A device file::

    name = "cpu-ort-1t"
    adapter = "cpu-ort"
    description = "ONNX Runtime on the CPU, 1 intra-op thread"

    [options]          # adapter-specific, passed to the adapter as a dict
    threads = 1

    [protocol]         # overrides of compofa_bench.measure.Protocol defaults
    min_runs = 20
    batch_size = 1     # a top-level batch_size = N is accepted too

A top-level ``shares_host_cpus = false`` says that the device's timing does not run on this
host's CPUs (a GPU, a phone over ADB): its timing runs may then overlap with a CPU device's,
and they take a lock named after the device instead of the host's CPU locks. Default: true.

Where names are looked up, first match wins:

1. directories in ``$COMPOFA_BENCH_DEVICES`` (``os.pathsep``-separated);
2. ``./devices`` in the current working directory;
3. the devices shipped with the package (``compofa_bench/devices_builtin``, a link to the
   repository's ``devices/`` directory that wheels and sdists copy as real files).

Anything ending in ``.toml`` or containing a path separator is read as a path instead.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compofa_bench.errors import DeviceError, MeasurementError
from compofa_bench.measure import Protocol

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


_PACKAGE_DIR = Path(__file__).resolve().parent
_TOP_KEYS = {
    "name", "adapter", "description", "options", "protocol", "batch_size", "shares_host_cpus",
}  # fmt: skip


#: Runtime adapters, looked up by the ``adapter = "..."`` value of a device file. Values are
#: ``"module:Class"`` strings so that a runtime's heavy packages load only when a device using it
#: is opened (:func:`compofa_bench.adapters.open_adapter`). Add a runtime with one line here
#: (see docs/adapters.md).
ADAPTERS: dict[str, str] = {
    "cpu-ort": "compofa_bench.adapters.ort_cpu:OrtCpuAdapter",
    "cuda-torch": "compofa_bench.adapters.cuda_torch:CudaTorchAdapter",
    "tensorrt": "compofa_bench.adapters.tensorrt:TensorRTAdapter",
    "tflite-local": "compofa_bench.adapters.tflite_local:TfliteLocalAdapter",
    "android-adb": "compofa_bench.adapters.android_adb:AndroidAdbAdapter",
}


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    adapter: str
    options: Mapping[str, Any] = field(default_factory=dict)
    protocol: Protocol = field(default_factory=Protocol)
    path: Path | None = None
    description: str = ""
    #: False: timing does not use this host's CPUs (GPU, phone); see the module docstring
    shares_host_cpus: bool = True

    def with_protocol(self, protocol: Protocol) -> DeviceSpec:
        return dataclasses.replace(self, options=dict(self.options), protocol=protocol)

    def with_options(self, **options: Any) -> DeviceSpec:
        return dataclasses.replace(self, options={**self.options, **options})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "adapter": self.adapter,
            "description": self.description,
            "options": dict(self.options),
            "protocol": self.protocol.to_dict(),
            "path": str(self.path) if self.path else None,
            "shares_host_cpus": self.shares_host_cpus,
        }


def search_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("COMPOFA_BENCH_DEVICES", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "devices")
    dirs.append(_PACKAGE_DIR / "devices_builtin")
    # An editable install whose link did not survive (e.g. a checkout without symlinks).
    dirs.append(_PACKAGE_DIR.parent / "devices")
    seen: list[Path] = []
    for d in dirs:
        if d.is_dir() and all(not _same(d, s) for s in seen):
            seen.append(d)
    return seen


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def list_devices() -> list[DeviceSpec]:
    """Every device found in the search directories (first one wins for a name); files that do
    not parse are skipped here and reported by ``load_device``."""
    found: dict[str, DeviceSpec] = {}
    for d in search_dirs():
        for path in sorted(d.glob("*.toml")):
            try:
                spec = load_device_file(path)
            except DeviceError:
                continue
            found.setdefault(spec.name, spec)
    return sorted(found.values(), key=lambda s: s.name)


def load_device(name_or_path: str | Path) -> DeviceSpec:
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text or (os.altsep and os.altsep in text):
        return load_device_file(Path(text))
    for d in search_dirs():
        for path in sorted(d.glob("*.toml")):
            if path.stem == text:
                spec = load_device_file(path)
                if spec.name == text:
                    return spec
    for spec in list_devices():
        if spec.name == text:
            return spec
    known = ", ".join(s.name for s in list_devices()) or "none"
    raise DeviceError(f"unknown device {text!r}; known devices: {known} (or give a .toml path)")


def load_device_file(path: Path) -> DeviceSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise DeviceError(f"device file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceError(f"cannot read device file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeviceError(f"device file {path} is not valid TOML: {exc}") from None
    return parse_device(raw, path)


def parse_device(raw: Mapping[str, Any], path: Path | None = None) -> DeviceSpec:
    where = f"device file {path}" if path else "device"
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise DeviceError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = raw.get("name", path.stem if path else None)
    if not isinstance(name, str) or not name:
        raise DeviceError(f"{where}: 'name' must be a non-empty string")
    adapter = raw.get("adapter")
    if not isinstance(adapter, str):
        raise DeviceError(f"{where}: 'adapter' is required (one of {', '.join(_adapter_kinds())})")
    if adapter not in _adapter_kinds():
        raise DeviceError(
            f"{where}: unknown adapter {adapter!r}; known: {', '.join(_adapter_kinds())}"
        )
    options = raw.get("options", {})
    proto_raw = dict(raw.get("protocol", {}))
    if not isinstance(options, Mapping) or not isinstance(raw.get("protocol", {}), Mapping):
        raise DeviceError(f"{where}: [options] and [protocol] must be tables")
    if "batch_size" in raw:
        proto_raw.setdefault("batch_size", raw["batch_size"])
    try:
        protocol = Protocol.from_dict(proto_raw)
    except MeasurementError as exc:
        raise DeviceError(f"{where}: {exc}") from None
    description = raw.get("description", "")
    shares = raw.get("shares_host_cpus", True)
    if not isinstance(shares, bool):
        raise DeviceError(f"{where}: 'shares_host_cpus' must be true or false")
    return DeviceSpec(name, adapter, dict(options), protocol, path, str(description), shares)


def _adapter_kinds() -> list[str]:
    return sorted(ADAPTERS)
