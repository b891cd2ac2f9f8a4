"""Repeatability of cuda-torch latency: the same archs measured twice, from scratch.

Two independent runs (separate stores, so nothing is reused) of the same archs on the same
device; reports the Spearman rank correlation between runs and the median |difference|
(absolute and relative). Defaults: all 243 CompOFA archs at 224, batch 64, fp32.

Usage:
  .venv/bin/python benchmarks/gpu_repeatability.py --device cuda-torch --batch 64 \
      --out benchmarks/results/gpu_repeatability
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from gpu_common import (
    add_run_args,
    describe,
    device,
    measure_medians,
    protocol_overrides,
    rank_agreement,
    start,
    write_outputs,
)

from compofa_bench import spaces


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda-torch")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--sample", type=int, default=0, help="N random archs (0: all 243)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/gpu_repeatability")
    ap.add_argument(
        "--first-store",
        default=None,
        help="take run 1 from this store (e.g. gpu_latency_all's, same device, batch and "
        "protocol: whatever it lacks is measured); run 2 is always measured from scratch",
    )
    add_run_args(ap)
    args = ap.parse_args()
    gpu = start(args)
    space = spaces.get("compofa", (args.resolution,))
    archs = list(space.enumerate())
    if args.sample:
        archs = space.sample_many(args.sample, np.random.default_rng(args.seed))
    spec = device(args.device, args.dry_run)
    runs, costs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        stores = [Path(args.first_store or Path(tmp) / "run0.db"), Path(tmp) / "run1.db"]
        for store in stores:
            ms, cost = measure_medians(
                archs, spec, store, space="compofa", batch_size=args.batch,
                protocol_overrides=protocol_overrides(args),
            )  # fmt: skip
            runs.append(ms)
            costs.append(cost)
    agree = rank_agreement(runs[0], runs[1])
    summary = {
        "gpu": gpu,
        "device": args.device,
        "batch_size": args.batch,
        "n_archs": len(archs),
        "agreement": agree,
        "run1": describe(runs[0]),
        "run2": describe(runs[1]),
        "runs": costs,
    }
    md = [
        f"### Repeatability on {gpu['gpu']} ({args.device}, batch {args.batch}, {len(archs)} archs)",
        "",
        f"Spearman between two runs: {agree['spearman']:.4f}; median |diff| "
        f"{agree['median_abs_diff_ms']:.4f} ms ({agree['median_rel_diff']:.2%}), "
        f"max relative diff {agree['max_rel_diff']:.2%}",
    ]
    write_outputs(args.out, summary, md)


if __name__ == "__main__":
    main()
