"""Plots (matplotlib, Agg backend: files only, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ----------------------------------------------------------------------------- search (pareto)


def plot_pareto(
    frontier: Sequence[tuple[float, float]],
    picks: Sequence[tuple[float, float, float]],
    path: str | Path,
    *,
    cost_label: str = "latency (ms)",
    score_label: str = "predicted top-1",
    title: str = "accuracy vs latency",
    cloud: Sequence[tuple[float, float]] = (),
) -> Path:
    """Save a Pareto plot: ``frontier`` as (cost, score) points joined by steps, ``picks`` as
    (target, cost, score) per searched target with the target drawn as a dashed line, and an
    optional ``cloud`` of other (cost, score) points in grey."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        if cloud:
            ax.scatter(
                [c for c, _ in cloud],
                [s for _, s in cloud],
                s=4,
                c="0.75",
                label="evaluated",
                zorder=1,
            )
        if frontier:
            xs, ys = [c for c, _ in frontier], [s for _, s in frontier]
            ax.step(xs, ys, where="post", color="tab:blue", zorder=2)
            ax.scatter(xs, ys, s=12, color="tab:blue", label="Pareto frontier", zorder=3)
        for i, (target, cost, score) in enumerate(picks):
            ax.axvline(target, color="0.5", ls="--", lw=0.8, zorder=0)
            ax.scatter(
                [cost],
                [score],
                s=60,
                marker="*",
                color="tab:red",
                zorder=4,
                label="best per target" if i == 0 else None,
            )
            ax.annotate(
                f"{target:g}",
                (target, ax.get_ylim()[0]),
                fontsize=7,
                color="0.4",
                ha="center",
                va="bottom",
            )
        ax.set_xlabel(cost_label)
        ax.set_ylabel(score_label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp)
        tmp.replace(path)
    finally:
        plt.close(fig)
    return path
