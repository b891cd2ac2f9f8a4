"""OFA's latency-table form: one ``<R>_lookup_table.yaml`` per resolution.

Each file maps a layer key to ``{count, mean, std}`` in milliseconds (ProxylessNAS tables give
``var`` instead of ``std``). Import keeps every value bit for bit (YAML and JSON both write
floats with ``repr``), so import -> export -> import is lossless.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from compofa_bench.errors import LutError
from compofa_bench.fileio import atomic_write_text
from compofa_bench.lut.table import LatencyTable, LutEntry

_FILE_RE = re.compile(r"^(\d+)_lookup_table\.ya?ml$")


def _loader() -> type:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_ofa_yaml(path: Path) -> dict[str, LutEntry]:
    """One OFA yaml file as ``key -> LutEntry``."""
    try:
        with open(path) as fh:
            raw = yaml.load(fh, Loader=_loader())
    except (OSError, UnicodeDecodeError) as exc:
        raise LutError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise LutError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise LutError(f"{path}: expected a mapping of layer key -> count/mean/std")
    out: dict[str, LutEntry] = {}
    for key, v in raw.items():
        if not isinstance(v, dict) or "mean" not in v:
            raise LutError(f"{path}: entry {key!r} needs at least a 'mean'")
        try:
            if "std" in v:
                std = float(v["std"])
            elif "var" in v:
                std = math.sqrt(float(v["var"]))
            else:
                std = 0.0
            entry = LutEntry(count=int(v.get("count", 0)), mean_ms=float(v["mean"]), std_ms=std)
        except (TypeError, ValueError, OverflowError) as exc:
            raise LutError(f"{path}: entry {key!r}: {exc}") from None
        # A latency is a positive, finite time: a negative mean would make search call an
        # impossible target feasible.
        if not (math.isfinite(entry.mean_ms) and entry.mean_ms > 0):
            raise LutError(f"{path}: entry {key!r}: mean {entry.mean_ms!r} ms is not positive")
        if not (math.isfinite(entry.std_ms) and entry.std_ms >= 0):
            raise LutError(f"{path}: entry {key!r}: std {entry.std_ms!r} ms is not >= 0")
        if entry.count < 0:
            raise LutError(f"{path}: entry {key!r}: count {entry.count} is negative")
        out[str(key)] = entry
    return out


_STEM_RE = re.compile(r"^Conv-input:(\d+)x(\d+)x3-")


def _checked(
    entries: dict[int, dict[str, LutEntry]],
    base: str,
    width_mult: float,
    n_classes: int,
    source: str,
    strict: bool,
) -> list[str]:
    """Refuse keys of another base or width (they used to fail later, on stage counts);
    return the lines about layers the file lacks (an error under ``strict``)."""
    from compofa_bench.lut.provenance import enforce, import_mismatches

    lines, fatal = import_mismatches(entries, base, width_mult, n_classes, source)
    if fatal:
        raise LutError(lines[0])
    return enforce(lines, strict)


def import_ofa_file(
    path: str | Path,
    width_mult: float,
    base: str = "mbv3",
    n_classes: int = 1000,
    resolution: int | None = None,
    provenance: dict[str, Any] | None = None,
    strict: bool = False,
) -> LatencyTable:
    """One yaml file of one resolution, such as ProxylessNAS's ``mobile_trim.yaml`` (224).

    Without ``resolution`` it is read from the stem's key (``Conv-input:224x224x3-...``)."""
    p = Path(path)
    entries = read_ofa_yaml(p)
    if resolution is None:
        found = {int(m.group(1)) for k in entries if (m := _STEM_RE.match(k))}
        if len(found) != 1:
            raise LutError(
                f"{p}: cannot tell its resolution from a 'Conv-input:RxRx3' key "
                f"(found {sorted(found) or 'none'}); give the resolution"
            )
        resolution = found.pop()
    notes = _checked({int(resolution): entries}, base, width_mult, n_classes, str(p), strict)
    prov = {"source": "ofa-yaml", "imported_from": str(p.resolve()), "files": [p.name]}
    if notes:
        prov["import_warnings"] = notes
    prov.update(provenance or {})
    return LatencyTable(
        base=base,
        width_mult=width_mult,
        entries={int(resolution): entries},
        n_classes=n_classes,
        statistic="mean",
        provenance=prov,
    )


def import_ofa_dir(
    directory: str | Path,
    width_mult: float,
    base: str = "mbv3",
    n_classes: int = 1000,
    provenance: dict[str, Any] | None = None,
    strict: bool = False,
) -> LatencyTable:
    """Read every ``<R>_lookup_table.yaml`` in ``directory`` into one table.

    The width multiplier is not in OFA's files; it must be given (the OFA/CompOFA Note10
    tables are for the w1.2 supernet). Predictions sum the ``mean``, as OFA does.

    Keys of another base or width raise a LutError that names what does not fit; layers of
    the base's space that the files lack are listed in ``provenance["import_warnings"]``
    (a LutError under ``strict``).
    """
    d = Path(directory)
    if d.is_file():
        return import_ofa_file(d, width_mult, base, n_classes, provenance=provenance, strict=strict)
    if not d.is_dir():
        raise LutError(f"{d} is not a directory of <R>_lookup_table.yaml files")
    files = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _FILE_RE.match(p.name)))
    if not files:
        raise LutError(f"{d} holds no <R>_lookup_table.yaml files")
    entries = {r: read_ofa_yaml(p) for r, p in files}
    notes = _checked(entries, base, width_mult, n_classes, str(d), strict)
    prov: dict[str, Any] = {
        "source": "ofa-yaml",
        "imported_from": str(d.resolve()),
        "files": [p.name for _, p in files],
    }
    if notes:
        prov["import_warnings"] = notes
    prov.update(provenance or {})
    return LatencyTable(
        base=base,
        width_mult=width_mult,
        entries=entries,
        n_classes=n_classes,
        statistic="mean",
        provenance=prov,
    )


def export_ofa_dir(table: LatencyTable, directory: str | Path) -> list[Path]:
    """Write one ``<R>_lookup_table.yaml`` per resolution (count/mean/std); returns the paths.

    OFA's readers sum ``mean``: a table built here with ``statistic = median`` is exported with
    its means, so the exported file predicts what OFA's code would (say so in the report)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise LutError(f"{d} exists and is not a directory")
    written = []
    for r, entries in table.entries.items():
        data = {
            k: {"count": e.count, "mean": e.mean_ms, "std": e.std_ms}
            for k, e in sorted(entries.items())
        }
        text = yaml.safe_dump(data, default_flow_style=False, sort_keys=True)
        written.append(atomic_write_text(d / f"{r}_lookup_table.yaml", text))
    return written
