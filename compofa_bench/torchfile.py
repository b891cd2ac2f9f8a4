"""Reading torch files safely: the one place the package calls ``torch.load``.

Checkpoints and predictor files come from the web. An unrestricted ``torch.load`` unpickles
arbitrary objects, and a pickle's ``__reduce__`` can run any function (``os.system``)
while it loads. Every file is therefore loaded with ``weights_only=True``: tensors, numbers,
strings and plain containers only. A file that needs more is refused before anything in it
runs, with one line that says so.

Checks come in the order a user can fix them: the path exists, is a file, starts like a torch
file (zip archive or legacy pickle), then loads weights-only.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from compofa_bench.errors import CheckpointError, CompofaError

#: The first bytes of a torch file: a zip archive (torch >= 1.6) or a legacy pickle stream.
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def check_path(path: str | Path, what: str = "checkpoint") -> Path:
    """``path`` as a Path if it names an existing regular file, else :class:`CheckpointError`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{what} {p} does not exist")
    if p.is_dir():
        raise CheckpointError(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise CheckpointError(f"{what} {p} is not a regular file")
    try:
        with p.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        raise CheckpointError(
            f"{what} {p} is not a torch file (it starts with {head!r}, not a zip archive or "
            "a pickle)"
        )
    return p


def load(
    path: str | Path,
    what: str = "checkpoint",
    error: type[CompofaError] = CheckpointError,
    safe_globals: Iterable[Any] = (),
) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, every failure one ``error`` line.

    ``safe_globals`` allow-lists extra classes for this one load (old training checkpoints
    hold numpy arrays); nothing else outside torch's weights-only set is ever unpickled.
    """
    import torch

    try:
        p = check_path(path, what)
    except CheckpointError as exc:
        raise error(str(exc)) from None
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise error(_unsafe_message(p, what, str(exc))) from None
    except (RuntimeError, EOFError, ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:
        # Truncated and foreign files raise all of these (a KeyError for a pickle whose
        # persistent ids are not torch storages).
        raise error(f"cannot read {what} {p}: {_first_line(exc)}") from None
    except Exception as exc:  # any other unpickling failure of a foreign file
        raise error(f"cannot read {what} {p}: {type(exc).__name__}: {_first_line(exc)}") from None


def _unsafe_message(p: Path, what: str, text: str) -> str:
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m is None:
        # The first line is torch's generic advice to load unrestricted: not ours to give.
        detail = next((ln for ln in text.splitlines()[1:] if ln.strip()), _first_line(text))
        return f"cannot read {what} {p} weights-only: {detail.strip()}"
    return (
        f"{what} {p} holds a Python object ({m.group(1)}) besides tensors; it was not "
        "loaded (files are read with weights_only=True, so nothing in them runs). If you "
        "trust the file, re-save its state dict with torch.save(model.state_dict(), ...)"
    )


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__ if isinstance(exc, BaseException) else "unreadable"
    return text.splitlines()[0]
