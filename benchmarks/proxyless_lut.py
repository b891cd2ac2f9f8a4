"""CompOFA-Proxyless through the latency-table pipeline on ONNX Runtime CPU, then an exhaustive
search on the built table (beside the MobileNetV3 CompOFA space on its committed table).

Steps (store-backed, so a rerun reuses every finished measurement):
 1. build the compofa-proxyless table (w1.0 unless --width-mult) at RESOLUTIONS with
    `lut build`'s library function (isolated single-layer models);
 2. validate it on N random archs measured end to end, with a calibration fitted on M *other*
    archs (`lut validate`);
 3. exhaustive search of all compofa-proxyless archs at those resolutions on the (calibrated)
    table for 4 latency targets, MACs as the labelled accuracy proxy (no ProxylessNAS accuracy
    predictor exists in the project), timed; the search is run --repeat times, best time kept;
 4. write a JSON summary.

Usage:
  .venv/bin/python benchmarks/proxyless_lut.py --device cpu-ort-1t --sample 30 --calibrate 15 \
      --store runs/proxyless_lut.db --out lookup_tables/cpu-ort-1t-compofa-proxyless.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from compofa_bench import search as S
from compofa_bench import sources, spaces
from compofa_bench.devices import load_device
from compofa_bench.lut import LatencyTable
from compofa_bench.lut.build import build_table
from compofa_bench.lut.validate import validate_table

RESOLUTIONS = (160, 224)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--sample", type=int, default=30)
    ap.add_argument("--calibrate", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width-mult", type=float, default=1.0)
    ap.add_argument("--store", default="runs/proxyless_lut.db")
    ap.add_argument("--out", default="lookup_tables/cpu-ort-1t-compofa-proxyless.json")
    ap.add_argument("--summary", default="benchmarks/proxyless_lut_summary.json")
    ap.add_argument("--plot", default="benchmarks/proxyless_lut_scatter.png")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    device = load_device(args.device)
    load_before = os.getloadavg()
    space = spaces.get("compofa-proxyless", RESOLUTIONS)

    t0 = time.perf_counter()
    _, build = build_table(
        device, space, store_path=args.store, out=out, width_mult=args.width_mult
    )
    build_wall = time.perf_counter() - t0
    print("build:", json.dumps(build), flush=True)

    t0 = time.perf_counter()
    # validate never writes over its input: the calibrated table goes next to it
    calibrated = out.with_name(f"{out.stem}-calibrated{out.suffix}")
    report = validate_table(
        out, device, "compofa-proxyless", n_sample=args.sample, n_calibrate=args.calibrate,
        seed=args.seed, store_path=args.store, plot=args.plot,
        out=calibrated if args.calibrate else None,
    )  # fmt: skip
    validate_wall = time.perf_counter() - t0
    cost = report["measurement"]
    per_network_s = cost["wall_s"] / max(cost["measured_now"], 1)
    print("validate:", json.dumps(report["uncalibrated"]), flush=True)

    # Exhaustive search: targets spread over the range of the table's (calibrated) predictions.
    searched = calibrated if args.calibrate else out
    search_info = _search(space, LatencyTable.load(searched), args.width_mult, args.repeat)
    # Side by side in the same run: the MobileNetV3 CompOFA space on its committed table.
    mbv3_lut = Path("lookup_tables/cpu-ort-1t-compofa.json")
    mbv3_info = None
    if mbv3_lut.is_file():
        mbv3 = spaces.get("compofa", RESOLUTIONS)
        mbv3_info = _search(mbv3, LatencyTable.load(mbv3_lut), None, args.repeat)
    summary = {
        "device": args.device,
        "space": space.name,
        "width_mult": args.width_mult,
        "resolutions": list(RESOLUTIONS),
        "space_size": space.size(),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "build": build,
        "build_wall_s": build_wall,
        "validate_wall_s": validate_wall,
        "per_network_s": per_network_s,
        "estimated_all_networks_s": per_network_s * space.size(),
        "e2e_measurement": cost,
        "uncalibrated": report["uncalibrated"],
        "calibrated": report.get("calibrated"),
        "calibration": report.get("calibration"),
        "search": search_info,
        "search_compofa_mbv3_same_run": mbv3_info,
        "archs": report["archs"],
    }
    Path(args.summary).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "archs"}, indent=1, default=str))


def _search(space: spaces.SearchSpace, table: LatencyTable, width: float | None, repeat: int):
    lat = sources.LutLatency(table, width if width is not None else table.width_mult)
    every = list(space.enumerate())
    pred = lat.latency_ms(every)
    targets = [float(np.quantile(pred, q)) for q in (0.1, 0.4, 0.7, 0.95)]
    acc = sources.MacsProxy(space, table.width_mult)
    timings, outcome = [], None
    for i in range(repeat):
        t0 = time.perf_counter()
        outcome = S.search(space, acc, lat, targets, np.random.default_rng(i), "exhaustive")
        timings.append(time.perf_counter() - t0)
    assert outcome is not None
    return {
        "space": space.name,
        "members": space.size(),
        "targets_ms": targets,
        "seconds_best_of": min(timings),
        "seconds_all": timings,
        "results": [
            {
                "target_ms": r.target,
                "feasible": r.feasible,
                "key": r.arch.key() if r.arch else None,
                "arch": r.arch.to_ofa() if r.arch else None,
                "proxy_score_mmacs": r.score,
                "predicted_ms": r.cost,
            }
            for r in outcome.results
        ],
        "frontier_size": len(outcome.frontier),
    }


if __name__ == "__main__":
    main()
