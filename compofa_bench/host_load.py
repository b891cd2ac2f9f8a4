"""What else ran on the host while a measurement was timed.

A latency measured on a busy host is slower than the truth, and nothing in the samples says so:
a steady competitor shifts every sample by the same amount, so the IQR stays small. This
module samples the kernel's CPU accounting (through psutil) around each measurement and
reports three figures for the CPUs the measurement ran on:

* ``other_cpu``: the fraction of those CPUs' capacity used by *other* processes, i.e. the
  busy time of those CPUs minus the CPU time of this process and its children, over
  ``wall x n_cpus``. 0.0 on a quiet host; one busy process sharing one pinned CPU gives ~0.5
  (the scheduler halves the CPU between them), and a busy process alone on the second of two
  CPUs gives ~0.5 too.
* ``steal``: the fraction of those CPUs' time the hypervisor gave to other guests (Linux
  ``steal``; ``None`` where the kernel does not report it).
* ``load_avg_1m``: the 1-minute load average at the end (``None`` where unavailable).

A measurement is *contended* when ``other_cpu`` or ``steal`` exceeds the protocol's
``contention_threshold`` (default 0.10: a tenth of the measured CPUs' capacity). The kernel
counts CPU time in ticks (10 ms on most Linux systems), so on measurements shorter than about
0.2 s per CPU the figure is coarse; the default protocols time at least 0.5 s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

#: Default ``Protocol.contention_threshold``: other processes' share of the measured CPUs.
DEFAULT_CONTENTION_THRESHOLD = 0.10


@dataclass(frozen=True)
class HostLoad:
    """The host's load on ``cpus`` over ``wall_s`` seconds (see the module docstring)."""

    other_cpu: float
    steal: float | None
    load_avg_1m: float | None
    cpus: tuple[int, ...]
    wall_s: float

    def contended(self, threshold: float) -> bool:
        return self.other_cpu > threshold or (self.steal is not None and self.steal > threshold)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpus"] = list(self.cpus)
        d["other_cpu"] = round(self.other_cpu, 4)
        d["steal"] = None if self.steal is None else round(self.steal, 4)
        d["wall_s"] = round(self.wall_s, 3)
        return d

    @staticmethod
    def worst(loads: Sequence[HostLoad]) -> HostLoad | None:
        """The round with the most other load (a row is as trustworthy as its worst round)."""
        return max(loads, key=lambda x: (x.other_cpu, x.steal or 0.0)) if loads else None


def measured_cpus(affinity: Sequence[int] | None = None) -> tuple[int, ...]:
    """The CPUs a measurement runs on: ``affinity`` when the device pins one, else this
    process's affinity (all CPUs where the OS has no affinity call)."""
    if affinity:
        return tuple(sorted(int(c) for c in affinity))
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(psutil.cpu_count() or 1))


def _own_cpu_s() -> float:
    """CPU seconds of this process, its waited-for children and its live descendants."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            ct = child.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += ct.user + ct.system
    return total


def _cpu_busy_steal(cpus: Sequence[int]) -> tuple[float, float | None]:
    per = psutil.cpu_times(percpu=True)
    busy = 0.0
    steal: float | None = None
    for c in cpus:
        if c >= len(per):
            continue
        t = per[c]
        idle = t.idle + getattr(t, "iowait", 0.0)
        s = getattr(t, "steal", None)
        # guest time is already counted in user; steal is time this CPU did not get at all
        busy += (
            sum(t) - idle - (s or 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
        )
        if s is not None:
            steal = (steal or 0.0) + s
    return busy, steal


class LoadMeter:
    """Bracket a measurement: ``m = LoadMeter(cpus); ...; load = m.stop()``."""

    def __init__(self, cpus: Sequence[int]) -> None:
        self.cpus = tuple(cpus)
        self._t0 = time.monotonic()
        self._own0 = _own_cpu_s()
        self._busy0, self._steal0 = _cpu_busy_steal(self.cpus)

    def stop(self) -> HostLoad:
        wall = max(time.monotonic() - self._t0, 1e-6)
        own = _own_cpu_s() - self._own0
        busy, steal = _cpu_busy_steal(self.cpus)
        capacity = wall * max(len(self.cpus), 1)
        other = max(0.0, (busy - self._busy0) - own) / capacity
        steal_frac = None
        if steal is not None and self._steal0 is not None:
            steal_frac = max(0.0, steal - self._steal0) / capacity
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = None
        return HostLoad(min(other, 1.0), steal_frac, load, self.cpus, wall)


def wait_idle(
    max_wait_s: float,
    threshold: float,
    cpus: Sequence[int],
    say: Callable[[str], None],
    window_s: float = 0.5,
) -> HostLoad:
    """Wait until other processes use at most ``threshold`` of ``cpus`` over a ``window_s``
    window, or ``max_wait_s`` seconds have passed; say that it waits, and whether it gave up.
    Returns the last window's load."""
    t0 = time.monotonic()
    meter = LoadMeter(cpus)
    time.sleep(window_s)
    load = meter.stop()
    if not load.contended(threshold):
        return load
    say(
        f"waiting up to {max_wait_s:g} s for a quiet host: other processes use "
        f"{load.other_cpu:.0%} of CPUs {format_cpus(cpus)}"
    )
    while time.monotonic() - t0 < max_wait_s:
        meter = LoadMeter(cpus)
        time.sleep(min(window_s, max(max_wait_s - (time.monotonic() - t0), 0.05)))
        load = meter.stop()
        if not load.contended(threshold):
            say(f"host quiet after {time.monotonic() - t0:.1f} s")
            return load
    say(
        f"host still busy after {max_wait_s:g} s (other processes use {load.other_cpu:.0%}); "
        "measuring anyway, the row will be marked contended"
    )
    return load


def format_cpus(cpus: Sequence[int]) -> str:
    """``0-3,6`` for ``[0, 1, 2, 3, 6]``."""
    out: list[str] = []
    xs = sorted(set(cpus))
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ",".join(out)


def quietest_cpu(cpus: Sequence[int], window_s: float = 0.5) -> int:
    """The CPU of ``cpus`` that other processes used least over ``window_s`` seconds (the
    lowest-numbered among equals): where a one-thread measurement is least disturbed."""
    per0 = psutil.cpu_times(percpu=True)
    time.sleep(window_s)
    per1 = psutil.cpu_times(percpu=True)

    def busy(c: int) -> float:
        if c >= len(per0) or c >= len(per1):
            return float("inf")
        a, b = per0[c], per1[c]
        return (sum(b) - b.idle - getattr(b, "iowait", 0.0)) - (
            sum(a) - a.idle - getattr(a, "iowait", 0.0)
        )

    return min(sorted(cpus), key=busy)
