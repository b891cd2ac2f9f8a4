"""Search spaces and architectures.

An :class:`Arch` is one subnetwork of a once-for-all supernet at one input resolution. It is
plain, immutable data: per-layer kernel sizes and expand ratios, per-stage depths, and the
resolution. It converts both ways to OFA's dict form ``{"ks": [...], "e": [...], "d": [...]}``.

A :class:`SearchSpace` says which archs are allowed. It enumerates (when finite), samples with
a caller-supplied ``numpy.random.Generator``, mutates and crosses over, counts its members
exactly and validates an arch with an error that names the offending field and position.

CompOFA's insight is that depth and width can move together: a stage of depth 2 uses expand
ratio 3 everywhere, depth 3 uses 4, depth 4 uses 6. Coupled spaces treat ``(depth, expand)``
as one gene per stage, in sampling, mutation and crossover alike.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compofa_bench.errors import ArchError, SpaceError

# re-exported: the resolution rule is every command's (spaces.parse_resolutions, ...)
from compofa_bench.resolutions import MAX_RESOLUTION as MAX_RESOLUTION
from compofa_bench.resolutions import MIN_RESOLUTION as MIN_RESOLUTION
from compofa_bench.resolutions import check_resolution_value as check_resolution_value
from compofa_bench.resolutions import check_resolutions as check_resolutions
from compofa_bench.resolutions import parse_resolutions as parse_resolutions

DEFAULT_RESOLUTIONS = (128, 160, 192, 224)

#: CompOFA's coupling of depth and expand ratio, per stage.
COMPOFA_COUPLING: tuple[tuple[int, int], ...] = ((2, 3), (3, 4), (4, 6))

#: The layout of the MobileNetV3 OFA supernet: 5 elastic stages of up to 4 layers.
MBV3_STAGE_SIZES = (4, 4, 4, 4, 4)

#: The layout of the ProxylessNAS OFA supernet: 5 elastic stages of up to 4 layers and a last
#: stage of a single block (OFA's ``ks``/``e`` lists have 21 entries, ``d`` has 6, the last 1).
PROXYLESS_STAGE_SIZES = (4, 4, 4, 4, 4, 1)


@dataclass(frozen=True)
class Arch:
    """One subnetwork at one resolution.

    ``ks`` and ``e`` hold one value per layer slot of the supernet (``sum(stage_sizes)``);
    ``d`` one value per stage. Slots beyond a stage's depth carry no meaning: they are
    normalized to the values of the stage's last active layer, so two archs that run the same
    layers compare and hash equal.
    """

    ks: tuple[int, ...]
    e: tuple[int, ...]
    d: tuple[int, ...]
    resolution: int
    stage_sizes: tuple[int, ...] = MBV3_STAGE_SIZES

    def __post_init__(self) -> None:
        _check_shape(self.ks, self.e, self.d, self.stage_sizes)
        if not isinstance(self.resolution, int) or isinstance(self.resolution, bool):
            raise ArchError(f"resolution: expected an integer, got {self.resolution!r}")
        if self.resolution < 1:
            raise ArchError(f"resolution: expected a positive size, got {self.resolution}")
        ks, e = _normalize(self.ks, self.e, self.d, self.stage_sizes)
        object.__setattr__(self, "ks", ks)
        object.__setattr__(self, "e", e)

    # ----------------------------------------------------------------- structure
    @property
    def n_stages(self) -> int:
        return len(self.stage_sizes)

    def stage_slots(self, stage: int) -> range:
        """Indices into ``ks``/``e`` of every slot of ``stage``, active or not."""
        start = sum(self.stage_sizes[:stage])
        return range(start, start + self.stage_sizes[stage])

    def active_layers(self) -> Iterator[tuple[int, int, int]]:
        """Yield ``(stage, slot_index, layer_in_stage)`` for every layer that runs."""
        for stage in range(self.n_stages):
            slots = self.stage_slots(stage)
            for i in range(self.d[stage]):
                yield stage, slots[i], i

    def with_resolution(self, resolution: int) -> Arch:
        return dataclasses.replace(self, resolution=resolution)

    # ----------------------------------------------------------------- identity
    def key(self) -> str:
        """A short string, stable across processes and versions, unique per arch.

        Only active layers appear, so it is independent of the normalization of unused slots.
        Example: ``r224-d23423-k35...-e34...``.
        """
        act = list(self.active_layers())
        ks = "".join(str(self.ks[s]) for _, s, _ in act)
        e = "".join(str(self.e[s]) for _, s, _ in act)
        d = "".join(str(x) for x in self.d)
        layout = (
            ""
            if self.stage_sizes == MBV3_STAGE_SIZES
            else "L" + "".join(str(x) for x in self.stage_sizes) + "-"
        )
        return f"{layout}r{self.resolution}-d{d}-k{ks}-e{e}"

    # ----------------------------------------------------------------- OFA dict form
    def to_ofa(self, resolution_key: str = "r") -> dict[str, Any]:
        """OFA's dict form. ``resolution_key`` is ``"r"`` (``[R]``) or ``"image_size"`` (``R``)."""
        out: dict[str, Any] = {"ks": list(self.ks), "e": list(self.e), "d": list(self.d)}
        if resolution_key == "r":
            out["r"] = [self.resolution]
        elif resolution_key == "image_size":
            out["image_size"] = self.resolution
        else:
            raise ValueError(f"resolution_key must be 'r' or 'image_size', not {resolution_key!r}")
        return out

    @classmethod
    def from_ofa(
        cls,
        spec: Mapping[str, Any],
        resolution: int | None = None,
        stage_sizes: Sequence[int] | None = None,
    ) -> Arch:
        """Parse OFA's dict form. The resolution comes from ``r`` (a list of one, or an int),
        ``image_size``, or the ``resolution`` argument, in that order of precedence."""
        if not isinstance(spec, Mapping):
            raise ArchError(f"an arch must be a JSON object with ks, e, d; got {_typename(spec)}")
        check_arch_keys(spec)
        missing = [k for k in ("ks", "e", "d") if k not in spec]
        if missing:
            raise ArchError(f"arch is missing field(s): {', '.join(missing)}")
        ks = _int_list(spec["ks"], "ks")
        e = _int_list(spec["e"], "e")
        d = _int_list(spec["d"], "d")
        res = _parse_resolution(spec, resolution)
        layout = tuple(stage_sizes) if stage_sizes is not None else _infer_layout(len(ks), len(d))
        return cls(ks=ks, e=e, d=d, resolution=res, stage_sizes=layout)


#: Keys of OFA's arch dict. ``wid`` is OFA's unused width slot, always null.
ARCH_KEYS = ("ks", "e", "d", "r", "image_size", "wid")


def check_arch_keys(spec: Mapping[str, Any]) -> None:
    """Refuse keys an arch dict does not have: a typo (``"w": 1.2``) would otherwise be
    ignored and the arch measured with defaults the user did not ask for."""
    unknown = sorted(str(k) for k in spec if k not in ARCH_KEYS)
    if unknown:
        hint = (
            " (the width is a flag: --width-mult)"
            if any(k.startswith("w") for k in unknown)
            else ""
        )
        raise ArchError(
            f"unknown arch key(s) {', '.join(repr(k) for k in unknown)}; an arch has "
            f"{', '.join(ARCH_KEYS[:5])}{hint}"
        )
    if spec.get("wid") is not None:
        raise ArchError(
            f"wid: OFA's width slot must be null, got {spec['wid']!r} (use --width-mult)"
        )


def _typename(x: object) -> str:
    return type(x).__name__


def _int_list(value: object, name: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ArchError(f"{name}: expected a list of integers, got {_typename(value)}")
    out = []
    for i, v in enumerate(value):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (isinstance(v, float) and (not math.isfinite(v) or not v.is_integer()))
        ):
            raise ArchError(f"{name}[{i}]: expected an integer, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _parse_resolution(spec: Mapping[str, Any], fallback: int | None) -> int:
    raw: object
    if "r" in spec:
        raw = spec["r"]
        if isinstance(raw, (list, tuple)):
            if len(raw) != 1:
                raise ArchError(f"r: expected a list of one resolution, got {len(raw)} values")
            raw = raw[0]
        name = "r"
    elif "image_size" in spec:
        raw, name = spec["image_size"], "image_size"
    elif fallback is not None:
        raw, name = fallback, "resolution"
    else:
        raise ArchError("arch has no resolution: give 'r': [R] or 'image_size': R")
    if (
        isinstance(raw, bool)
        or not isinstance(raw, (int, float))
        or (isinstance(raw, float) and (not math.isfinite(raw) or not raw.is_integer()))
    ):
        raise ArchError(f"{name}: expected an integer resolution, got {raw!r}")
    return int(raw)


def _infer_layout(n_layers: int, n_stages: int) -> tuple[int, ...]:
    if n_stages <= 0:
        raise ArchError("d: expected one depth per stage, got an empty list")
    if n_layers == 4 * n_stages:
        return (4,) * n_stages
    if n_layers == 4 * (n_stages - 1) + 1:  # ProxylessNAS: last stage is a single block
        return (4,) * (n_stages - 1) + (1,)
    raise ArchError(
        f"ks/e have {n_layers} values but d has {n_stages} stages: expected {4 * n_stages} "
        f"(4 layer slots per stage)"
    )


def _check_shape(
    ks: Sequence[int], e: Sequence[int], d: Sequence[int], stage_sizes: Sequence[int]
) -> None:
    n_layers = sum(stage_sizes)
    for name, seq, n in (("ks", ks, n_layers), ("e", e, n_layers), ("d", d, len(stage_sizes))):
        if not isinstance(seq, tuple):
            raise ArchError(f"{name}: expected a tuple, got {_typename(seq)}")
        if len(seq) != n:
            raise ArchError(f"{name}: expected {n} values, got {len(seq)}")
        for i, v in enumerate(seq):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ArchError(f"{name}[{i}]: expected an integer, got {v!r}")
    for i, (depth, size) in enumerate(zip(d, stage_sizes, strict=True)):
        if not 1 <= depth <= size:
            raise ArchError(f"d[{i}] (stage {i}): depth {depth} outside 1..{size}")


def _normalize(
    ks: tuple[int, ...], e: tuple[int, ...], d: tuple[int, ...], stage_sizes: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ks_l, e_l = list(ks), list(e)
    start = 0
    for depth, size in zip(d, stage_sizes, strict=True):
        last = start + depth - 1
        for j in range(start + depth, start + size):
            ks_l[j], e_l[j] = ks_l[last], e_l[last]
        start += size
    return tuple(ks_l), tuple(e_l)


# =============================================================================== spaces


@dataclass(frozen=True)
class SearchSpace:
    """A set of archs over one supernet layout.

    ``kernel_choices[i]`` lists the kernels allowed in layer slot ``i``. When ``coupling`` is
    set, each stage picks one ``(depth, expand)`` pair from it and every active layer of the
    stage uses that expand ratio; otherwise depth (from ``depth_choices``) and per-layer expand
    ratio (from ``expand_choices``) are independent.
    """

    name: str
    base: str
    description: str
    stage_sizes: tuple[int, ...]
    kernel_choices: tuple[tuple[int, ...], ...]
    expand_choices: tuple[int, ...]
    depth_choices: tuple[tuple[int, ...], ...]
    coupling: tuple[tuple[int, int], ...] | None = None
    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    width_mults: tuple[float, ...] = (1.0, 1.2)
    _stage_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = tuple(sum(self.stage_sizes[:i]) for i in range(len(self.stage_sizes)))
        object.__setattr__(self, "_stage_starts", starts)
        if len(self.kernel_choices) != sum(self.stage_sizes):
            raise SpaceError(f"space {self.name}: kernel_choices must cover every layer slot")
        if len(self.depth_choices) != len(self.stage_sizes):
            raise SpaceError(f"space {self.name}: depth_choices must cover every stage")
        object.__setattr__(self, "resolutions", check_resolutions(self.resolutions))

    # ----------------------------------------------------------------- configuration
    def with_resolutions(self, resolutions: Sequence[int]) -> SearchSpace:
        return dataclasses.replace(self, resolutions=check_resolutions(resolutions))

    @property
    def n_layers(self) -> int:
        return sum(self.stage_sizes)

    @property
    def n_stages(self) -> int:
        return len(self.stage_sizes)

    def stage_genes(self, stage: int) -> tuple[tuple[int, int | None], ...]:
        """``(depth, expand or None)`` genes a stage can take: in a coupled space each depth
        comes with its expand ratio, otherwise the expand ratio is chosen per layer (None)."""
        if self.coupling is not None:
            return tuple((d, e) for d, e in self.coupling if d in self.depth_choices[stage])
        return tuple((d, None) for d in self.depth_choices[stage])

    # ----------------------------------------------------------------- counting
    def structure_count(self) -> int:
        """Exact number of distinct layer structures (resolution not counted)."""
        total = 1
        for stage in range(self.n_stages):
            start = self._stage_starts[stage]
            per_stage = 0
            for depth, coupled_e in self.stage_genes(stage):
                n = 1
                for j in range(depth):
                    n *= len(self.kernel_choices[start + j])
                    if coupled_e is None:
                        n *= len(self.expand_choices)
                per_stage += n
            total *= per_stage
        return total

    def size(self) -> int:
        """Exact number of archs: structures times resolutions."""
        return self.structure_count() * len(self.resolutions)

    def is_enumerable(self, limit: int = 1_000_000) -> bool:
        return self.size() <= limit

    # ----------------------------------------------------------------- enumeration
    def enumerate(self, resolutions: Sequence[int] | None = None) -> Iterator[Arch]:
        """Every arch, in a fixed order (resolution outermost). Refuses astronomically
        large spaces rather than hanging."""
        res = self.resolutions if resolutions is None else check_resolutions(resolutions)
        if self.structure_count() > 10_000_000:
            raise SpaceError(
                f"space {self.name} has {self.structure_count():.3g} structures: too many to "
                "enumerate; sample it instead"
            )
        per_stage = [list(self._enumerate_stage(s)) for s in range(self.n_stages)]
        for r in res:
            for combo in itertools.product(*per_stage):
                ks: list[int] = []
                e: list[int] = []
                d: list[int] = []
                for depth, sks, se in combo:
                    d.append(depth)
                    ks.extend(sks)
                    e.extend(se)
                yield Arch(tuple(ks), tuple(e), tuple(d), int(r), self.stage_sizes)

    def _enumerate_stage(
        self, stage: int
    ) -> Iterator[tuple[int, tuple[int, ...], tuple[int, ...]]]:
        start, size = self._stage_starts[stage], self.stage_sizes[stage]
        for depth, coupled_e in self.stage_genes(stage):
            kernel_sets = [self.kernel_choices[start + j] for j in range(depth)]
            expand_sets = [
                (coupled_e,) if coupled_e is not None else self.expand_choices for _ in range(depth)
            ]
            for kk in itertools.product(*kernel_sets):
                for ee in itertools.product(*expand_sets):
                    pad = size - depth
                    yield depth, kk + (kk[-1],) * pad, ee + (ee[-1],) * pad

    # ----------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator) -> Arch:
        """One arch drawn uniformly per gene (as OFA's sample_active_subnet does)."""
        ks: list[int] = []
        e: list[int] = []
        d: list[int] = []
        for stage in range(self.n_stages):
            depth, stage_ks, stage_e = self._sample_stage(stage, rng)
            d.append(depth)
            ks.extend(stage_ks)
            e.extend(stage_e)
        r = int(self.resolutions[rng.integers(len(self.resolutions))])
        return Arch(tuple(ks), tuple(e), tuple(d), r, self.stage_sizes)

    def sample_many(self, n: int, rng: np.random.Generator, unique: bool = True) -> list[Arch]:
        """``n`` archs; distinct when ``unique`` (capped at the space size)."""
        if not unique:
            return [self.sample(rng) for _ in range(n)]
        total = self.size()
        if n > total:
            raise SpaceError(f"asked for {n} distinct archs but space {self.name} has {total}")
        if total <= 4 * n and total <= 1_000_000:
            everything = list(self.enumerate())
            idx = rng.choice(len(everything), size=n, replace=False)
            return [everything[i] for i in idx]
        seen: dict[Arch, None] = {}
        while len(seen) < n:  # terminates: n is at most a quarter of the space
            seen.setdefault(self.sample(rng), None)
        return list(seen)

    def _sample_stage(
        self, stage: int, rng: np.random.Generator
    ) -> tuple[int, list[int], list[int]]:
        start, size = self._stage_starts[stage], self.stage_sizes[stage]
        options = self.stage_genes(stage)
        depth, coupled_e = options[rng.integers(len(options))]
        ks = [_pick(self.kernel_choices[start + j], rng) for j in range(size)]
        if coupled_e is not None:
            e = [coupled_e] * size
        else:
            e = [_pick(self.expand_choices, rng) for _ in range(size)]
        return depth, ks, e

    # ----------------------------------------------------------------- evolution
    def mutate(self, arch: Arch, rng: np.random.Generator, prob: float) -> Arch:
        """Resample each gene with probability ``prob``. In coupled spaces a stage's depth and
        expand ratio are one gene and move together."""
        self.validate(arch)
        ks, e, d = list(arch.ks), list(arch.e), list(arch.d)
        r = arch.resolution
        if rng.random() < prob:
            r = int(self.resolutions[rng.integers(len(self.resolutions))])
        for stage in range(self.n_stages):
            start, size = self._stage_starts[stage], self.stage_sizes[stage]
            for j in range(size):
                if rng.random() < prob:
                    ks[start + j] = _pick(self.kernel_choices[start + j], rng)
            if self.coupling is not None:
                if rng.random() < prob:
                    options = self.stage_genes(stage)
                    depth, coupled_e = options[rng.integers(len(options))]
                    d[stage] = depth
                    e[start : start + size] = [coupled_e] * size
            else:
                for j in range(size):
                    if rng.random() < prob:
                        e[start + j] = _pick(self.expand_choices, rng)
                if rng.random() < prob:
                    d[stage] = _pick(self.depth_choices[stage], rng)
        # A layer that was inactive and becomes active must get its own genes, not copies.
        return Arch(tuple(ks), tuple(e), tuple(d), r, self.stage_sizes)

    def crossover(self, a: Arch, b: Arch, rng: np.random.Generator) -> Arch:
        """Child taking each gene from either parent. In coupled spaces a stage's depth and
        expand ratios come from the same parent."""
        self.validate(a)
        self.validate(b)
        ks = [x if rng.random() < 0.5 else y for x, y in zip(a.ks, b.ks, strict=True)]
        e: list[int] = []
        d: list[int] = []
        for stage in range(self.n_stages):
            sl = slice(
                self._stage_starts[stage], self._stage_starts[stage] + self.stage_sizes[stage]
            )
            if self.coupling is not None:
                src = a if rng.random() < 0.5 else b
                d.append(src.d[stage])
                e.extend(src.e[sl])
            else:
                d.append(a.d[stage] if rng.random() < 0.5 else b.d[stage])
                e.extend(
                    x if rng.random() < 0.5 else y for x, y in zip(a.e[sl], b.e[sl], strict=True)
                )
        r = a.resolution if rng.random() < 0.5 else b.resolution
        return Arch(tuple(ks), tuple(e), tuple(d), r, self.stage_sizes)

    # ----------------------------------------------------------------- validation
    def validate(self, arch: Arch, check_resolution: bool = True) -> Arch:
        """Raise :class:`ArchError` naming field, stage/layer, value and allowed values."""
        if arch.stage_sizes != self.stage_sizes:
            raise ArchError(
                f"arch has stage layout {list(arch.stage_sizes)} but space {self.name} has "
                f"{list(self.stage_sizes)}"
            )
        check_resolution_value(arch.resolution)
        if check_resolution and arch.resolution not in self.resolutions:
            raise ArchError(
                f"resolution {arch.resolution} is not in space {self.name}'s resolutions "
                f"{list(self.resolutions)} (configure others with --resolutions)"
            )
        for stage in range(self.n_stages):
            depth = arch.d[stage]
            if depth not in self.depth_choices[stage]:
                raise ArchError(
                    f"d[{stage}] (stage {stage}): depth {depth} not allowed; allowed: "
                    f"{list(self.depth_choices[stage])}"
                )
            for slot in arch.stage_slots(stage)[:depth]:
                layer = slot - self._stage_starts[stage]
                k = arch.ks[slot]
                if k not in self.kernel_choices[slot]:
                    raise ArchError(
                        f"ks[{slot}] (stage {stage}, layer {layer}): kernel {k} not allowed; "
                        f"allowed: {list(self.kernel_choices[slot])}"
                    )
                x = arch.e[slot]
                if self.coupling is not None:
                    # A depth may pair with several ratios (ProxylessNAS's single-block stage).
                    want = [e for d, e in self.stage_genes(stage) if d == depth]
                    if x not in want:
                        raise ArchError(
                            f"e[{slot}] (stage {stage}, layer {layer}): expand ratio {x} with "
                            f"depth {depth}; space {self.name} couples depth {depth} with expand "
                            f"{_one_or_list(want)} (allowed pairs: "
                            f"{[list(p) for p in self.stage_genes(stage)]})"
                        )
                elif x not in self.expand_choices:
                    raise ArchError(
                        f"e[{slot}] (stage {stage}, layer {layer}): expand ratio {x} not "
                        f"allowed; allowed: {list(self.expand_choices)}"
                    )
        return arch

    def parse(self, spec: Mapping[str, Any], resolution: int | None = None) -> Arch:
        """``Arch.from_ofa`` with this space's layout, then :meth:`validate`."""
        arch = Arch.from_ofa(spec, resolution=resolution, stage_sizes=self.stage_sizes)
        return self.validate(arch)

    # ----------------------------------------------------------------- extremes
    def largest(self, resolution: int | None = None) -> Arch:
        return self._extreme(max, resolution)

    def smallest(self, resolution: int | None = None) -> Arch:
        return self._extreme(min, resolution)

    def _extreme(self, pick: Any, resolution: int | None) -> Arch:
        ks: list[int] = []
        e: list[int] = []
        d: list[int] = []
        for stage in range(self.n_stages):
            start, size = self._stage_starts[stage], self.stage_sizes[stage]
            depth, coupled_e = pick(self.stage_genes(stage), key=lambda o: (o[0], o[1] or 0))
            d.append(depth)
            ks.extend(pick(self.kernel_choices[start + j]) for j in range(size))
            e.extend([coupled_e if coupled_e is not None else pick(self.expand_choices)] * size)
        r = pick(self.resolutions) if resolution is None else resolution
        return Arch(tuple(ks), tuple(e), tuple(d), int(r), self.stage_sizes)

    # ----------------------------------------------------------------- description
    def describe(self) -> dict[str, Any]:
        """Plain-data summary (``space show --json``)."""
        return {
            "name": self.name,
            "base": self.base,
            "description": self.description,
            "stages": self.n_stages,
            "layer_slots": self.n_layers,
            "stage_sizes": list(self.stage_sizes),
            "depth_choices": [list(x) for x in self.depth_choices],
            "kernel_choices": [list(x) for x in self.kernel_choices],
            "expand_choices": list(self.expand_choices),
            "coupling": None if self.coupling is None else [list(p) for p in self.coupling],
            "resolutions": list(self.resolutions),
            "width_mults": list(self.width_mults),
            "structures": self.structure_count(),
            "size": self.size(),
        }


def _one_or_list(values: Sequence[int | None]) -> str:
    return str(values[0]) if len(values) == 1 else f"one of {list(values)}"


def _pick(choices: Sequence[int], rng: np.random.Generator) -> int:
    return int(choices[rng.integers(len(choices))])


def check_width(space: SearchSpace, width_mult: object) -> float:
    """``width_mult`` if it is one of ``space``'s widths (the supernets that exist)."""
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not any(math.isclose(width_mult, w) for w in space.width_mults)
    ):
        widths = ", ".join(f"{w:g}" for w in space.width_mults)
        raise SpaceError(
            f"width multiplier {width_mult!r} is not one of space {space.name}'s widths ({widths})"
        )
    return float(width_mult)


def check_base_width(base: str, width_mult: object) -> float:
    """``width_mult`` if some built-in space over supernet ``base`` has it."""
    known = sorted({w for s in _builtin().values() if s.base == base for w in s.width_mults})
    if not known:
        bases = sorted({s.base for s in _builtin().values()})
        raise SpaceError(f"unknown supernet base {base!r}; known: {', '.join(bases)}")
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, (int, float))
        or not any(math.isclose(width_mult, w) for w in known)
    ):
        widths = ", ".join(f"{w:g}" for w in known)
        raise SpaceError(f"width multiplier {width_mult!r} is not a {base} width ({widths})")
    return float(width_mult)


# =============================================================================== registry


def _mbv3_space(name: str, description: str, **kwargs: Any) -> SearchSpace:
    n_layers = sum(MBV3_STAGE_SIZES)
    defaults: dict[str, Any] = {
        "base": "mbv3",
        "stage_sizes": MBV3_STAGE_SIZES,
        "kernel_choices": ((3, 5, 7),) * n_layers,
        "expand_choices": (3, 4, 6),
        "depth_choices": ((2, 3, 4),) * len(MBV3_STAGE_SIZES),
    }
    defaults.update(kwargs)
    return SearchSpace(name=name, description=description, **defaults)


def _fixed_kernels(
    per_stage: Sequence[int], stage_sizes: Sequence[int]
) -> tuple[tuple[int, ...], ...]:
    return tuple((k,) for k, n in zip(per_stage, stage_sizes, strict=True) for _ in range(n))


def _proxyless_space(name: str, description: str, **kwargs: Any) -> SearchSpace:
    n_layers = sum(PROXYLESS_STAGE_SIZES)
    defaults: dict[str, Any] = {
        "base": "proxyless",
        "stage_sizes": PROXYLESS_STAGE_SIZES,
        "kernel_choices": ((3, 5, 7),) * n_layers,
        "expand_choices": (3, 4, 6),
        "depth_choices": ((2, 3, 4),) * (len(PROXYLESS_STAGE_SIZES) - 1) + ((1,),),
        "width_mults": (1.0, 1.3),
    }
    defaults.update(kwargs)
    return SearchSpace(name=name, description=description, **defaults)


#: CompOFA's coupling on ProxylessNAS. The single-block last stage has no depth to couple with;
#: its expand ratio stays one free per-stage gene (depth 1 with 3, 4 or 6), so every stage keeps
#: three choices, as in CompOFA, and the last block's width is searchable as in OFA.
COMPOFA_PROXYLESS_COUPLING: tuple[tuple[int, int], ...] = (
    *COMPOFA_COUPLING,
    (1, 3),
    (1, 4),
    (1, 6),
)

#: Kernels CompOFA fixes per MobileNetV3 stage in its fixed-kernel space.
COMPOFA_KERNELS = (3, 5, 3, 3, 5)


def _builtin() -> dict[str, SearchSpace]:
    spaces = [
        _mbv3_space(
            "ofa",
            "OFA MobileNetV3: per-layer kernel {3,5,7} and expand {3,4,6}, per-stage depth {2,3,4}",
        ),
        _mbv3_space(
            "compofa",
            "CompOFA MobileNetV3, fixed kernels 3,5,3,3,5 per stage; depth/expand coupled "
            "(2,3),(3,4),(4,6): 243 architectures",
            kernel_choices=_fixed_kernels(COMPOFA_KERNELS, MBV3_STAGE_SIZES),
            coupling=COMPOFA_COUPLING,
        ),
        _mbv3_space(
            "compofa-ek",
            "CompOFA MobileNetV3 with elastic kernel {3,5,7} per layer; depth/expand coupled",
            coupling=COMPOFA_COUPLING,
        ),
        _proxyless_space(
            "ofa-proxyless",
            "OFA ProxylessNAS: per-layer kernel {3,5,7} and expand {3,4,6}, per-stage depth "
            "{2,3,4}; the last stage is a single block",
        ),
        _proxyless_space(
            "compofa-proxyless",
            "CompOFA ProxylessNAS, kernel 3 everywhere; depth/expand coupled (2,3),(3,4),(4,6) "
            "in stages 1-5, expand {3,4,6} in the single-block last stage: 729 architectures",
            kernel_choices=((3,),) * sum(PROXYLESS_STAGE_SIZES),
            coupling=COMPOFA_PROXYLESS_COUPLING,
        ),
    ]
    return {s.name: s for s in spaces}


def names() -> list[str]:
    return list(_builtin())


def get(name: str, resolutions: Sequence[int] | None = None) -> SearchSpace:
    """The space called ``name``, optionally with other resolutions."""
    all_spaces = _builtin()
    if name not in all_spaces:
        raise SpaceError(f"unknown space {name!r}; known spaces: {', '.join(all_spaces)}")
    space = all_spaces[name]
    return space if resolutions is None else space.with_resolutions(resolutions)
