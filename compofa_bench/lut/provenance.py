"""Does a table (and its calibration) come from the device it is used for, and does an
imported OFA table fit the base and width it is declared for?

Each check returns human lines that name both sides; callers show them as warnings, and under
``strict`` the first one becomes a :class:`~compofa_bench.errors.LutError` (the CLI's one
``error:`` line, exit 2). A table built on one device says nothing reliable about another: a
``cpu-ort`` (2 threads) table validated and calibrated on ``cpu-ort-1t`` used to pass silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from compofa_bench.errors import LutError

if TYPE_CHECKING:
    from compofa_bench.lut.table import LatencyTable, LutEntry
    from compofa_bench.spaces import SearchSpace


def device_mismatches(
    table: LatencyTable, device: str | None, what: str = "the table"
) -> list[str]:
    """Lines for each way ``table`` does not come from ``device`` (the device in use; None:
    unknown), and for a calibration fitted on another device than the table's layers (checked
    even without ``device``). Empty when everything agrees or a side is unknown. ``what``
    names the table in the lines (a path, usually)."""
    out = []
    built_on = table.provenance.get("device")
    cal = table.calibration
    cal_on = cal.device if cal is not None else None
    if device and built_on and built_on != device:
        out.append(
            f"{what} was measured on device {built_on!r}, but the device in use is {device!r}: "
            "its latencies describe the other device"
        )
    if device and cal_on and cal_on != device:
        out.append(
            f"{what}'s calibration was fitted on device {cal_on!r}, but the device in use "
            f"is {device!r}"
        )
    if cal_on and built_on and cal_on != built_on and cal_on != device:
        out.append(
            f"{what}'s calibration was fitted on device {cal_on!r}, but its layers were "
            f"measured on {built_on!r}"
        )
    return out


def fingerprint_mismatches(
    table: LatencyTable, fingerprint_now: dict[str, Any], what: str = "the table"
) -> list[str]:
    """A line when the table's stable fingerprint (host CPU, cores, OS, runtime and its
    settings) differs from the device's now, naming the fields that differ: the same device
    name on another host, or after a runtime upgrade, is not the same device."""
    then_hash = table.provenance.get("fingerprint_hash")
    now_hash = fingerprint_now.get("stable_hash")
    if not then_hash or not now_hash or then_hash == now_hash:
        return []
    then = _flat((table.provenance.get("fingerprint") or {}).get("stable") or {})
    now = _flat(fingerprint_now.get("stable") or {})
    diffs = [k for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    shown = "; ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in diffs[:3])
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return [
        f"{what} was measured with device fingerprint {then_hash}, the device in use has "
        f"{now_hash}: {shown or 'the stored fingerprint has no details'}{more}"
    ]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_space(table: LatencyTable, space: SearchSpace, what: str = "the table") -> None:
    """A LutError naming both bases when ``table`` is for another base than ``space`` (its
    keys would otherwise fail deep in the layer layout, e.g. on stage counts)."""
    if table.base != space.base:
        raise LutError(
            f"{what} is for base {table.base!r} (width {table.width_mult:g}), but space "
            f"{space.name} is base {space.base!r}: build or import a table of that base"
        )


def enforce(lines: Sequence[str], strict: bool) -> list[str]:
    """Raise the first line as a LutError under ``strict``; else return the lines to warn."""
    if strict and lines:
        raise LutError(f"{lines[0]} (--strict)")
    return list(lines)


def _base_spaces(base: str) -> list[str]:
    """Built-in spaces of ``base``, largest first (OFA's space holds every CompOFA layer)."""
    from compofa_bench import spaces

    found = [spaces.get(n) for n in spaces.names()]
    found = [s for s in found if s.base == base]
    return [s.name for s in sorted(found, key=lambda s: -s.size())]


def import_mismatches(
    entries: dict[int, dict[str, LutEntry]],
    base: str,
    width_mult: float,
    n_classes: int,
    source: str,
) -> tuple[list[str], bool]:
    """Check imported OFA-yaml keys against the layers of ``base`` at ``width_mult``.

    Returns ``(lines, fatal)``: ``fatal`` when at some resolution the file holds fewer than
    half of the layers of that base and width (a few keys, such as the stem, can coincide
    across widths; a table of another base or width would fail later with an obscure
    message); lines otherwise name the layers a space of the base needs that the file
    lacks (a partial table still predicts the archs it covers)."""
    from compofa_bench import spaces
    from compofa_bench.lut.keys import layout
    from compofa_bench.lut.layers import unique_layers

    names = _base_spaces(base)
    if not names:
        return [], False
    layout(base)  # an unknown base is an error of its own
    lines: list[str] = []
    for r, keyed in sorted(entries.items()):
        space = spaces.get(names[0], [r])
        want = set(unique_layers(space, width_mult=width_mult, n_classes=n_classes)[r])
        have = set(keyed)
        if len(have & want) < len(want) / 2:
            hint = _guess(have, r, base, width_mult, n_classes)
            example = sorted(have - want)[0] if have - want else "(none)"
            return [
                f"{source}: at resolution {r} the file holds {len(have & want)} of the "
                f"{len(want)} layers of base {base!r} at width {width_mult:g} (e.g. the file "
                f"has {example!r}, base {base} expects {sorted(want - have)[0]!r}){hint}"
            ], True
        missing = sorted(want - have)
        if missing:
            lines.append(
                f"{source}: resolution {r} lacks {len(missing)} of the {len(want)} layers of "
                f"space {names[0]} (base {base!r}, width {width_mult:g}), e.g. {missing[0]!r}; "
                "archs that use them cannot be predicted"
            )
    return lines, False


def _guess(have: set[str], r: int, base: str, width_mult: float, n_classes: int) -> str:
    """Name the base/width the keys do fit, when one of the usual ones does."""
    from compofa_bench import spaces
    from compofa_bench.lut.keys import _layouts
    from compofa_bench.lut.layers import unique_layers

    for other in _layouts():
        names = _base_spaces(other)
        if not names:
            continue
        for w in (1.0, 1.2, 1.3, 0.75):
            if other == base and w == width_mult:
                continue
            space = spaces.get(names[0], [r])
            want = set(unique_layers(space, width_mult=w, n_classes=n_classes)[r])
            if len(have & want) >= len(want) / 2:
                return f"; they fit --base {other} --width-mult {w:g}"
    return ""
