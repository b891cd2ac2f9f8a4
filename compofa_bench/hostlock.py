"""One timing run per set of CPUs: a lock per (host, CPU), held for a whole timing run.

Two timing runs on the same CPUs slow each other down and both store wrong numbers, so every
timing run (``profile``, ``lut build``, ``lut validate``, the re-measure after ``search``)
takes the locks of the CPUs it runs on before it measures anything. One lock file per CPU
(``<cache>/locks/<host>-cpu<N>.lock``), taken in ascending order, so that runs on overlapping
CPU sets ({0} and {0,1}) exclude each other and cannot deadlock. A device that does not share
the host's CPUs (a GPU, a phone over ADB, when its TOML says ``shares_host_cpus = false``)
takes a lock named after the device instead.

The lock is ``flock``: the kernel releases it when its holder dies, however it dies (SIGKILL
included). The file records the holder's pid, its start time and its command so that a waiting
run can say whom it waits for, and so that a lock file left by a dead process is recognized
and taken over with a message. A lock file whose content cannot be read is overwritten by the
next holder, with a message.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

from compofa_bench.errors import LockBusyError


def lock_dir() -> Path:
    """``<cache>/locks`` (``$COMPOFA_BENCH_CACHE`` or ``~/.cache/compofa-bench``)."""
    from compofa_bench.convert import default_cache_dir

    return default_cache_dir() / "locks"


def cpu_lock_names(cpus: Sequence[int], host: str | None = None) -> list[str]:
    host = _safe(host or socket.gethostname())
    return [f"{host}-cpu{c}" for c in sorted(set(cpus))]


def device_lock_names(device: str, host: str | None = None) -> list[str]:
    return [f"{_safe(host or socket.gethostname())}-device-{_safe(device)}"]


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text) or "x"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as recorded in its file."""

    pid: int
    started: float  # process create time (epoch s): tells a live pid from a reused one
    command: str
    since: float

    def alive(self) -> bool:
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
            return False

    def describe(self) -> str:
        held = time.strftime("%H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} ({self.command}, since {held})"


def read_holder(path: Path) -> Holder | str | None:
    """The recorded holder; ``None`` for an empty/missing file; ``"corrupt"`` when unreadable."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return "corrupt"
    if not text.strip():
        return None
    try:
        d = json.loads(text)
        return Holder(int(d["pid"]), float(d["started"]), str(d["command"]), float(d["since"]))
    except (ValueError, KeyError, TypeError):
        return "corrupt"


def _me() -> dict[str, Any]:
    me = psutil.Process()
    cmd = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:3]))
    return {"pid": os.getpid(), "started": me.create_time(), "command": cmd or "python",
            "since": time.time()}  # fmt: skip


@contextlib.contextmanager
def hold(
    names: Sequence[str],
    *,
    wait: bool = True,
    timeout_s: float | None = None,
    say: Callable[[str], None] = lambda _m: None,
    directory: Path | None = None,
    poll_s: float = 0.2,
) -> Iterator[list[Path]]:
    """Hold the locks ``names`` (in sorted order) for the ``with`` block.

    ``wait=False``: raise :class:`LockBusyError` at once when one is held by another process.
    Otherwise wait (saying so once, naming the holder) until it is free, or until
    ``timeout_s`` seconds, then raise :class:`LockBusyError`.
    """
    d = directory or lock_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LockBusyError(f"cannot create the lock directory {d}: {exc}") from None
    files: list[IO[str]] = []
    paths: list[Path] = []
    try:
        for name in sorted(set(names)):
            path = d / f"{name}.lock"
            files.append(_acquire(path, wait, timeout_s, say, poll_s))
            paths.append(path)
        yield paths
    finally:
        for f in reversed(files):
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
                f.flush()
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)
            f.close()


def _acquire(
    path: Path, wait: bool, timeout_s: float | None, say: Callable[[str], None], poll_s: float
) -> IO[str]:
    try:
        # "a+": never truncates a file another process holds; created 0644 if missing
        f = open(path, "a+")  # noqa: SIM115 - closed by hold()
    except OSError as exc:
        raise LockBusyError(f"cannot open lock file {path}: {exc}") from None
    t0 = time.monotonic()
    told = False
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            holder = read_holder(path)
            who = holder.describe() if isinstance(holder, Holder) else "another process"
            if not wait:
                f.close()
                raise LockBusyError(
                    f"another timing run holds {path.name} ({who}); without --no-wait this "
                    "run would wait for it"
                ) from None
            if timeout_s is not None and time.monotonic() - t0 > timeout_s:
                f.close()
                raise LockBusyError(
                    f"gave up after {timeout_s:g} s waiting for {path.name} ({who})"
                ) from None
            if not told:
                say(f"waiting for another timing run on the same CPUs: {who} holds {path.name}")
                told = True
            time.sleep(poll_s)
    # we hold it: a recorded holder still in the file left without cleaning up
    previous = read_holder(path)
    if previous == "corrupt":
        say(f"lock file {path} was unreadable; overwriting it")
    elif isinstance(previous, Holder) and previous.pid != os.getpid():
        state = "alive" if previous.alive() else "dead"
        say(f"took over the stale lock {path.name} of {previous.describe()}, {state}")
    if told:
        say(f"got {path.name} after {time.monotonic() - t0:.1f} s")
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_me()))
    f.flush()
    return f


def process_owner() -> str:
    """``host:pid:start-time`` of this process: names the owner of a store claim."""
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}"


def owner_alive(owner: str) -> bool:
    """Whether the process named by :func:`process_owner` still runs. A claim of another host
    cannot be checked and counts as alive."""
    host, _, rest = owner.partition(":")
    pid, _, started = rest.partition(":")
    if host != socket.gethostname():
        return True
    try:
        return Holder(int(pid), float(started), "", 0.0).alive()
    except ValueError:
        return False
