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
    picks: Sequence[Sequence[Any]],
    path: str | Path,
    *,
    cost_label: str = "latency (ms)",
    score_label: str = "predicted top-1",
    title: str = "accuracy vs latency",
    cloud: Sequence[tuple[float, float]] = (),
) -> Path:
    """Save a Pareto plot: ``frontier`` as (cost, score) points joined by steps, ``picks`` as
    (target, cost, score[, measured[, missed]]) per searched target with the target drawn as a
    dashed line, and an optional ``cloud`` of other (cost, score) points in grey.

    ``measured`` (the winner re-measured on the device, same unit as cost; None if not
    measured) is drawn as a hollow marker beside the predicted star, joined to it. ``missed``
    (True when the re-measured winner misses its target) marks the target MISSED; without it a
    measured value above the target counts as missed."""
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
        target_labels = []
        shown: set[str] = set()

        def once(label: str) -> str | None:
            # one legend entry per kind of mark
            if label in shown:
                return None
            shown.add(label)
            return label

        for pick in picks:
            target, cost, score = (float(x) for x in pick[:3])
            measured = pick[3] if len(pick) > 3 else None
            missed = pick[4] if len(pick) > 4 else None
            if missed is None and measured is not None:
                missed = float(measured) > target
            ax.axvline(target, color="tab:red" if missed else "0.5", ls="--", lw=0.8, zorder=0)
            ax.scatter([cost], [score], s=60, marker="*", color="tab:red", zorder=4,
                       label=once("predicted (best per target)"))  # fmt: skip
            if measured is not None:
                ax.plot([cost, measured], [score, score], color="0.4", lw=0.8, zorder=3)
                ax.scatter([measured], [score], s=40, marker="o", facecolors="none",
                           edgecolors="black", zorder=5, label=once("re-measured"))  # fmt: skip
            target_labels.append((target, f"{target:g} MISSED" if missed else f"{target:g}",
                                  "tab:red" if missed else "0.3"))  # fmt: skip
        ax.set_xlabel(cost_label)
        ax.set_ylabel(score_label)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        ax.autoscale_view()  # final limits first: label boxes are measured in pixels
        _target_labels(ax, target_labels)
        return _save(fig, path)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- label placement


def _target_labels(ax: Any, labels: Sequence[tuple[float, str, str]]) -> None:
    """Target values written along the top edge, inside the axes (not on the x axis, where
    they ran into the tick labels), one row lower whenever a label would touch its
    neighbour."""
    if not labels:
        return
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    rows: list[list[Any]] = []
    for x, text, color in sorted(labels):
        for level in range(len(labels)):
            t = ax.annotate(text, (x, 1.0), xycoords=ax.get_xaxis_transform(),
                            xytext=(2, -10 - 10 * level), textcoords="offset points",
                            fontsize=7, color=color, ha="left", va="bottom")  # fmt: skip
            box = t.get_window_extent(renderer)
            if level == len(rows):
                rows.append([])
            if not any(box.overlaps(b) for b in rows[level]):
                rows[level].append(box)
                break
            t.remove()


def _text_box(t: Any, renderer: Any) -> Any:
    # the text alone: an annotation's own extent includes its leader line, which always
    # reaches the point and would make every label near a point "overlap"
    from matplotlib.text import Text

    t.update_positions(renderer)  # resolves the offset-points position to pixels
    return Text.get_window_extent(t, renderer)


def place_labels(
    ax: Any, points: Sequence[tuple[float, float, str]], fontsize: float = 7
) -> list[Any]:
    """Annotate (x, y, text) points so that no two labels overlap each other or leave the axes:
    each label takes the first of a ring of offsets around its point (growing outwards) whose
    box is free. Greedy, deterministic, no dependency; returns the text artists."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    axes_box = ax.get_window_extent(renderer)
    placed: list[Any] = []
    texts = []
    candidates = [
        (dx * r, dy * r, ha, va)
        for r in (1, 2, 3, 4, 5, 6, 8, 10)
        for dx, dy, ha, va in (
            (5, 5, "left", "bottom"), (5, -5, "left", "top"), (-5, 5, "right", "bottom"),
            (-5, -5, "right", "top"), (0, 7, "center", "bottom"), (0, -7, "center", "top"),
        )
    ]  # fmt: skip
    for x, y, text in points:
        chosen = None
        for dx, dy, ha, va in candidates:
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            fontsize=fontsize, ha=ha, va=va,
                            arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})  # fmt: skip
            box = _text_box(t, renderer)
            inside = (
                box.x0 >= axes_box.x0 and box.x1 <= axes_box.x1
                and box.y0 >= axes_box.y0 and box.y1 <= axes_box.y1
            )  # fmt: skip
            if inside and not any(box.overlaps(b) for b in placed):
                chosen = (t, box)
                break
            t.remove()
        if chosen is None:  # crowded: the last ring's first offset, overlap or not
            dx, dy, ha, va = candidates[-6]
            t = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                            fontsize=fontsize, ha=ha, va=va)  # fmt: skip
            chosen = (t, _text_box(t, renderer))
        placed.append(chosen[1])
        texts.append(chosen[0])
    return texts


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def _resolution_colors(resolutions: Sequence[int | None]) -> dict[int | None, Any]:
    plt = _pyplot()
    rs = sorted(set(resolutions), key=lambda r: (r is None, r or 0))
    if len(rs) <= 10:  # distinct hues read better than a ramp for a handful of resolutions
        cmap = plt.get_cmap("tab10")
        return {r: cmap(i) for i, r in enumerate(rs)}
    cmap = plt.get_cmap("viridis")
    return {r: cmap(i / (len(rs) - 1)) for i, r in enumerate(rs)}


# ----------------------------------------------------------------------------- measurements


def plot_latency_vs_macs(
    series: dict[str, Sequence[tuple[float, float, int | None]]],
    path: str | Path,
    *,
    title: str = "measured latency vs MACs",
) -> Path:
    """One panel per device: each measured (MMACs, median ms, resolution) point, one colour per
    resolution (shared across panels)."""
    plt = _pyplot()
    n = max(1, len(series))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n + 0.8, 4.0), dpi=120, squeeze=False)
    try:
        colors = _resolution_colors([p[2] for pts in series.values() for p in pts])
        for ax, (device, pts) in zip(axes[0], series.items(), strict=False):
            for r, color in colors.items():
                sel = [p for p in pts if p[2] == r]
                if sel:
                    ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=14, color=color,
                               label=f"{r} px" if r else "?", alpha=0.85)  # fmt: skip
            ax.set_title(f"{device} ({len(pts)})", fontsize=9)
            ax.set_xlabel("MMACs")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("median latency (ms)")
        axes[0][-1].legend(title="resolution", fontsize=7, title_fontsize=7, loc="upper left")
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def plot_compare(result: dict[str, Any], path: str | Path, *, label_moves: int = 5) -> Path:
    """One panel per pair of :func:`compofa_bench.compare.compare`: median ms on the first side
    (x) against the other (y), one colour per resolution, the geometric-mean ratio as a dashed
    line, Spearman / Kendall in the title and the workloads whose rank moves most labelled."""
    plt = _pyplot()
    pairs = result["pairs"]
    n = len(pairs)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.6, 4.4), dpi=120, squeeze=False)
    try:
        wl = result["workloads"]
        colors = _resolution_colors([w["resolution"] for w in wl])
        to_label: list[tuple[Any, list[tuple[float, float, str]]]] = []
        for ax, pair in zip(axes[0], pairs, strict=True):
            a, b = pair["a"], pair["b"]
            for r, color in colors.items():
                sel = [w for w in wl if w["resolution"] == r]
                ax.scatter([w["median_ms"][a] for w in sel], [w["median_ms"][b] for w in sel],
                           s=14, color=color, label=f"{r} px" if r else "?")  # fmt: skip
            xs = [w["median_ms"][a] for w in wl]
            lo, hi = min(xs), max(xs)
            g = pair["ratio_geomean"]
            ax.plot([lo, hi], [lo * g, hi * g], ls="--", color="0.5", lw=0.8,
                    label=f"x{g:.2f} (geometric mean)")  # fmt: skip
            by_key = {w["key"]: w for w in wl}
            moves = pair["rank_moves"][:label_moves]
            to_label.append((ax, [
                (by_key[m["key"]]["median_ms"][a], by_key[m["key"]]["median_ms"][b],
                 f"{m['rank_a']:g}→{m['rank_b']:g}")
                for m in moves
            ]))  # fmt: skip
            ax.set_xlabel(f"{a} median ms")
            ax.set_ylabel(f"{b} median ms")
            ax.set_title(
                f"{a} vs {b}: n={pair['n']}\nSpearman {pair['spearman']:.3f}, "
                f"Kendall {pair['kendall']:.3f}",
                fontsize=9,
            )
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="upper left")
        fig.text(0.01, 0.01, "labels: rank on x side → rank on y side (1 = fastest)",
                 fontsize=7, color="0.4")  # fmt: skip
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        for ax, points in to_label:  # after the layout: label boxes are measured in pixels
            ax.autoscale_view()
            place_labels(ax, points)
        return _save(fig, path)
    finally:
        plt.close(fig)
