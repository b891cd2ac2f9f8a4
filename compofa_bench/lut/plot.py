"""Predicted-vs-measured scatter plot (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def scatter(
    predicted_ms: Sequence[float],
    measured_ms: Sequence[float],
    out: str | Path,
    *,
    calibrated: Sequence[float] | None = None,
    resolutions: Sequence[int] | None = None,
    title: str = "",
    band: float = 0.10,
) -> Path:
    """Points (measured, predicted) with the y = x line and a ±``band`` band; written
    atomically as PNG.

    The title carries what a reader checks first: RMSPE, the share within ±10% and Spearman
    of the layer sum (and of the calibration, when given). Points are coloured by
    ``resolution`` when given: the layer sum's bias is per resolution, and this shows it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compofa_bench.fileio import atomic_write_bytes
    from compofa_bench.lut.validate import metrics

    m = np.asarray(measured_ms, dtype=float)
    p = np.asarray(predicted_ms, dtype=float)
    series = [p] + ([np.asarray(calibrated, dtype=float)] if calibrated is not None else [])
    r = np.zeros(len(m), dtype=np.int64) if resolutions is None else np.asarray(resolutions)
    lo = 0.9 * min(float(m.min()), *(float(s.min()) for s in series))
    hi = 1.1 * max(float(m.max()), *(float(s.max()) for s in series))
    xs = np.linspace(lo, hi, 2)
    fig, ax = plt.subplots(figsize=(6, 5.5), dpi=120)
    ax.fill_between(xs, xs * (1 - band), xs * (1 + band), color="0.9", label=f"±{band:.0%}")
    ax.plot(xs, xs, color="0.4", lw=1, label="predicted = measured")
    colours = plt.get_cmap("viridis")
    levels = sorted(set(r.tolist()))
    for i, level in enumerate(levels):
        sel = r == level
        colour = colours(i / max(len(levels) - 1, 1))
        tag = f" {level} px" if resolutions is not None else ""
        ax.scatter(m[sel], p[sel], s=14, alpha=0.75, color=colour, label=f"layer sum{tag}")
        if calibrated is not None:
            ax.scatter(m[sel], series[1][sel], s=16, alpha=0.75, marker="x", color=colour,
                       label=f"calibrated{tag}")  # fmt: skip
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    lines = [title] if title else []
    for name, s in zip(("layer sum", "calibrated"), series, strict=False):
        f = metrics(s, m)
        lines.append(
            f"{name}: RMSPE {f['rmspe']:.1%}, within ±10% {f['within_10pct']:.0%}, "
            f"Spearman {f['spearman']:.3f}"
        )
    ax.set_title("\n".join(lines), fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(Path(out), buf.getvalue())
