"""tflite-local vs cpu-ort on the same CompOFA archs: latency of each, their rank agreement, and
what preparing a subnet costs on each runtime (TFLite conversion vs ONNX export).

Both devices run single-threaded (``tflite-local`` threads=1, ``cpu-ort-1t``), one after the
other (never at the same time: they would share the two cores), through the library
(``profile_archs`` -> adapter -> results store), so a rerun with the same ``--store`` resumes.
Prepare times come from the store's ``prepare_json`` of each measurement (a resumed run keeps
the numbers of the run that measured).

    .venv/bin/python benchmarks/tflite_vs_ort.py --n 20 --store runs/tflite_vs_ort.db \
        --out benchmarks/results/tflite_vs_ort
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from compofa_bench import spaces
from compofa_bench.cli.progress import progress_display
from compofa_bench.devices import load_device
from compofa_bench.profile import profile_archs
from compofa_bench.ranking import kendall_tau_b, spearman
from compofa_bench.store import ResultStore


def agreement(t: np.ndarray, o: np.ndarray) -> dict:
    """How TFLite latencies ``t`` and ORT latencies ``o`` of the same archs agree."""
    return {
        "spearman": spearman(t, o),
        "kendall_tau": kendall_tau_b(t, o),
        "tflite_median_ms": float(np.median(t)),
        "ort_median_ms": float(np.median(o)),
        "ratio_tflite_over_ort_median": float(np.median(t / o)),
        "ratio_range": [float(np.min(t / o)), float(np.max(t / o))],
    }


def interleaved(archs, keys, tfl, ort, rounds: int) -> dict:
    """Time both runtimes arch by arch, alternating, ``rounds`` times (conversions and exports
    come from the caches the store pass filled); per-arch median over rounds. On a shared
    machine this is the fair comparison: load changes hit both runtimes alike."""
    from compofa_bench.adapters import open_adapter
    from compofa_bench.adapters.base import Workload
    from compofa_bench.measure import Stats
    from compofa_bench.profile import SubnetFactory, arch_cache_key

    by_key = {a.key(): a for a in archs}
    factory = SubnetFactory()
    adapters = [open_adapter(tfl), open_adapter(ort)]
    prepared = {}
    for k in keys:
        a = by_key[k]
        module = factory(a)
        shape = (1, 3, a.resolution, a.resolution)
        for i, ad in enumerate(adapters):
            prepared[(i, k)] = ad.prepare(
                Workload(k, module, shape, arch_cache_key(a, batch_size=1))
            )
    ms: dict[tuple[int, str], list[float]] = {key: [] for key in prepared}
    rng = np.random.default_rng(1)
    for r in range(rounds):
        for k in rng.permutation(keys):
            order = (0, 1) if r % 2 == 0 else (1, 0)
            for i in order:
                spec = (tfl, ort)[i]
                timing = adapters[i].time(prepared[(i, k)], spec.protocol)
                ms[(i, k)].append(Stats.from_timing(timing).median_ms)
    t = np.array([np.median(ms[(0, k)]) for k in keys])
    o = np.array([np.median(ms[(1, k)]) for k in keys])
    # Repeatability of each runtime across rounds: rank agreement of round 1 with round 2.
    rep = {}
    if rounds >= 2:
        for i, name in enumerate((tfl.name, ort.name)):
            r1 = np.array([ms[(i, k)][0] for k in keys])
            r2 = np.array([ms[(i, k)][1] for k in keys])
            rep[name] = spearman(r1, r2)
    return {
        "rounds": rounds,
        **agreement(t, o),
        "round_to_round_spearman": rep,
        "per_arch": [
            {"key": k, "tflite_ms": float(a), "ort_ms": float(b)}
            for k, a, b in zip(keys, t, o, strict=True)
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=20, help="number of CompOFA archs (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default="runs/tflite_vs_ort.db")
    ap.add_argument("--out", default="benchmarks/results/tflite_vs_ort")
    ap.add_argument("--tflite-cache", default=None, help="TFLite conversion cache directory")
    ap.add_argument(
        "--rounds", type=int, default=3, help="interleaved side-by-side timing rounds (default 3)"
    )
    args = ap.parse_args()

    archs = spaces.get("compofa").sample_many(args.n, np.random.default_rng(args.seed))
    tfl = load_device("tflite-local")
    if args.tflite_cache:
        tfl = tfl.with_options(cache_dir=args.tflite_cache)
    ort = load_device("cpu-ort-1t")
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    wall = {}
    with ResultStore(args.store) as store:
        for spec in (tfl, ort):
            t0 = time.perf_counter()
            with progress_display() as progress:
                profile_archs(archs, [spec], store, space="compofa", progress=progress)
            wall[spec.name] = time.perf_counter() - t0
        rows = store.rows(
            ("device", "workload_key", "status", "median_ms", "prepare_json"), kind="network"
        )
    latest: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["status"] == "ok":
            latest[(r["device"], r["workload_key"])] = r
    keys = [
        a.key() for a in archs if (tfl.name, a.key()) in latest and (ort.name, a.key()) in latest
    ]
    if len(keys) < 3:
        print("error: fewer than 3 archs measured on both devices", file=sys.stderr)
        return 2
    t = np.array([latest[(tfl.name, k)]["median_ms"] for k in keys])
    o = np.array([latest[(ort.name, k)]["median_ms"] for k in keys])
    prep_t = [json.loads(latest[(tfl.name, k)]["prepare_json"] or "{}") for k in keys]
    prep_o = [json.loads(latest[(ort.name, k)]["prepare_json"] or "{}") for k in keys]
    conv = np.array([p.get("convert_s", np.nan) for p in prep_t])
    parity_t = np.array([p.get("parity_s", np.nan) for p in prep_t])
    sess_t = np.array([p.get("session_s", np.nan) for p in prep_t])
    exp_o = np.array([p.get("export_s", np.nan) + p.get("parity_s", 0.0) for p in prep_o])
    # The ONNX export may have happened in an earlier run of this store (a cache hit now).
    first_export = {}
    for r in rows:
        p = json.loads(r["prepare_json"] or "{}")
        if r["device"] == ort.name and p.get("export_s", 0) > 0:
            first_export.setdefault(r["workload_key"], p["export_s"] + p.get("parity_s", 0.0))
    exp_first = np.array([first_export.get(k, np.nan) for k in keys])
    sess_o = np.array([p.get("session_s", np.nan) for p in prep_o])
    fresh = conv > 0  # conversions done in this store's runs (0 = cache hit)
    result = {
        "n": len(keys),
        **agreement(t, o),
        "tflite_convert_s_median": float(np.median(conv[fresh])) if fresh.any() else None,
        "tflite_convert_s_range": [float(conv[fresh].min()), float(conv[fresh].max())]
        if fresh.any()
        else None,
        "tflite_parity_s_median": float(np.nanmedian(parity_t[fresh])) if fresh.any() else None,
        "tflite_session_s_median": float(np.nanmedian(sess_t)),
        "ort_export_plus_parity_s_median": float(np.nanmedian(exp_o)),
        "ort_session_s_median": float(np.nanmedian(sess_o)),
        "ort_first_export_plus_parity_s_median": float(np.nanmedian(exp_first))
        if np.isfinite(exp_first).any()
        else None,
        "wall_s": wall,
        "per_arch": [
            {"key": k, "tflite_ms": float(a), "ort_ms": float(b), "tflite_convert_s": float(c)}
            for k, a, b, c in zip(keys, t, o, conv, strict=True)
        ],
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
    }
    if args.rounds > 0:
        result["interleaved"] = interleaved(archs, keys, tfl, ort, args.rounds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    lines = [
        f"archs measured on both: {result['n']}",
        f"Spearman rank correlation: {result['spearman']:.3f}; Kendall tau: {result['kendall_tau']:.3f}",
        f"median latency: tflite-local {result['tflite_median_ms']:.2f} ms, "
        f"cpu-ort-1t {result['ort_median_ms']:.2f} ms; per-arch ratio tflite/ort median "
        f"{result['ratio_tflite_over_ort_median']:.2f} (range {result['ratio_range'][0]:.2f}-"
        f"{result['ratio_range'][1]:.2f})",
        f"prepare per arch (median): TFLite convert {result['tflite_convert_s_median']} s + parity "
        f"{result['tflite_parity_s_median']} s, "
        f"interpreter {result['tflite_session_s_median']:.3f} s; ONNX export+parity "
        f"{result['ort_export_plus_parity_s_median']:.2f} s (first export "
        f"{result['ort_first_export_plus_parity_s_median']} s), ORT session "
        f"{result['ort_session_s_median']:.3f} s",
        "",
        "| arch | tflite-local ms | cpu-ort-1t ms | ratio | convert s |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {p['key']} | {p['tflite_ms']:.2f} | {p['ort_ms']:.2f} | "
            f"{p['tflite_ms'] / p['ort_ms']:.2f} | {p['tflite_convert_s']:.1f} |"
            for p in result["per_arch"]
        ),
    ]
    if "interleaved" in result:
        il = result["interleaved"]
        lines[4:4] = [
            f"interleaved x{il['rounds']}: Spearman {il['spearman']:.3f}, Kendall tau "
            f"{il['kendall_tau']:.3f}; median tflite-local {il['tflite_median_ms']:.2f} ms, "
            f"cpu-ort-1t {il['ort_median_ms']:.2f} ms; ratio median "
            f"{il['ratio_tflite_over_ort_median']:.2f} (range {il['ratio_range'][0]:.2f}-"
            f"{il['ratio_range'][1]:.2f}); round-to-round Spearman {il['round_to_round_spearman']}",
        ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:5]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
