"""Training recipes: TOML files in ``trainers/``, parsed into frozen dataclasses.

A recipe is a list of phases run in order (``[[phase]]`` tables). Each phase says which
subnets it samples, how many per step, where soft targets come from, and its schedule. Epoch
counts (and warmups) are multiplied by ``scale`` so one recipe serves a smoke run and the
paper's schedule alike.

Learning rates are given for ``reference_batch_size`` images per step and scaled linearly to
the run's global batch (OFA's recipes are written for 32 GPUs x 64 images = 2048).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compofa_bench import spaces
from compofa_bench.errors import SpaceError, TrainError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SAMPLINGS = ("largest", "uniform", "upper-attentive", "sandwich")
KD_SOURCES = ("none", "teacher", "inplace")


@dataclass(frozen=True)
class Phase:
    """One phase of a recipe.

    ``sampling``: ``largest`` (the teacher alone), ``uniform`` (``subnets_per_step`` random
    subnets, OFA/CompOFA), ``upper-attentive`` (the largest plus ``n-1`` random ones, fOFA) or
    ``sandwich`` (largest, smallest and ``n-2`` random ones, BigNAS).
    ``kd``: ``none``, ``teacher`` (a frozen copy of the network after the teacher phase) or
    ``inplace`` (the step's largest subnet, detached).
    ``ks``/``e``/``d`` restrict the phase's space (OFA's progressive shrinking); empty = all.
    """

    name: str
    epochs: float
    lr: float
    space: str
    sampling: str = "uniform"
    subnets_per_step: int = 1
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    kd: str = "none"
    kd_ratio: float = 0.0
    ks: tuple[int, ...] = ()
    e: tuple[int, ...] = ()
    d: tuple[int, ...] = ()
    grad_clip: float | None = None
    reorganize: bool = False
    is_teacher: bool = False

    def scaled(self, scale: float) -> Phase:
        return dataclasses.replace(
            self, epochs=self.epochs * scale, warmup_epochs=self.warmup_epochs * scale
        )

    def search_space(self, resolutions: tuple[int, ...]) -> spaces.SearchSpace:
        """The phase's space: the named space with ``ks``/``e``/``d`` restrictions applied."""
        base = spaces.get(self.space, resolutions=resolutions)
        changes: dict[str, Any] = {}
        if self.ks:
            changes["kernel_choices"] = tuple(
                tuple(k for k in choices if k in self.ks) for choices in base.kernel_choices
            )
        if self.e:
            if base.coupling is not None:
                changes["coupling"] = tuple(p for p in base.coupling if p[1] in self.e)
            else:
                changes["expand_choices"] = tuple(x for x in base.expand_choices if x in self.e)
        if self.d:
            # A stage of fixed depth (ProxylessNAS's single-block last stage) is not elastic:
            # a depth restriction leaves it alone.
            changes["depth_choices"] = tuple(
                tuple(x for x in choices if x in self.d) if len(choices) > 1 else choices
                for choices in base.depth_choices
            )
        return dataclasses.replace(base, **changes) if changes else base


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    space: str
    phases: tuple[Phase, ...]
    base: str = "mbv3"
    width_mult: float = 1.0
    resolutions: tuple[int, ...] = spaces.DEFAULT_RESOLUTIONS
    batch_size: int = 64
    reference_batch_size: int = 2048
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-5
    label_smoothing: float = 0.1
    dropout_rate: float = 0.1
    seed: int = 0

    def scaled(self, scale: float) -> Recipe:
        if not (scale > 0 and math.isfinite(scale)):
            raise TrainError(f"scale must be a positive number, got {scale}")
        return dataclasses.replace(self, phases=tuple(p.scaled(scale) for p in self.phases))

    def with_resolutions(self, resolutions: tuple[int, ...]) -> Recipe:
        return dataclasses.replace(self, resolutions=_check_res(list(resolutions), "resolutions"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "recipe") -> Recipe:
        return parse(raw, source)


# =============================================================================== parsing

_PHASE_FIELDS = {f.name: f for f in dataclasses.fields(Phase)}
_RECIPE_FIELDS = {f.name: f for f in dataclasses.fields(Recipe)} | {"phase": None}


def load(path: str | Path) -> Recipe:
    """Read and validate a recipe file. A bare name (``compofa``) looks in ``trainers/``."""
    p = Path(path)
    if not p.exists() and p.suffix == "" and p.parent == Path("."):
        p = trainers_dir() / f"{p.name}.toml"
    try:
        raw = tomllib.loads(p.read_text())
    except FileNotFoundError:
        known = ", ".join(sorted(x.stem for x in trainers_dir().glob("*.toml")))
        raise TrainError(f"recipe {path} does not exist (bundled recipes: {known})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrainError(f"cannot read recipe {p}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrainError(f"recipe {p} is not valid TOML: {exc}") from None
    return parse(raw, str(p))


def trainers_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "trainers"


def parse(raw: Mapping[str, Any], source: str = "recipe") -> Recipe:
    unknown = sorted(set(raw) - set(_RECIPE_FIELDS))
    if unknown:
        raise TrainError(f"{source}: unknown field(s) {', '.join(unknown)}")
    for req in ("name", "space", "phase"):
        if req not in raw:
            raise TrainError(f"{source}: missing field '{req}'")
    phases_raw = raw["phase"]
    if not isinstance(phases_raw, list) or not phases_raw:
        raise TrainError(f"{source}: 'phase' must be one or more [[phase]] tables")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "phase":
            continue
        kwargs[key] = _coerce(source, key, value, _RECIPE_FIELDS[key].type)
    kwargs.setdefault("description", "")
    res = kwargs.get("resolutions", spaces.DEFAULT_RESOLUTIONS)
    kwargs["resolutions"] = _check_res(list(res), f"{source}: resolutions")
    phases = tuple(_parse_phase(source, i, p) for i, p in enumerate(phases_raw))
    recipe = Recipe(phases=phases, **kwargs)
    _validate(recipe, source)
    return recipe


def _parse_phase(source: str, index: int, raw: Any) -> Phase:
    where = f"{source}: phase[{index}]"
    if not isinstance(raw, Mapping):
        raise TrainError(f"{where}: expected a table")
    unknown = sorted(set(raw) - set(_PHASE_FIELDS))
    if unknown:
        raise TrainError(f"{where}: unknown field(s) {', '.join(unknown)}")
    for req in ("name", "epochs", "lr", "space"):
        if req not in raw:
            raise TrainError(f"{where}: missing field '{req}'")
    kwargs = {k: _coerce(where, k, v, _PHASE_FIELDS[k].type) for k, v in raw.items()}
    return Phase(**kwargs)


def _coerce(where: str, key: str, value: Any, typ: Any) -> Any:
    t = str(typ)
    bad = TrainError(f"{where}: field '{key}' has invalid value {value!r} (expected {t})")
    if t == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if t == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if t == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if t in ("float", "float | None"):
        if value is None and "None" in t:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise bad
        return float(value)
    if t.startswith("tuple[int"):
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise bad
        return tuple(value)
    raise bad  # pragma: no cover - every field type is handled above


def _check_res(res: list[Any], where: str) -> tuple[int, ...]:
    try:
        return spaces.check_resolutions(res)
    except SpaceError as exc:
        raise TrainError(f"{where}: {exc}") from None


def _validate(r: Recipe, source: str) -> None:
    def fail(msg: str) -> None:
        raise TrainError(f"{source}: {msg}")

    if r.space not in spaces.names():
        fail(f"space: unknown space {r.space!r} (known: {', '.join(spaces.names())})")
    bases = sorted({sp.base for sp in map(spaces.get, spaces.names())})
    if r.base not in bases:
        fail(f"base: unknown base {r.base!r} (known: {', '.join(bases)})")
    if r.space in spaces.names() and spaces.get(r.space).base != r.base:
        fail(
            f"space: {r.space} is a {spaces.get(r.space).base} space; the recipe's base is {r.base}"
        )
    if not r.width_mult > 0:
        fail(f"width_mult must be positive, got {r.width_mult}")
    if r.batch_size <= 0:
        fail(f"batch_size must be positive, got {r.batch_size}")
    if r.reference_batch_size <= 0:
        fail(f"reference_batch_size must be positive, got {r.reference_batch_size}")
    if not 0 <= r.momentum < 1:
        fail(f"momentum must be in [0, 1), got {r.momentum}")
    if r.weight_decay < 0:
        fail(f"weight_decay must be >= 0, got {r.weight_decay}")
    if not 0 <= r.label_smoothing < 1:
        fail(f"label_smoothing must be in [0, 1), got {r.label_smoothing}")
    if not 0 <= r.dropout_rate < 1:
        fail(f"dropout_rate must be in [0, 1), got {r.dropout_rate}")
    names: set[str] = set()
    seen_teacher = False
    for i, p in enumerate(r.phases):
        w = f"phase[{i}] ({p.name})"
        if p.name in names:
            fail(f"{w}: name: duplicate phase name")
        names.add(p.name)
        if p.space not in spaces.names():
            fail(f"{w}: space: unknown space {p.space!r} (known: {', '.join(spaces.names())})")
        if spaces.get(p.space).base != r.base:
            fail(f"{w}: space: {p.space} is a {spaces.get(p.space).base} space, not {r.base}")
        if not p.epochs > 0:
            fail(f"{w}: epochs must be positive, got {p.epochs}")
        if not p.lr > 0:
            fail(f"{w}: lr must be positive, got {p.lr}")
        if not 0 <= p.warmup_epochs <= p.epochs:
            fail(f"{w}: warmup_epochs must be in [0, epochs], got {p.warmup_epochs}")
        if p.warmup_lr < 0:
            fail(f"{w}: warmup_lr must be >= 0, got {p.warmup_lr}")
        if p.sampling not in SAMPLINGS:
            fail(f"{w}: sampling must be one of {', '.join(SAMPLINGS)}, not {p.sampling!r}")
        if p.kd not in KD_SOURCES:
            fail(f"{w}: kd must be one of {', '.join(KD_SOURCES)}, not {p.kd!r}")
        if p.subnets_per_step < 1:
            fail(f"{w}: subnets_per_step must be >= 1, got {p.subnets_per_step}")
        if p.sampling == "largest" and p.subnets_per_step != 1:
            fail(f"{w}: subnets_per_step must be 1 with sampling 'largest'")
        if p.sampling == "upper-attentive" and p.subnets_per_step < 2:
            fail(f"{w}: subnets_per_step must be >= 2 with upper-attentive sampling")
        if p.sampling == "sandwich" and p.subnets_per_step < 2:
            fail(f"{w}: subnets_per_step must be >= 2 with sandwich sampling")
        if p.kd_ratio < 0:
            fail(f"{w}: kd_ratio must be >= 0, got {p.kd_ratio}")
        if p.kd != "none" and p.kd_ratio == 0:
            fail(f"{w}: kd_ratio must be positive when kd is {p.kd!r}")
        if p.kd == "inplace" and p.sampling not in ("upper-attentive", "sandwich"):
            fail(f"{w}: kd 'inplace' needs a sampling that includes the largest subnet")
        if p.kd == "teacher" and not seen_teacher:
            fail(f"{w}: kd 'teacher' needs an earlier phase with is_teacher = true")
        if p.grad_clip is not None and not p.grad_clip > 0:
            fail(f"{w}: grad_clip must be positive, got {p.grad_clip}")
        if p.is_teacher and p.sampling != "largest":
            fail(f"{w}: is_teacher phases must use sampling 'largest'")
        seen_teacher = seen_teacher or p.is_teacher
        try:
            space = p.search_space(r.resolutions)
            empty = [
                k
                for k, v in (("ks", space.kernel_choices), ("d", space.depth_choices))
                if any(not c for c in v)
            ]
            if space.coupling is not None and not space.coupling:
                empty.append("e")
            if space.coupling is None and not space.expand_choices:
                empty.append("e")
            if empty:
                fail(f"{w}: {', '.join(empty)}: restriction leaves no choice in space {p.space}")
        except SpaceError as exc:
            fail(f"{w}: {exc}")
