"""Latency-table goals on ONNX Runtime CPU: build cost, accuracy, OFA-space coverage.

Steps (all store-backed, so a rerun reuses every finished measurement):
 1. build the CompOFA table at 4 resolutions on DEVICE (isolated single-layer models);
 2. validate it on N random CompOFA archs measured end to end, with a calibration fitted on
    M *other* archs measured interleaved with them (one scale per resolution when each has at
    least 2; written to <out>-calibrated.json), and the mean error per resolution before and after it;
 3. estimate the device time of measuring all 972 CompOFA networks end to end from the
    measured per-network cost (wall time of the validate run / archs measured);
 4. build the OFA-space table at the same resolutions (reusing the CompOFA layers) and report
    its extra cost;
 5. write the table to lookup_tables/, the scatter plot to benchmarks/, and a JSON summary.

Usage:
  .venv/bin/python benchmarks/lut_cpu_ort.py --device cpu-ort-1t --sample 60 --calibrate 40 \
      --layer-min-seconds 0.25 --layer-warmup-seconds 0.1 --store runs/lut_bench.db \
      --out lookup_tables/cpu-ort-1t-compofa.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from compofa_bench import spaces
from compofa_bench.devices import load_device
from compofa_bench.lut import LatencyTable
from compofa_bench.lut.build import build_table
from compofa_bench.lut.validate import validate_table

RESOLUTIONS = (160, 176, 192, 224)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--calibrate", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default="runs/lut_bench.db")
    ap.add_argument("--out", default=None)
    ap.add_argument("--plot", default=None)
    ap.add_argument("--summary", default=None)
    ap.add_argument("--skip-ofa", action="store_true")
    ap.add_argument(
        "--layer-min-seconds", type=float, default=None,
        help="protocol min_s for the layers (default: the device's, as the networks)",
    )  # fmt: skip
    ap.add_argument(
        "--layer-warmup-seconds", type=float, default=None,
        help="protocol warmup_min_s for the layers (default: the device's)",
    )  # fmt: skip
    args = ap.parse_args()
    out = Path(args.out or f"lookup_tables/{args.device}-compofa.json")
    plot = Path(args.plot or f"benchmarks/lut_{args.device}_scatter.png")
    summary_path = Path(args.summary or f"benchmarks/lut_{args.device}_summary.json")
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    device = load_device(args.device)
    load_before = os.getloadavg()

    space = spaces.get("compofa", RESOLUTIONS)
    t0 = time.perf_counter()
    layer_protocol = {"min_s": args.layer_min_seconds, "warmup_min_s": args.layer_warmup_seconds}
    _, build = build_table(
        device, space, store_path=args.store, out=out, protocol_overrides=layer_protocol
    )
    build_wall = time.perf_counter() - t0
    print("build:", json.dumps(build))

    t0 = time.perf_counter()
    report = validate_table(
        out, device, "compofa", n_sample=args.sample, n_calibrate=args.calibrate,
        seed=args.seed, store_path=args.store, plot=plot,
        out=out.with_name(f"{out.stem}-calibrated{out.suffix}") if args.calibrate else None,
    )  # fmt: skip
    validate_wall = time.perf_counter() - t0
    cost = report["measurement"]
    n_networks = cost["measured_now"]
    per_network_s = cost["wall_s"] / max(n_networks, 1)
    full_e2e_s = per_network_s * space.size()

    ofa = None
    if not args.skip_ofa:
        ofa_space = spaces.get("ofa", RESOLUTIONS)
        t0 = time.perf_counter()
        ofa_table, ofa_build = build_table(
            device, ofa_space, store_path=args.store,
            out=out.with_name(out.stem.replace("compofa", "ofa") + out.suffix),
            protocol_overrides=layer_protocol,
        )  # fmt: skip
        ofa = {
            "build": ofa_build,
            "wall_s": time.perf_counter() - t0,
            "space_size": ofa_space.size(),
            "entries": len(ofa_table),
        }
        # The OFA-space table predicts every CompOFA arch exactly as the CompOFA table does.
        archs = space.sample_many(200, np.random.default_rng(1))
        same = np.allclose(
            ofa_table.predict_ms(archs, calibrated=False),
            LatencyTable.load(out).predict_ms(archs, calibrated=False),
        )
        ofa["compofa_predictions_identical"] = bool(same)

    summary = {
        "device": args.device,
        "resolutions": list(RESOLUTIONS),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "build": build,
        "layer_protocol_overrides": layer_protocol,
        "build_wall_s": build_wall,
        "validate_wall_s": validate_wall,
        "networks_measured": n_networks,
        "per_network_s": per_network_s,
        "estimated_all_972_networks_s": full_e2e_s,
        "build_over_full_e2e": build["device_s"] / full_e2e_s,
        "e2e_measurement": cost,
        "uncalibrated": report["uncalibrated"],
        "calibrated": report.get("calibrated"),
        "calibration": report.get("calibration"),
        "bias_by_resolution": report["bias_by_resolution"],
        "ofa_space": ofa,
        "archs": report["archs"],
    }
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    short = {k: v for k, v in summary.items() if k != "archs"}
    print(json.dumps(short, indent=1))


if __name__ == "__main__":
    main()
