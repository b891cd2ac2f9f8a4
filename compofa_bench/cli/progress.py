"""The command line's one progress display: ``rich`` bars fed by the library's events.

The library reports through :data:`compofa_bench.progress.ProgressFn`; this module is the only
place that turns those events into bars (profile, lut build/validate, search, demo, predictor
and network training all use it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from compofa_bench.progress import ProgressEvent, ProgressFn


class RichProgress:
    """A :data:`ProgressFn` that draws one bar per task: name, bar, done/total, elapsed, ETA and
    what is in hand. Thread-safe (several devices report at once). A finished task with a
    summary is replaced by that summary line (long trainings have many epochs)."""

    def __init__(self) -> None:
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[current]}", style="dim"),
            console=Console(stderr=True),
            transient=False,
        )
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._started = False

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.bar.stop()

    def __call__(self, ev: ProgressEvent) -> None:
        with self._lock:
            if not self._started:
                # drawn from the first event on: a command that fails before any work (bad
                # input, a held host lock) prints its one error line and nothing else
                self.bar.start()
                self._started = True
            task = self._tasks.get(ev.task)
            if task is None:
                task = self.bar.add_task(
                    ev.task, total=ev.total, completed=ev.done, current=ev.current
                )
                self._tasks[ev.task] = task
            else:
                self.bar.update(task, total=ev.total, completed=ev.done, current=ev.current)
            if ev.finished and ev.summary:
                self.bar.remove_task(task)
                del self._tasks[ev.task]
                self.bar.console.print(f"{ev.task}: {ev.summary}")


@contextmanager
def progress_display(enabled: bool = True) -> Iterator[ProgressFn | None]:
    """``with progress_display(not args.no_progress) as progress:``: a drawing callback, or
    None (silent) when disabled."""
    if not enabled:
        yield None
        return
    with RichProgress() as display:
        yield display
