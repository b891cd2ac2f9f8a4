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
    title: str = "",
    band: float = 0.10,
) -> Path:
    """Points (measured, predicted) with the y = x line and a ±``band`` band; written
    atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compofa_bench.fileio import atomic_write_bytes

    m = np.asarray(measured_ms, dtype=float)
    p = np.asarray(predicted_ms, dtype=float)
    series = [p] + ([np.asarray(calibrated, dtype=float)] if calibrated is not None else [])
    lo = 0.9 * min(float(m.min()), *(float(s.min()) for s in series))
    hi = 1.1 * max(float(m.max()), *(float(s.max()) for s in series))
    xs = np.linspace(lo, hi, 2)
    fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
    ax.fill_between(xs, xs * (1 - band), xs * (1 + band), color="0.9", label=f"±{band:.0%}")
    ax.plot(xs, xs, color="0.4", lw=1, label="predicted = measured")
    ax.scatter(m, p, s=12, alpha=0.7, label="layer sum")
    if calibrated is not None:
        ax.scatter(m, series[1], s=12, alpha=0.7, marker="x", label="calibrated")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("measured latency (ms)")
    ax.set_ylabel("predicted latency (ms)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(Path(out), buf.getvalue())
