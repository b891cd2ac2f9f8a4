"""Run-state checkpoints: atomic writes, RNG capture and restore."""

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


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise TrainError(f"checkpoint {p} does not exist")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise TrainError(f"cannot read checkpoint {p}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise TrainError(f"{p} is not a compofa-bench training checkpoint")
    return obj


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
