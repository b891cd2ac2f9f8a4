"""A GPU latency lookup table (cuda-torch, batch 64) and its validation.

Builds the CompOFA layer table on the device (each distinct layer timed as a single-layer
model at the device's batch), then measures random archs end to end and compares: MAPE,
Spearman and Kendall of the table's sums vs the measured networks, uncalibrated and with a
linear calibration fitted on other archs. On GPUs a sum of isolated layers is expected to
miss inter-layer effects (launch gaps, fusion); this script measures by how much.

Usage:
  .venv/bin/python benchmarks/gpu_lut.py --device cuda-torch --sample 50 --calibrate 20 \
      --store runs/gpu_lut.db --out lookup_tables/cuda-torch-compofa.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from gpu_common import add_run_args, device, protocol_overrides, start, write_outputs

from compofa_bench import spaces
from compofa_bench.lut.build import build_table
from compofa_bench.lut.validate import validate_table
from compofa_bench.spaces import parse_resolutions


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda-torch")
    ap.add_argument("--resolutions", default="160,176,192,224")
    ap.add_argument("--sample", type=int, default=50)
    ap.add_argument("--calibrate", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default="runs/gpu_lut.db")
    ap.add_argument(
        "--out", default=None, help="table JSON (default lookup_tables/<device>-compofa.json)"
    )
    ap.add_argument("--summary", default=None)
    add_run_args(ap)
    args = ap.parse_args()
    gpu = start(args)
    spec = device(args.device, args.dry_run)
    # One protocol for the layers and the networks they are checked against.
    spec = spec.with_protocol(spec.protocol.replace(**protocol_overrides(args)))
    out = Path(args.out or f"lookup_tables/{args.device}-compofa.json")
    Path(args.store).parent.mkdir(parents=True, exist_ok=True)
    space = spaces.get("compofa", parse_resolutions(args.resolutions))
    t0 = time.perf_counter()
    _, build = build_table(spec, space, store_path=args.store, out=out)
    build_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = validate_table(
        out, spec, "compofa", n_sample=args.sample, n_calibrate=args.calibrate,
        seed=args.seed, store_path=args.store,
        out=out.with_name(f"{out.stem}-calibrated{out.suffix}") if args.calibrate else None,
        plot=Path(args.summary or f"benchmarks/results/gpu_lut_{args.device}").with_suffix(".png"),
    )  # fmt: skip
    summary = {
        "gpu": gpu,
        "device": args.device,
        "batch_size": spec.protocol.batch_size,
        "resolutions": list(space.resolutions),
        "table": str(out),
        "build": build,
        "build_wall_s": round(build_wall, 1),
        "validate_wall_s": round(time.perf_counter() - t0, 1),
        "uncalibrated": report["uncalibrated"],
        "calibrated": report.get("calibrated"),
        "calibration": report.get("calibration"),
        "archs": report.get("archs"),
    }
    unc, cal = report["uncalibrated"], report.get("calibrated") or {}
    md = [
        f"### GPU lookup table on {gpu['gpu']} ({args.device}, batch {spec.protocol.batch_size})",
        "",
        f"table build {build_wall:.0f} s; validation on {args.sample} archs "
        f"(calibration fitted on {args.calibrate} others)",
        "",
        f"uncalibrated: {', '.join(f'{k} {v:.3f}' for k, v in unc.items() if isinstance(v, float))}",
        f"calibrated: {', '.join(f'{k} {v:.3f}' for k, v in cal.items() if isinstance(v, float))}",
    ]
    write_outputs(args.summary or f"benchmarks/results/gpu_lut_{args.device}", summary, md)


if __name__ == "__main__":
    main()
