"""Training curves from ``metrics.jsonl``: loss and batch accuracy against images seen, one
colour per phase, optionally several runs side by side (the reproduction's methods)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from compofa_bench.errors import TrainError


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a run's ``metrics.jsonl`` (a run directory or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise TrainError(f"cannot read training metrics {p}: {exc}") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines):  # a run killed mid-write leaves a partial last line
                break
            raise TrainError(f"{p} line {n} is not JSON") from None
    return rows


def plot_curves(runs: Mapping[str, list[dict[str, Any]]], out: str | Path, title: str = "") -> Path:
    """Loss (top) and batch top-1 of each step's first subnet (bottom) per logged step.

    The x axis counts optimizer steps over the whole run (``global_step``); phase boundaries
    are marked so a reader sees where the schedule changes what is trained.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    fig, (ax_loss, ax_acc) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(runs.items()):
        if not rows:
            continue
        c = colours[i % len(colours)]
        x = [r["global_step"] for r in rows]
        mk = "." if len(rows) < 50 else None  # a short run's few points stay visible
        ax_loss.plot(x, [r["loss"] for r in rows], color=c, lw=1, marker=mk, label=name)
        if all("acc" in r for r in rows):
            ax_acc.plot(x, [r["acc"] for r in rows], color=c, lw=1, marker=mk, label=name)
        prev = rows[0]["phase"]
        for r in rows[1:]:
            if r["phase"] != prev:
                for ax in (ax_loss, ax_acc):
                    ax.axvline(r["global_step"], color=c, lw=0.5, ls=":")
                ax_loss.annotate(
                    r["phase"],
                    (r["global_step"], 1),
                    xycoords=("data", "axes fraction"),
                    fontsize=7,
                    color=c,
                    rotation=90,
                    va="top",
                )
                prev = r["phase"]
    ax_loss.set_ylabel("training loss")
    ax_acc.set_ylabel("batch top-1 (first subnet)")
    ax_acc.set_xlabel("optimizer step")
    ax_loss.legend(fontsize=8)
    ax_loss.grid(alpha=0.3)
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
