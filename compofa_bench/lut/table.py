"""The latency lookup table: format, provenance, prediction.

A :class:`LatencyTable` holds, for each input resolution, a mapping from layer key (see
:mod:`compofa_bench.lut.keys`) to measured statistics, plus the provenance of the
measurement (device fingerprint, runtime, protocol, batch size) and an optional calibration.
Entries are kept per resolution because OFA's tables are, and because a layer that two
resolutions share (the classifier, or deep layers of 220 and 224) was measured separately in
each OFA file: merging them would make import/export lossy.

A network's predicted latency is the sum of its layers' statistic (``mean`` for imported OFA
tables, to match OFA; ``median`` for tables built here), optionally calibrated as
``overhead_ms + scale_r * sum`` with ``scale_r`` per resolution (or one global scale).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from compofa_bench.errors import LutError
from compofa_bench.fileio import atomic_write_text
from compofa_bench.lut.keys import BaseLayout, layout
from compofa_bench.spaces import Arch

FORMAT = "compofa-bench-latency-table"
FORMAT_VERSION = 1
STATISTICS = ("mean", "median")
_FILE_MODE = 0o644


@dataclass(frozen=True)
class LutEntry:
    """Statistics of one layer at one resolution, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    median_ms: float | None = None

    def value(self, statistic: str) -> float:
        if statistic == "median" and self.median_ms is not None:
            return self.median_ms
        return self.mean_ms

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count, "mean_ms": self.mean_ms, "std_ms": self.std_ms}
        if self.median_ms is not None:
            out["median_ms"] = self.median_ms
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], where: str) -> LutEntry:
        try:
            median = raw.get("median_ms")
            return cls(
                count=int(raw["count"]),
                mean_ms=float(raw["mean_ms"]),
                std_ms=float(raw["std_ms"]),
                median_ms=None if median is None else float(median),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LutError(f"{where}: entry needs count, mean_ms, std_ms numbers ({exc})") from None


@dataclass(frozen=True)
class Calibration:
    """``measured ≈ overhead_ms + scale_r * predicted``, fitted on one set of archs and
    validated on another (``validation`` holds the figures on that separate set).

    ``scale_r`` is ``scale_by_resolution[r]`` for the arch's resolution ``r``; ``scale`` is the
    global form's scale (an empty ``scale_by_resolution``, as in tables written before
    per-resolution calibration) and the fallback for a resolution the fit did not see.
    Per resolution because the layer sum's bias depends on it (see docs/lut.md)."""

    overhead_ms: float
    scale: float
    fitted_on: int
    validation: dict[str, Any] = field(default_factory=dict)
    scale_by_resolution: dict[int, float] = field(default_factory=dict)
    #: the device whose end-to-end measurements it was fitted on (None: unknown, older files)
    device: str | None = None

    def __post_init__(self) -> None:
        # JSON object keys are strings; normalize so lookups by int resolution always hit.
        norm = {int(r): float(s) for r, s in sorted(self.scale_by_resolution.items())}
        object.__setattr__(self, "scale_by_resolution", norm)

    @property
    def form(self) -> str:
        return "per-resolution" if self.scale_by_resolution else "global"

    def scale_for(self, resolution: int) -> float:
        return self.scale_by_resolution.get(int(resolution), self.scale)

    def apply(
        self, predicted_ms: np.ndarray, resolutions: Sequence[int] | np.ndarray | None = None
    ) -> np.ndarray:
        """Calibrated latency of layer sums ``predicted_ms``; ``resolutions`` (one per value)
        is needed only by the per-resolution form."""
        p = np.asarray(predicted_ms, dtype=float)
        if not self.scale_by_resolution:
            return self.overhead_ms + self.scale * p
        if resolutions is None:
            raise LutError(
                "this calibration has one scale per resolution: pass the archs' resolutions"
            )
        r = np.asarray(resolutions, dtype=np.int64)
        if r.shape != p.shape:
            raise LutError(
                f"{p.size} latencies but {r.size} resolutions: give one resolution per value"
            )
        u, inv = np.unique(r, return_inverse=True)
        scales = np.array([self.scale_for(int(x)) for x in u])[inv.reshape(r.shape)]
        return self.overhead_ms + scales * p

    def to_json(self) -> dict[str, Any]:
        return {
            "overhead_ms": self.overhead_ms,
            "scale": self.scale,
            "scale_by_resolution": {str(r): s for r, s in self.scale_by_resolution.items()},
            "fitted_on": self.fitted_on,
            "device": self.device,
            "validation": self.validation,
        }

    def describe(self) -> str:
        """One line for people: the formula with its numbers."""
        if not self.scale_by_resolution:
            return f"{self.overhead_ms:.3f} ms + {self.scale:.4f} x layer sum"
        per = ", ".join(f"{r}: {s:.4f}" for r, s in self.scale_by_resolution.items())
        return (
            f"{self.overhead_ms:.3f} ms + scale_r x layer sum, scale_r per resolution {{{per}}} "
            f"(other resolutions {self.scale:.4f})"
        )


class LatencyTable:
    """Per-resolution layer latencies of one base at one width on one device.

    Prediction is vectorized: for every (resolution, slot, kernel, expand) seen in a batch the
    layer value is looked up once and cached, then a batch of archs is a numpy gather and sum.
    """

    def __init__(
        self,
        *,
        base: str,
        width_mult: float,
        entries: Mapping[int, Mapping[str, LutEntry]],
        n_classes: int = 1000,
        statistic: str = "median",
        provenance: Mapping[str, Any] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        if statistic not in STATISTICS:
            raise LutError(f"statistic must be one of {STATISTICS}, not {statistic!r}")
        if not entries:
            raise LutError("a latency table needs at least one resolution")
        self.layout: BaseLayout = layout(base)
        self.base = base
        self.width_mult = float(width_mult)
        self.n_classes = int(n_classes)
        self.statistic = statistic
        self.entries: dict[int, dict[str, LutEntry]] = {
            int(r): dict(e) for r, e in sorted(entries.items())
        }
        self.provenance: dict[str, Any] = dict(provenance or {})
        self.calibration = calibration
        # (resolution, kernel, expand) -> (fixed keys, slot keys); pure function of geometry.
        self._tensor_cache: dict[tuple[Any, ...], Any] = {}
        self._probe_cache: dict[
            tuple[int, int, int, tuple[int, ...]], tuple[list[str], list[str]]
        ] = {}

    # ----------------------------------------------------------------- basics
    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(self.entries)

    @property
    def key_style(self) -> str:
        return self.layout.key_style

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries.values())

    def value(self, resolution: int, key: str) -> float | None:
        entry = self.entries.get(resolution, {}).get(key)
        return None if entry is None else entry.value(self.statistic)

    def with_calibration(self, calibration: Calibration | None) -> LatencyTable:
        return LatencyTable(
            base=self.base,
            width_mult=self.width_mult,
            entries=self.entries,
            n_classes=self.n_classes,
            statistic=self.statistic,
            provenance=self.provenance,
            calibration=calibration,
        )

    # ----------------------------------------------------------------- prediction
    def _check_width(self, width_mult: float | None, allow_width_mismatch: bool) -> None:
        if width_mult is None or math.isclose(width_mult, self.width_mult, abs_tol=1e-9):
            return
        if not allow_width_mismatch:
            raise LutError(
                f"the table was measured for width multiplier {self.width_mult:g} but the "
                f"networks have width {width_mult:g}: their layers have other channel counts. "
                "Build a table at that width, or pass allow_width_mismatch=True "
                "(--allow-width-mismatch) to predict with the table's widths anyway"
            )

    def keys(self, arch: Arch) -> list[str]:
        """Every layer key of ``arch`` at the table's width, in network order."""
        return [k for k, _ in self.layout.keys(arch, self.width_mult, self.n_classes)]

    def predict_breakdown(
        self,
        arch: Arch,
        width_mult: float | None = None,
        allow_width_mismatch: bool = False,
    ) -> list[tuple[str, float]]:
        """``(key, ms)`` per layer, uncalibrated, in network order."""
        self._check_width(width_mult, allow_width_mismatch)
        keys = self.keys(arch)
        table = self.entries.get(arch.resolution, {})
        missing = [k for k in keys if k not in table]
        if missing:
            raise self._missing_error(sorted(set(missing)), {arch.resolution})
        return [(k, table[k].value(self.statistic)) for k in keys]

    def predict_ms(
        self,
        archs: Sequence[Arch] | Arch,
        width_mult: float | None = None,
        allow_width_mismatch: bool = False,
        calibrated: bool = True,
    ) -> np.ndarray:
        """Predicted latency in ms of each arch (float64 array, one per arch).

        ``width_mult`` is the networks' width; ``None`` means the table's. A width other than
        the table's is refused unless ``allow_width_mismatch``, in which case the table's
        widths are used. The calibration, when the table has one, is applied unless
        ``calibrated=False``.
        """
        self._check_width(width_mult, allow_width_mismatch)
        if isinstance(archs, Arch):
            archs = [archs]
        if len(archs) == 0:
            return np.zeros(0)
        sizes = archs[0].stage_sizes
        if any(a.stage_sizes != sizes for a in archs):
            raise LutError("all archs of one predict_ms call must share a stage layout")
        n, n_slots = len(archs), sum(sizes)
        # fromiter over a flat chain is several times faster than np.array on nested tuples
        ks = np.fromiter(chain.from_iterable(a.ks for a in archs), np.int64, n * n_slots)
        e = np.fromiter(chain.from_iterable(a.e for a in archs), np.int64, n * n_slots)
        d = np.fromiter(chain.from_iterable(a.d for a in archs), np.int64, n * len(sizes))
        r = np.fromiter((a.resolution for a in archs), np.int64, n)
        ks, e, d = ks.reshape(n, n_slots), e.reshape(n, n_slots), d.reshape(n, len(sizes))
        total = self._predict_arrays(ks, e, d, r, sizes)
        if calibrated and self.calibration is not None:
            total = self.calibration.apply(total, r)
        return total

    def _predict_arrays(
        self,
        ks: np.ndarray,
        e: np.ndarray,
        d: np.ndarray,
        r: np.ndarray,
        sizes: tuple[int, ...],
    ) -> np.ndarray:
        n_slots = sum(sizes)
        slot_stage = np.repeat(np.arange(len(sizes)), sizes)
        slot_layer = np.concatenate([np.arange(s) for s in sizes])
        u_r, ri = _small_unique(r)
        u_k, ki = _small_unique(ks)
        u_e, ei = _small_unique(e)
        fixed, values, fixed_missing, slot_keys = self._value_tensor(u_r, u_k, u_e, sizes)
        per_slot = values[ri[:, None], np.arange(n_slots)[None, :], ki, ei]
        active = slot_layer[None, :] < d[:, slot_stage]
        gaps = active & np.isnan(per_slot)
        fixed_gap = np.isnan(fixed[ri])
        if gaps.any() or fixed_gap.any():
            missing: set[str] = set()
            bad_res: set[int] = set()
            for row, j in zip(*np.nonzero(gaps), strict=True):
                missing.add(slot_keys[(ri[row], j, ki[row, j], ei[row, j])])
                bad_res.add(int(u_r[ri[row]]))
            for row in np.nonzero(fixed_gap)[0]:
                res = int(u_r[ri[row]])
                missing.update(fixed_missing[res])
                bad_res.add(res)
            raise self._missing_error(sorted(missing), bad_res)
        return fixed[ri] + np.where(active, per_slot, 0.0).sum(axis=1)

    def _value_tensor(
        self, u_r: np.ndarray, u_k: np.ndarray, u_e: np.ndarray, sizes: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, dict[int, list[str]], dict[tuple[int, int, int, int], str]]:
        """Fixed-layer sums per resolution and per-(resolution, slot, kernel, expand) values,
        NaN where the table lacks the key; cached per set of values seen (search calls
        predict_ms many times with the same choices)."""
        ck = (tuple(u_r.tolist()), tuple(u_k.tolist()), tuple(u_e.tolist()), sizes)
        hit = self._tensor_cache.get(ck)
        if hit is not None:
            return hit
        n_slots = sum(sizes)
        fixed = np.full(len(u_r), np.nan)
        values = np.full((len(u_r), n_slots, len(u_k), len(u_e)), np.nan)
        fixed_missing: dict[int, list[str]] = {}
        slot_keys: dict[tuple[int, int, int, int], str] = {}
        for a, res in enumerate(u_r):
            table = self.entries.get(int(res), {})
            for b, k in enumerate(u_k):
                for c, x in enumerate(u_e):
                    fixed_keys, keys = self._probe(int(res), int(k), int(x), sizes)
                    if b == 0 and c == 0:
                        miss = [fk for fk in fixed_keys if fk not in table]
                        if miss:
                            fixed_missing[int(res)] = miss
                        else:
                            fixed[a] = sum(table[fk].value(self.statistic) for fk in fixed_keys)
                    for j, key in enumerate(keys):
                        entry = table.get(key)
                        if entry is None:
                            slot_keys[(a, j, b, c)] = key
                        else:
                            values[a, j, b, c] = entry.value(self.statistic)
        out = (fixed, values, fixed_missing, slot_keys)
        if len(self._tensor_cache) > 64:  # bounded: a long search sees few distinct sets
            self._tensor_cache.clear()
        self._tensor_cache[ck] = out
        return out

    def _probe(
        self, resolution: int, kernel: int, expand: int, sizes: tuple[int, ...]
    ) -> tuple[list[str], list[str]]:
        """Keys of the fixed layers and of every slot when all slots use (kernel, expand)."""
        ck = (resolution, kernel, expand, sizes)
        hit = self._probe_cache.get(ck)
        if hit is not None:
            return hit
        n = sum(sizes)
        arch = Arch((kernel,) * n, (expand,) * n, tuple(sizes), resolution, tuple(sizes))
        keys = self.keys(arch)
        p = self.layout.n_prefix
        if len(keys) < p + n:
            raise LutError(f"base {self.base}: layout does not match its layer list")
        out = (keys[:p] + keys[p + n :], keys[p : p + n])
        self._probe_cache[ck] = out
        return out

    def _missing_error(self, missing: list[str], resolutions: Iterable[int]) -> LutError:
        res = sorted(resolutions)
        unknown = [x for x in res if x not in self.entries]
        shown = "\n  ".join(missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        hint = (
            f" (resolution(s) {unknown} not in the table, which has {list(self.resolutions)})"
            if unknown
            else ""
        )
        return LutError(
            f"the table lacks {len(missing)} layer key(s) these archs need{hint}; build it for "
            f"this space/resolutions (lut build). Missing:\n  {shown}{more}"
        )

    def missing_keys(self, archs: Iterable[Arch]) -> list[str]:
        """Keys the archs need that the table lacks (empty when all can be predicted)."""
        missing: set[str] = set()
        for a in archs:
            table = self.entries.get(a.resolution, {})
            missing.update(k for k in self.keys(a) if k not in table)
        return sorted(missing)

    # ----------------------------------------------------------------- file format
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "base": self.base,
            "key_style": self.key_style,
            "width_mult": self.width_mult,
            "n_classes": self.n_classes,
            "statistic": self.statistic,
            "resolutions": list(self.resolutions),
            "provenance": self.provenance,
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "entries": {
                str(r): {k: v.to_json() for k, v in sorted(e.items())}
                for r, e in self.entries.items()
            },
        }

    @classmethod
    def from_json(cls, raw: Any, source: str = "table") -> LatencyTable:
        if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
            raise LutError(f"{source} is not a compofa-bench latency table (format {FORMAT!r})")
        if raw.get("version") != FORMAT_VERSION:
            raise LutError(
                f"{source} has table format version {raw.get('version')!r}; this compofa-bench "
                f"reads version {FORMAT_VERSION}"
            )
        try:
            base = str(raw["base"])
            width = float(raw["width_mult"])
            entries_raw = raw["entries"]
        except (KeyError, TypeError, ValueError) as exc:
            raise LutError(f"{source}: missing or invalid field {exc}") from None
        if not isinstance(entries_raw, Mapping):
            raise LutError(f"{source}: 'entries' must map resolution -> key -> statistics")
        entries: dict[int, dict[str, LutEntry]] = {}
        for r, table in entries_raw.items():
            try:
                res = int(r)
            except ValueError:
                raise LutError(f"{source}: resolution {r!r} is not an integer") from None
            if not isinstance(table, Mapping):
                raise LutError(f"{source}: entries[{r}] must map key -> statistics")
            entries[res] = {
                str(k): LutEntry.from_json(v, f"{source} [{r}] {k}") for k, v in table.items()
            }
        try:
            n_classes = int(raw.get("n_classes", 1000))
        except (TypeError, ValueError):
            raise LutError(
                f"{source}: n_classes must be an integer, not {raw.get('n_classes')!r}"
            ) from None
        table_obj = cls(
            base=base,
            width_mult=width,
            entries=entries,
            n_classes=n_classes,
            statistic=str(raw.get("statistic", "median")),
            provenance=raw.get("provenance") or {},
            calibration=_calibration_from_json(raw.get("calibration"), source),
        )
        if raw.get("key_style", table_obj.key_style) != table_obj.key_style:
            raise LutError(
                f"{source}: key style {raw.get('key_style')!r} does not match base {base!r} "
                f"({table_obj.key_style!r})"
            )
        return table_obj

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file + rename)."""
        return atomic_write_text(Path(path), json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise LutError(f"latency table {p} does not exist") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise LutError(f"cannot read latency table {p}: {exc}") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LutError(f"latency table {p} is not valid JSON: {exc.msg}") from None
        return cls.from_json(raw, str(p))


def _small_unique(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(x, return_inverse=True)`` for small non-negative ints (kernels, expand
    ratios, resolutions) without sorting: a bincount and a lookup array."""
    if x.size and x.min() >= 0 and x.max() < 4096:
        present = np.flatnonzero(np.bincount(x.ravel()))
        lookup = np.zeros(int(present[-1]) + 1, dtype=np.int64)
        lookup[present] = np.arange(len(present))
        return present, lookup[x]
    u, inv = np.unique(x, return_inverse=True)
    return u, inv.reshape(x.shape)


def _calibration_from_json(raw: Any, source: str) -> Calibration | None:
    if raw is None:
        return None
    try:
        return Calibration(
            overhead_ms=float(raw["overhead_ms"]),
            scale=float(raw["scale"]),
            fitted_on=int(raw.get("fitted_on", 0)),
            validation=dict(raw.get("validation") or {}),
            # absent in tables written before per-resolution calibration: the global form
            scale_by_resolution=dict(raw.get("scale_by_resolution") or {}),
            # older files kept the device only inside the validation figures
            device=raw.get("device") or (raw.get("validation") or {}).get("device"),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LutError(f"{source}: invalid calibration ({exc})") from None
