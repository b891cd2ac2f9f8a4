"""The environment fingerprint saved with every measurement.

It has two parts:

* **stable**: what makes two measurements comparable, i.e. "the same device": CPU model, core
  counts, machine architecture, OS, the adapter's description (runtime and version, thread
  settings, affinity, precision, ...). Its hash keys resume and memoization.
* **volatile**: what is worth knowing but changes from run to run and must not split the
  results: frequencies and governor, temperatures, load, kernel release, Python version,
  hostname. Stored, never hashed.

The hostname is volatile on purpose: two identical machines with identical settings are the
same device for latency purposes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

_SYS_CPU = Path("/sys/devices/system/cpu")


def stable_part(
    adapter_description: dict[str, Any] | None = None, host: bool = True
) -> dict[str, Any]:
    """Host facts that identify the device, plus the adapter's own description. ``host=False``
    (remote adapters) keeps only the adapter's description."""
    if not host:
        return {"adapter": adapter_description or {}}
    return {
        "cpu_model": cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": _physical_cores(),
        "machine": platform.machine(),
        "os": platform.system(),
        "adapter": adapter_description or {},
    }


def volatile_part() -> dict[str, Any]:
    """Facts that change between runs. Everything unreadable is simply absent."""
    out: dict[str, Any] = {
        "hostname": platform.node(),
        "host_cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "process_affinity": _process_affinity(),
    }
    gov = _read(_SYS_CPU / "cpu0/cpufreq/scaling_governor")
    if gov:
        out["governor"] = gov
    freqs = cpu_freqs_mhz()
    if freqs:
        out["freq_mhz"] = freqs
    temps = temperatures_c()
    if temps:
        out["temp_c"] = temps
    with contextlib.suppress(OSError):
        out["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    try:
        import psutil

        out["cpu_percent"] = psutil.cpu_percent(interval=None)
        out["mem_available_mb"] = round(psutil.virtual_memory().available / 2**20)
    except Exception:  # psutil is a core dependency, but a sandbox may forbid /proc reads
        pass
    return out


def stable_hash(stable: dict[str, Any]) -> str:
    text = json.dumps(stable, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fingerprint(
    adapter_description: dict[str, Any] | None = None,
    protocol: dict[str, Any] | None = None,
    host: bool = True,
) -> dict[str, Any]:
    """The full fingerprint: ``{"stable_hash", "stable", "volatile", "protocol"}``. The host's
    facts are always in ``volatile``; with ``host`` they are in ``stable`` too."""
    stable = stable_part(adapter_description, host)
    return {
        "stable_hash": stable_hash(stable),
        "stable": stable,
        "volatile": volatile_part(),
        "protocol": protocol or {},
    }


# =============================================================================== readers


def cpu_model() -> str:
    text = _read(Path("/proc/cpuinfo"))
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Processor", "cpu model"):
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_freqs_mhz() -> list[int]:
    """Current frequency of each CPU, from cpufreq; empty where it is not exposed."""
    out = []
    for i in range(os.cpu_count() or 0):
        v = _read(_SYS_CPU / f"cpu{i}/cpufreq/scaling_cur_freq")
        if v and v.isdigit():
            out.append(int(v) // 1000)
    return out


def temperatures_c() -> dict[str, float]:
    out: dict[str, float] = {}
    base = Path("/sys/class/thermal")
    try:
        zones = sorted(base.glob("thermal_zone*"))
    except OSError:
        return out
    for zone in zones:
        t = _read(zone / "temp")
        kind = _read(zone / "type") or zone.name
        if t and t.lstrip("-").isdigit():
            out[f"{zone.name}:{kind}"] = int(t) / 1000.0
    return out


def _physical_cores() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except Exception:
        return None


def _process_affinity() -> list[int] | None:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
