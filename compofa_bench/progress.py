"""Progress reporting: the library calls one callback; only the CLI draws.

Long loops (profiling, building and validating a lookup table, a measured-latency search,
exports, training epochs) report through a :data:`ProgressFn`, a plain callable that receives
frozen :class:`ProgressEvent` records. ``None`` means silent. The command line turns the
events into ``rich`` progress bars (``compofa_bench/cli/progress.py``); a notebook or a test
can collect them in a list. The library never imports ``rich``.

Several tasks may report through the same callback at once (one worker thread per device
when profiling several devices): an event names its task, and a callback shared by threads
must be thread-safe (the CLI's is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """Where one task stands.

    ``task`` names the bar (a device name, ``"evolution"``, ``"teacher epoch 1/3"``);
    ``done`` of ``total`` items are finished (``total`` None: unknown); ``current`` says what is
    in hand or the latest figures. ``finished`` marks the task's last event; a ``summary`` on it
    is one line that may replace the bar (a finished training epoch)."""

    task: str
    done: int
    total: int | None
    current: str = ""
    finished: bool = False
    summary: str = ""


#: What the library calls with each event.
ProgressFn = Callable[[ProgressEvent], None]


def report(progress: ProgressFn | None, event: ProgressEvent) -> None:
    """Send ``event`` when there is a callback (the one None check every loop would repeat)."""
    if progress is not None:
        progress(event)


__all__ = ["ProgressEvent", "ProgressFn", "report"]
