"""Every prediction that is measured again is checked: met, MISSED, or too busy to tell.

A search picks a winner for a latency target from a *predicted* latency (a lookup table);
exporting it with ``--device`` measures it again. The target is **MISSED** when the measured
latency is more than ``tolerance`` (default 10%) above the target. A measurement taken while
other processes used the measured CPUs (``contended``) or whose samples spread too much
(``unstable``) cannot tell a miss from a busy host, and the verdict says so instead of passing
for the truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from compofa_bench.errors import SearchError

DEFAULT_TOLERANCE = 0.10

#: Exit status of a command run with ``--fail-on-miss`` when a target was missed.
EXIT_MISSED = 3


def check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise SearchError(f"--tolerance must be a number, got {tolerance!r}")
    if not math.isfinite(tolerance) or not 0 <= tolerance < 10:
        raise SearchError(f"--tolerance must be a fraction in [0, 10), e.g. 0.1, got {tolerance}")
    return float(tolerance)


@dataclass(frozen=True)
class Verdict:
    """One target's check. ``status``: ``met`` or ``MISSED``; ``trusted`` is False when the
    re-measure was contended or unstable (then ``label`` says the host was too busy)."""

    target_ms: float
    predicted_ms: float
    measured_ms: float
    tolerance: float
    contended: bool = False
    unstable: bool = False

    @property
    def measured_over_predicted(self) -> float:
        return self.measured_ms / self.predicted_ms if self.predicted_ms > 0 else math.inf

    @property
    def measured_over_target(self) -> float:
        return self.measured_ms / self.target_ms if self.target_ms > 0 else math.inf

    @property
    def missed(self) -> bool:
        return self.measured_ms > self.target_ms * (1.0 + self.tolerance)

    @property
    def status(self) -> str:
        return "MISSED" if self.missed else "met"

    @property
    def trusted(self) -> bool:
        return not (self.contended or self.unstable)

    @property
    def label(self) -> str:
        """``met``, ``MISSED``, or either with why it cannot be trusted."""
        why = [w for w, on in (("contended", self.contended), ("unstable", self.unstable)) if on]
        return self.status + (f" ({', '.join(why)}: host too busy to tell)" if why else "")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            measured_over_predicted=round(self.measured_over_predicted, 4),
            measured_over_target=round(self.measured_over_target, 4),
            status=self.status,
            trusted=self.trusted,
            label=self.label,
        )
        return d


def check(
    target_ms: float,
    predicted_ms: float,
    measured: Mapping[str, Any],
    tolerance: float = DEFAULT_TOLERANCE,
) -> Verdict:
    """The verdict of one re-measured winner; ``measured`` is what
    :func:`compofa_bench.export.measure_artifact` returns (``median_ms``, ``contended``,
    ``unstable``)."""
    return Verdict(
        float(target_ms),
        float(predicted_ms),
        float(measured["median_ms"]),
        check_tolerance(tolerance),
        bool(measured.get("contended")),
        bool(measured.get("unstable")),
    )


def summarize(items: Iterable[Mapping[str, Any]], tolerance: float) -> dict[str, Any]:
    """The run's verdict over target records that carry a ``verdict`` dict."""
    checked = [i["verdict"] for i in items if i.get("verdict")]
    missed = [v for v in checked if v["status"] == "MISSED"]
    untrusted = [v for v in checked if not v["trusted"]]
    return {
        "tolerance": tolerance,
        "checked": len(checked),
        "met": len(checked) - len(missed),
        "missed": [v["target_ms"] for v in missed],
        "untrusted": [v["target_ms"] for v in untrusted],
        "all_met": not missed,
        "line": closing_line(checked, tolerance),
    }


def closing_line(checked: list[Mapping[str, Any]], tolerance: float) -> str:
    """One sentence a user can act on."""
    if not checked:
        return "verdict: nothing was measured again (no --device)"
    missed = [v for v in checked if v["status"] == "MISSED"]
    untrusted = [v for v in checked if not v["trusted"]]
    parts = [f"verdict: {len(checked) - len(missed)}/{len(checked)} targets met within "
             f"+{tolerance:.0%}"]  # fmt: skip
    if missed:
        shown = ", ".join(
            f"{v['target_ms']:g} ms (measured {v['measured_ms']:.2f} ms, "
            f"{v['measured_over_target']:.2f}x target)"
            for v in missed
        )
        parts.append(f"MISSED: {shown}")
    if untrusted:
        parts.append(
            f"{len(untrusted)} re-measure(s) contended or unstable: the host was too busy to "
            "tell; rerun on a quiet host"
        )
    elif not missed:
        parts.append("every re-measure on a quiet host")
    return "; ".join(parts)


def table_verdict(validation: Mapping[str, Any], tolerance: float) -> dict[str, Any]:
    """Does a lookup table hold on this host: RMSPE within ``tolerance`` of the end-to-end
    measurements (``lut validate``'s report)? Contended measurements make it too busy to tell."""
    m = validation["uncalibrated"]
    contended = list(validation.get("measurement", {}).get("contended", []))
    holds = m["rmspe"] <= tolerance
    line = (
        f"table: RMSPE {m['rmspe']:.1%}, {m['within_10pct']:.0%} of {validation['n']} archs "
        f"within ±10%, Spearman {m['spearman']:.3f}: "
        + ("holds" if holds else f"does NOT hold within ±{tolerance:.0%}")
    )
    if contended:
        line += (
            f"; {len(contended)} measurement(s) contended: the host was too busy to tell, "
            "rerun on a quiet host"
        )
    return {"holds": holds, "trusted": not contended, "contended": contended, "line": line}
