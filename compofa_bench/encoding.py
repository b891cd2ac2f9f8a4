"""Fixed-length feature vectors of architectures, for accuracy predictors.

Two layouts share one implementation:

- OFA's 128-d layout (:meth:`Encoder.ofa`), the input of OFA's pretrained ``acc_predictor.pth``:
  per layer slot a kernel one-hot over {3,5,7}, then per slot an expand one-hot over {3,4,6},
  then 8 resolution one-hots at index ``(r - 112) // 16``. Slots beyond a stage's depth are all
  zero.
- A general layout (:meth:`Encoder.for_space`) for any stage layout and resolution set:
  one-hots sized by the space's own kernel and expand choices and one resolution one-hot per
  configured resolution.

Encoding is vectorized over arrays of genes so that a whole population costs one numpy pass.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compofa_bench.errors import PredictorError
from compofa_bench.spaces import MBV3_STAGE_SIZES, Arch, SearchSpace

#: OFA's resolution one-hot: 8 buckets of 16 pixels starting at 112.
OFA_RES_BASE = 112
OFA_RES_STEP = 16
OFA_RES_SLOTS = 8


@dataclass(frozen=True)
class ArchArrays:
    """A batch of archs as integer arrays: ``ks``/``e`` (n, slots), ``d`` (n, stages), ``r`` (n,)."""

    ks: np.ndarray
    e: np.ndarray
    d: np.ndarray
    r: np.ndarray

    @classmethod
    def from_archs(cls, archs: Sequence[Arch]) -> ArchArrays:
        if not archs:
            raise PredictorError("no architectures to encode")
        layout = archs[0].stage_sizes
        if any(a.stage_sizes != layout for a in archs):
            raise PredictorError("archs in one batch must share one stage layout")
        ks = np.array([a.ks for a in archs], dtype=np.int64)
        e = np.array([a.e for a in archs], dtype=np.int64)
        d = np.array([a.d for a in archs], dtype=np.int64)
        r = np.array([a.resolution for a in archs], dtype=np.int64)
        return cls(ks, e, d, r)

    def __len__(self) -> int:
        return int(self.r.shape[0])


def take(a: ArchArrays, idx: np.ndarray) -> ArchArrays:
    """The rows ``idx`` of ``a``."""
    return ArchArrays(a.ks[idx], a.e[idx], a.d[idx], a.r[idx])


def fill_inactive(values: np.ndarray, d: np.ndarray, stage_sizes: Sequence[int]) -> np.ndarray:
    """Per-slot ``values`` (n, slots) with every inactive slot holding its stage's last active
    value: :class:`~compofa_bench.spaces.Arch`'s normalization, under which rows that run the
    same layers are equal and deepening a stage repeats its last layer."""
    pos = np.concatenate([np.arange(s) for s in stage_sizes])
    stage_of_slot = np.repeat(np.arange(len(stage_sizes)), stage_sizes)
    src = (np.arange(len(pos)) - pos)[None, :] + np.minimum(pos[None, :], d[:, stage_of_slot] - 1)
    return np.take_along_axis(values, src, 1)


def active_mask(d: np.ndarray, stage_sizes: Sequence[int]) -> np.ndarray:
    """Boolean (n, slots): which layer slots run, given per-stage depths ``d`` (n, stages)."""
    pos = np.concatenate([np.arange(s) for s in stage_sizes])
    stage_of_slot = np.repeat(np.arange(len(stage_sizes)), stage_sizes)
    return pos[None, :] < d[:, stage_of_slot]


@dataclass(frozen=True)
class Encoder:
    """Maps archs to float32 feature vectors.

    ``resolution_mode`` is ``"ofa"`` (8 buckets at ``(r-112)//16``) or ``"onehot"`` (one slot
    per value of ``resolutions``, exact match required).
    """

    stage_sizes: tuple[int, ...]
    kernels: tuple[int, ...]
    expands: tuple[int, ...]
    resolution_mode: str = "onehot"
    resolutions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.resolution_mode not in ("ofa", "onehot"):
            raise PredictorError(f"unknown resolution_mode {self.resolution_mode!r}")
        if self.resolution_mode == "onehot" and not self.resolutions:
            raise PredictorError("a one-hot resolution encoding needs at least one resolution")
        for name, vals in (("kernels", self.kernels), ("expands", self.expands)):
            if not vals or len(set(vals)) != len(vals):
                raise PredictorError(f"encoder {name} must be distinct values, got {vals}")

    # ----------------------------------------------------------------- constructors
    @classmethod
    def ofa(cls) -> Encoder:
        """The 128-d layout of OFA's pretrained MobileNetV3 accuracy predictor."""
        return cls(MBV3_STAGE_SIZES, (3, 5, 7), (3, 4, 6), "ofa", ())

    @classmethod
    def for_space(cls, space: SearchSpace, resolutions: Sequence[int] | None = None) -> Encoder:
        kernels = tuple(sorted({k for ch in space.kernel_choices for k in ch}))
        expands = tuple(sorted(set(space.expand_choices) | {e for _, e in space.coupling or ()}))
        res = tuple(sorted(set(resolutions if resolutions is not None else space.resolutions)))
        return cls(space.stage_sizes, kernels, expands, "onehot", res)

    # ----------------------------------------------------------------- layout
    @property
    def n_slots(self) -> int:
        return sum(self.stage_sizes)

    @property
    def n_res(self) -> int:
        return OFA_RES_SLOTS if self.resolution_mode == "ofa" else len(self.resolutions)

    @property
    def dim(self) -> int:
        return self.n_slots * (len(self.kernels) + len(self.expands)) + self.n_res

    def resolution_index(self, r: np.ndarray) -> np.ndarray:
        r = np.asarray(r, dtype=np.int64)
        if self.resolution_mode == "ofa":
            idx = (r - OFA_RES_BASE) // OFA_RES_STEP
            bad = (idx < 0) | (idx >= OFA_RES_SLOTS)
            if bad.any():
                raise PredictorError(
                    f"resolution {int(r[bad][0])} is outside OFA's predictor range "
                    f"[{OFA_RES_BASE}, {OFA_RES_BASE + OFA_RES_STEP * OFA_RES_SLOTS - 1}]"
                )
            return idx
        return index_of(r, self.resolutions, "resolution")

    # ----------------------------------------------------------------- encoding
    def encode(self, archs: Sequence[Arch] | ArchArrays) -> np.ndarray:
        """(n, dim) float32 features."""
        arr = archs if isinstance(archs, ArchArrays) else ArchArrays.from_archs(list(archs))
        return self.encode_arrays(arr.ks, arr.e, arr.d, arr.r)

    def encode_arrays(
        self, ks: np.ndarray, e: np.ndarray, d: np.ndarray, r: np.ndarray
    ) -> np.ndarray:
        n, slots = ks.shape
        if slots != self.n_slots or d.shape[1] != len(self.stage_sizes):
            raise PredictorError(
                f"archs have {slots} layer slots and {d.shape[1]} stages; the predictor expects "
                f"{self.n_slots} slots in stages {list(self.stage_sizes)}"
            )
        active = active_mask(d, self.stage_sizes)
        nk, ne = len(self.kernels), len(self.expands)
        out = np.zeros((n, self.dim), dtype=np.float32)
        # Inactive slots may hold any value (normalized copies); only active ones are looked up.
        k_idx = index_of(np.where(active, ks, self.kernels[0]), self.kernels, "kernel")
        e_idx = index_of(np.where(active, e, self.expands[0]), self.expands, "expand ratio")
        rr, cc = np.nonzero(active)
        out[rr, cc * nk + k_idx[rr, cc]] = 1.0
        out[rr, slots * nk + cc * ne + e_idx[rr, cc]] = 1.0
        out[np.arange(n), slots * (nk + ne) + self.resolution_index(r)] = 1.0
        return out

    # ----------------------------------------------------------------- serialization
    def to_dict(self) -> dict[str, Any]:
        return {
            "stage_sizes": list(self.stage_sizes),
            "kernels": list(self.kernels),
            "expands": list(self.expands),
            "resolution_mode": self.resolution_mode,
            "resolutions": list(self.resolutions),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Encoder:
        try:
            return cls(
                tuple(int(x) for x in data["stage_sizes"]),
                tuple(int(x) for x in data["kernels"]),
                tuple(int(x) for x in data["expands"]),
                str(data["resolution_mode"]),
                tuple(int(x) for x in data.get("resolutions", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PredictorError(f"invalid encoder config in predictor file: {exc}") from None


@functools.lru_cache(maxsize=64)
def _dense_table(alphabet: tuple[int, ...]) -> np.ndarray:
    """value -> index (or -1) for small non-negative alphabets: one gather instead of a search."""
    if min(alphabet) <= 0:
        raise PredictorError(f"gene values must be positive, got {list(alphabet)}")
    table = np.full(max(alphabet) + 2, -1, dtype=np.int64)
    table[list(alphabet)] = np.arange(len(alphabet))
    return table


def index_of(values: np.ndarray, alphabet: Sequence[int], what: str) -> np.ndarray:
    """Index of each value in ``alphabet``; a clear error for any value outside it."""
    table = _dense_table(tuple(int(a) for a in alphabet))
    values = np.asarray(values, dtype=np.int64)
    # clip mode sends negatives to index 0, which is -1 too: alphabets hold positive values
    idx = table.take(values, mode="clip")
    bad = idx < 0
    if bad.any():
        raise PredictorError(
            f"{what} {int(values[bad].flat[0])} is not one the predictor was built for: "
            f"{list(alphabet)}"
        )
    return idx
