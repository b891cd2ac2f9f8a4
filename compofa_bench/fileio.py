"""Atomic file writes: readers (and a rerun after a crash or Ctrl-C) never see half a file.

Every writer in the project goes through :func:`atomic_path`: write to a temporary file in the
destination's directory, then ``os.replace`` it over the destination, which is atomic on POSIX
file systems. On any failure the temporary file is removed and the old file is left intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _default_mode() -> int:
    # mkstemp creates 0600; results, tables and models are ordinary shared files.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path, mode: int | None = None, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, publish it as ``path``.

    ``mode`` defaults to 0666 minus the umask. The temporary file is 0600 until it is
    published, so with ``mode=0o600`` (private keys) no one else can ever read the data.
    ``durable`` fsyncs the data before the rename (checkpoints: a power cut must not leave an
    empty file behind).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, _default_mode() if mode is None else mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, mode: int | None = None) -> Path:
    with atomic_path(path, mode) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")
