"""Run-state checkpoints: atomic writes, RNG capture and restore.

A checkpoint holds tensors and plain data only (dicts, lists, numbers, strings), so it loads
with ``weights_only=True``: a crafted file cannot run code through ``--resume`` or
``--teacher``. The numpy RNG state, an array in ``np.random.get_state()``, is stored as a tensor
and plain fields. Checkpoints written before that (numpy arrays inside) still load: the three
numpy globals an array needs are allow-listed for that load, and nothing else.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compofa_bench.errors import TrainError
from compofa_bench.fileio import atomic_path

FORMAT = "compofa-bench-train/1"


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file, fsynced, then renamed: a crash or signal
    mid-write leaves the previous checkpoint intact."""
    with atomic_path(path, durable=True) as tmp:
        torch.save(obj, tmp)


#: Numpy array reconstruction, all a pre-weights-only checkpoint needs beyond torch's own set
#: (its numpy RNG state). Allow-listed for trainer checkpoints only.
_LEGACY_GLOBALS = (np.ndarray, np.dtype, np.dtypes.UInt32DType, np.dtypes.Float64DType)


def _legacy_globals() -> list[Any]:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [*_LEGACY_GLOBALS, _reconstruct]


def read(path: str | Path) -> Any:
    """Whatever ``path`` holds, loaded weights-only (a :class:`TrainError` otherwise)."""
    from compofa_bench import torchfile

    return torchfile.load(path, "checkpoint", TrainError, safe_globals=_legacy_globals())


def is_training_checkpoint(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load(path: str | Path) -> dict[str, Any]:
    obj = read(path)
    if not is_training_checkpoint(obj):
        raise TrainError(f"{path} is not a compofa-bench training checkpoint")
    return check_keys(obj, path, REQUIRED_KEYS)


def check_keys(obj: dict[str, Any], path: str | Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """``obj`` if it has every key in ``keys``; a :class:`TrainError` naming the first missing."""
    for key in keys:
        if key not in obj:
            raise TrainError(f"training checkpoint {path} lacks {key!r}: is it truncated?")
    return obj


#: What ``--resume`` and ``--teacher`` read from a training checkpoint.
REQUIRED_KEYS = ("recipe", "config", "world_size", "n_classes", "model", "position", "rng")


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_back(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state() -> dict[str, Any]:
    """``np.random.get_state()`` as a tensor and plain values (weights-only loadable)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "bit_generator": str(name),
        "key": torch.from_numpy(key.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(gauss),
    }


def _numpy_state_back(saved: Any) -> Any:
    if isinstance(saved, dict):
        key = saved["key"].numpy().astype(np.uint32)
        return (
            saved["bit_generator"],
            key,
            saved["pos"],
            saved["has_gauss"],
            saved["cached_gaussian"],
        )
    return saved  # a checkpoint from before: numpy's own tuple
