"""The GPU figures, read from what `benchmarks/gpu_check.sh` returned (its stores and results).

A GPU host is lent for minutes, and a step cut by its time limit leaves its rows in the stores
but no summary of its own. This script reads the stores of one or more returned archives and
derives every figure the GPU check is meant to show, from the rows themselves:

* the latency of every CompOFA arch per configuration (device x batch), with how many of the
  243 were measured, how many rows are unstable, and the noise floor of each timing run;
* repeatability: every arch measured more than once on the same device, batch and protocol
  (the all-archs run against the table's validation, the recipe's truth, the modes' eager
  run), as Spearman and median |relative difference| per pair of sources;
* the GPU lookup table against every end-to-end arch its validation measured: uncalibrated,
  and calibrated by two-fold cross-validation (fit on one half, score the other, swap);
* the recipe and modes tables as the steps wrote them.

    python benchmarks/gpu_check_report.py RUN_DIR [RUN_DIR ...] --out benchmarks/results/gpu_check

RUN_DIR is an unpacked gpu_check.tar.gz (stores/, results/, steps.tsv); with several, the
newest copy of each store is read (a rerun resumes from the earlier one's stores).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compofa_bench import spaces
from compofa_bench.lut import LatencyTable
from compofa_bench.lut.validate import fit_calibration, metrics
from compofa_bench.ranking import spearman

CONFIGS = (("cuda-torch", 64), ("cuda-torch", 1), ("cuda-torch-fp16", 64), ("cuda-torch-fp16", 1))


def read_rows(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [
            dict(r)
            for r in con.execute(
                "select device, batch_size, workload_key, arch_json, resolution, median_ms, cv, "
                "unstable, started_at, protocol_hash, fingerprint_json "
                "from measurements where kind = 'network' and status = 'ok'"
            )
        ]
    finally:
        con.close()


def read_runs(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("select * from runs")]
    except sqlite3.OperationalError:  # a store of schema 1 has no runs table
        return []
    finally:
        con.close()


def latency_all(rows: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    n_space = len(list(spaces.get("compofa", (224,)).enumerate()))
    out: dict[str, Any] = {"n_space": n_space, "configs": {}, "noise_floor_runs": []}
    per: dict[tuple[str, int], dict[str, float]] = {}
    for dev, b in CONFIGS:
        sel = [r for r in rows if r["device"] == dev and r["batch_size"] == b]
        ms = np.array([r["median_ms"] for r in sel])
        per[(dev, b)] = {r["workload_key"]: r["median_ms"] for r in sel}
        out["configs"][f"{dev}@b{b}"] = {
            "measured": len(sel),
            "all_positive": bool(len(ms) and (ms > 0).all()),
            "unstable": int(sum(r["unstable"] for r in sel)),
            "min_ms": float(ms.min()) if len(ms) else None,
            "median_ms": float(np.median(ms)) if len(ms) else None,
            "max_ms": float(ms.max()) if len(ms) else None,
            "images_per_s_at_median": float(b / np.median(ms) * 1e3) if len(ms) else None,
            "measured_between": [min(r["started_at"] for r in sel)[:19], max(r["started_at"] for r in sel)[:19]]
            if sel else None,
            "per_arch_ms": per[(dev, b)],
        }  # fmt: skip
    for b in (64, 1):
        a, h = per[("cuda-torch", b)], per[("cuda-torch-fp16", b)]
        common = sorted(set(a) & set(h))
        if common:
            r = np.array([h[k] / a[k] for k in common])
            out[f"fp16_over_fp32_b{b}"] = {
                "n": len(common),
                "median": float(np.median(r)),
                "min": float(r.min()),
                "max": float(r.max()),
            }
    for dev in ("cuda-torch", "cuda-torch-fp16"):
        a, c = per[(dev, 64)], per[(dev, 1)]
        common = sorted(set(a) & set(c))
        if len(common) > 2:
            out[f"{dev}_batch1_vs_batch64_spearman"] = {
                "n": len(common),
                "spearman": spearman(np.array([a[k] for k in common]), np.array([c[k] for k in common])),
            }  # fmt: skip
    for r in runs:
        if r.get("noise_floor") is not None:
            out["noise_floor_runs"].append(
                {k: r.get(k) for k in ("device", "started_at", "finished_at", "noise_floor")}
            )
    return out


def mode(row: dict[str, Any]) -> str:
    """How a row ran: eager, cuda-graph or compile (from its device fingerprint)."""
    a = json.loads(row["fingerprint_json"])["stable"]["adapter"]
    return (
        "cuda-graph"
        if a.get("cuda_graph")
        else f"compile-{a['compile']}"
        if a.get("compile")
        else "eager"
    )


def repeatability(stores: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every arch measured by two sources (store and execution mode) on the same device, batch,
    protocol and mode: one figure per pair of sources and batch."""
    seen: dict[tuple[str, int, str, str], dict[str, float]] = defaultdict(dict)
    for name, rows in stores.items():
        for r in rows:
            src = f"{name.removesuffix('.db')}:{mode(r)}"
            seen[(r["device"], r["batch_size"], r["protocol_hash"], r["workload_key"])][src] = r[
                "median_ms"
            ]
    pairs: dict[tuple[str, int, str, str], list[tuple[float, float]]] = defaultdict(list)
    for (dev, b, _p, _k), by_src in seen.items():
        srcs = sorted(by_src)
        for i in range(len(srcs)):
            for j in range(i + 1, len(srcs)):
                if srcs[i].split(":")[1] != srcs[j].split(":")[1]:
                    continue  # eager against graphs is the modes comparison, not a repeat
                pairs[(dev, b, srcs[i], srcs[j])].append((by_src[srcs[i]], by_src[srcs[j]]))
    out = []
    for (dev, b, s1, s2), v in sorted(pairs.items()):
        x, y = np.array(v).T
        rel = np.abs(x - y) / np.minimum(x, y)
        out.append({
            "device": dev, "batch": b, "sources": [s1, s2], "n": len(v),
            "spearman": spearman(x, y) if len(v) > 2 else None,
            "median_rel_diff": float(np.median(rel)), "max_rel_diff": float(rel.max()),
        })  # fmt: skip
    return {"pairs": out}


def table_validation(table_path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    table = LatencyTable.load(table_path)
    space = spaces.get("compofa", table.resolutions)
    archs = [space.parse(json.loads(r["arch_json"])) for r in rows]
    measured = np.array([r["median_ms"] for r in rows])
    predicted = np.array(table.predict_ms(archs))
    res = np.array([r["resolution"] for r in rows])
    out: dict[str, Any] = {
        "n_layers": len(table),
        "resolutions": list(table.resolutions),
        "uncalibrated": metrics(predicted, measured),
    }
    # Two-fold cross-validation: no arch is scored by a calibration fitted on it.
    order = np.random.default_rng(0).permutation(len(rows))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    calibrated = np.empty_like(predicted)
    for fit, score in (halves, halves[::-1]):
        cal = fit_calibration(predicted[fit], measured[fit], res[fit])
        calibrated[score] = [
            cal.apply(float(p), int(r)) for p, r in zip(predicted[score], res[score], strict=True)
        ]
    out["calibrated_2fold"] = metrics(calibrated, measured)
    out["per_arch"] = [
        {"key": r["workload_key"], "measured_ms": float(m), "predicted_ms": float(p)}
        for r, m, p in zip(rows, measured, predicted, strict=True)
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", type=Path, help="unpacked gpu_check archives, oldest first")
    ap.add_argument("--out", default="benchmarks/results/gpu_check", help="JSON stem")
    args = ap.parse_args()
    stores: dict[str, Path] = {}
    results: dict[str, Path] = {}
    for run in args.runs:  # newest last: its copy of a store wins
        stores.update({p.name: p for p in sorted((run / "stores").glob("*.db"))})
        results.update({p.name: p for p in sorted((run / "results").glob("*"))})
    rows = {name: read_rows(p) for name, p in stores.items()}
    report: dict[str, Any] = {"sources": {k: str(v) for k, v in stores.items()}}
    if "gpu_all.db" in stores:
        report["latency_all"] = latency_all(rows["gpu_all.db"], read_runs(stores["gpu_all.db"]))
    report["repeatability"] = repeatability(rows)
    if "gpu_lut.db" in stores and "cuda-torch-compofa.json" in results:
        report["table"] = table_validation(results["cuda-torch-compofa.json"], rows["gpu_lut.db"])
    for name in ("gpu_compofa_recipe.json", "gpu_modes.json", "train_throughput.json"):
        if name in results and results[name].stat().st_size:
            report[name.removesuffix(".json")] = json.loads(results[name].read_text())
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    brief = {k: v for k, v in report.get("latency_all", {}).get("configs", {}).items()}
    for v in brief.values():
        v.pop("per_arch_ms", None)
    print(json.dumps({"configs": brief, **{k: report.get("latency_all", {}).get(k) for k in (
        "fp16_over_fp32_b64", "fp16_over_fp32_b1", "cuda-torch_batch1_vs_batch64_spearman",
        "noise_floor_runs")}}, indent=1))  # fmt: skip
    print(json.dumps(report["repeatability"], indent=1))
    if "table" in report:
        t = report["table"]
        print(
            json.dumps(
                {k: t[k] for k in ("n_layers", "uncalibrated", "calibrated_2fold")}, indent=1
            )
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
