"""What a phone is and what state it is in: properties, CPU frequencies, temperatures.

Latency on a phone depends on which cores run the model, at what frequency, and how hot the SoC
is (thermal throttling lowers frequencies within seconds of sustained load). So every
measurement records the phone's identity once (``getprop``, per-core maximum frequency) and its
state before and after each model (per-core current frequency and governor, every thermal zone).
Everything is read with one shell command each, from sysfs paths that exist on every Android
kernel; missing files are simply left out.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compofa_bench.adapters.android_transport import AdbConnection

#: getprop keys kept in the fingerprint (identity of the phone and its software).
IDENTITY_PROPS = (
    "ro.product.manufacturer",
    "ro.product.model",
    "ro.product.device",
    "ro.soc.manufacturer",
    "ro.soc.model",
    "ro.board.platform",
    "ro.hardware",
    "ro.build.version.release",
    "ro.build.version.sdk",
    "ro.build.fingerprint",
    "ro.product.cpu.abi",
)

_PROP_LINE = re.compile(r"^\[(?P<key>[^\]]+)\]: \[(?P<value>.*)\]\s*$")

CPU_COMMAND = (
    "for c in /sys/devices/system/cpu/cpu[0-9]*; do "
    'echo "$(basename $c) '
    "$(cat $c/cpufreq/cpuinfo_max_freq 2>/dev/null || echo -) "
    "$(cat $c/cpufreq/scaling_cur_freq 2>/dev/null || echo -) "
    '$(cat $c/cpufreq/scaling_governor 2>/dev/null || echo -)"; done'
)
THERMAL_COMMAND = (
    "for z in /sys/class/thermal/thermal_zone*; do "
    'echo "$(basename $z) $(cat $z/temp 2>/dev/null || echo -) $(cat $z/type 2>/dev/null)"; done'
)


def parse_getprop(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        m = _PROP_LINE.match(line.strip())
        if m:
            out[m["key"]] = m["value"]
    return out


@dataclass(frozen=True)
class CpuState:
    cpu: str
    max_khz: int | None
    cur_khz: int | None
    governor: str | None


def parse_cpus(text: str) -> list[CpuState]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].startswith("cpu"):
            continue
        out.append(CpuState(parts[0], _int(parts[1]), _int(parts[2]), _str(parts[3])))
    return sorted(out, key=lambda c: int(c.cpu[3:]) if c.cpu[3:].isdigit() else 0)


def parse_thermal(text: str) -> dict[str, float]:
    """``{"<zone>:<type>": celsius}``. Kernels report millidegrees; a few zones report degrees
    or deci-degrees, told apart by magnitude. Disabled zones (negative, absurd) are dropped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) < 2 or not parts[0].startswith("thermal_zone"):
            continue
        raw = _int(parts[1])
        if raw is None:
            continue
        celsius = raw / 1000.0 if abs(raw) >= 1000 else (raw / 10.0 if abs(raw) > 200 else raw)
        if not -40.0 <= celsius <= 150.0:
            continue
        kind = parts[2].strip() if len(parts) > 2 else ""
        out[f"{parts[0]}:{kind}" if kind else parts[0]] = round(celsius, 2)
    return out


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _str(text: str) -> str | None:
    return None if text == "-" else text


def identity(conn: AdbConnection) -> dict[str, Any]:
    """Stable facts about the phone (for the fingerprint)."""
    props = parse_getprop(conn.check("getprop", timeout_s=30))
    cpus = parse_cpus(conn.check(CPU_COMMAND, timeout_s=30))
    return {
        "props": {k: props[k] for k in IDENTITY_PROPS if k in props},
        "n_cpus": len(cpus),
        "cpu_max_khz": [c.max_khz for c in cpus],
    }


def state(conn: AdbConnection) -> dict[str, Any]:
    """Volatile state: current frequency and governor per core, temperatures."""
    cpus = parse_cpus(conn.check(CPU_COMMAND, timeout_s=30))
    return {
        "time": time.time(),
        "cpu_cur_khz": [c.cur_khz for c in cpus],
        "governors": sorted({c.governor for c in cpus if c.governor}),
        "temperatures_c": parse_thermal(conn.check(THERMAL_COMMAND, timeout_s=30)),
    }


def max_temperature(temps: dict[str, float], zone_pattern: str | None) -> float | None:
    pattern = re.compile(zone_pattern) if zone_pattern else None
    chosen = [t for name, t in temps.items() if pattern is None or pattern.search(name)]
    return max(chosen) if chosen else None


@dataclass(frozen=True)
class CooldownRule:
    """Wait until the hottest matching thermal zone is below ``below_c`` (checked every
    ``poll_s``), at most ``max_wait_s``; ``zones`` is a regex on ``"<zone>:<type>"``."""

    below_c: float
    zones: str | None = None
    max_wait_s: float = 300.0
    poll_s: float = 5.0


def cool_down(
    read_temps: Callable[[], dict[str, float]],
    rule: CooldownRule,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Apply ``rule``; returns what happened (waited seconds, start/end temperature, whether it
    gave up) for the measurement's metadata."""
    start = clock()
    first = max_temperature(read_temps(), rule.zones)
    current = first
    while current is not None and current >= rule.below_c:
        if clock() - start >= rule.max_wait_s:
            return {
                "waited_s": round(clock() - start, 1),
                "start_c": first,
                "end_c": current,
                "timed_out": True,
            }
        sleep(rule.poll_s)
        current = max_temperature(read_temps(), rule.zones)
    return {
        "waited_s": round(clock() - start, 1),
        "start_c": first,
        "end_c": current,
        "timed_out": False,
    }
