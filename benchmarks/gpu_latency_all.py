"""Latency of all 243 CompOFA archs at 224 on cuda-torch: batch 64 and 1, fp32 and fp16.

The papers report GPU latency at batch 64; batch 1 is what an interactive service sees. The
summary gives the latency spread over the space per configuration, how well batch-1 ranks
predict batch-64 ranks (Spearman), and the fp16 speedup per arch.

Usage (one command, about 4 x 243 x ~3 s on a datacenter GPU; resumable):
  .venv/bin/python benchmarks/gpu_latency_all.py --store runs/gpu_all.db \
      --out benchmarks/results/gpu_latency_all
"""

from __future__ import annotations

import argparse

import numpy as np
from gpu_common import (
    add_run_args,
    describe,
    device,
    md_table,
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
    ap.add_argument("--store", default="runs/gpu_all.db")
    ap.add_argument("--out", default="benchmarks/results/gpu_latency_all")
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--devices", default="cuda-torch,cuda-torch-fp16")
    ap.add_argument("--sample", type=int, default=0, help="N random archs (0: all 243)")
    add_run_args(ap)
    args = ap.parse_args()
    gpu = start(args)
    space = spaces.get("compofa", (args.resolution,))
    archs = list(space.enumerate())
    if args.sample:
        archs = space.sample_many(args.sample, np.random.default_rng(0))
    batches = [int(b) for b in args.batches.split(",")]
    names = args.devices.split(",")

    results: dict[tuple[str, int], np.ndarray] = {}
    costs = []
    for name in names:
        for b in batches:
            ms, cost = measure_medians(
                archs, device(name, args.dry_run), args.store, space="compofa", batch_size=b,
                protocol_overrides=protocol_overrides(args),
            )  # fmt: skip
            results[(name, b)] = ms
            costs.append(cost)

    configs = [
        {"device": n, "batch_size": b, **describe(results[(n, b)]),
         "images_per_s_at_median": b / float(np.median(results[(n, b)])) * 1e3}
        for n in names for b in batches
    ]  # fmt: skip
    cross = {}
    if len(batches) > 1:
        for n in names:
            cross[f"{n}: batch {batches[0]} vs {batches[1]}"] = rank_agreement(
                results[(n, batches[0])], results[(n, batches[1])]
            )
    speedup = {}
    if len(names) > 1:
        for b in batches:
            r = results[(names[0], b)] / results[(names[1], b)]
            speedup[f"batch {b}: {names[0]} / {names[1]}"] = describe(r) | {
                "spearman": rank_agreement(results[(names[0], b)], results[(names[1], b)])[
                    "spearman"
                ]
            }
    summary = {
        "gpu": gpu,
        "space": "compofa",
        "resolution": args.resolution,
        "n_archs": len(archs),
        "configs": configs,
        "rank_agreement": cross,
        "precision_ratio": speedup,
        "runs": costs,
        "per_arch_ms": {
            f"{n}@b{b}": dict(zip([a.key() for a in archs], results[(n, b)].tolist(), strict=True))
            for (n, b) in results
        },
    }
    md = [f"### All {len(archs)} CompOFA archs at {args.resolution} on {gpu['gpu']}", ""]
    md += md_table(
        ["device", "batch", "min ms", "median ms", "max ms", "img/s at median"],
        [[c["device"], c["batch_size"], c["min_ms"], c["median_ms"], c["max_ms"],
          round(c["images_per_s_at_median"])] for c in configs],
    )  # fmt: skip
    for k, v in cross.items():
        md.append(f"\n{k}: Spearman {v['spearman']:.3f}")
    for k, v in speedup.items():
        md.append(f"\n{k} latency ratio: median {v['median_ms']:.2f} (min {v['min_ms']:.2f}, "
                  f"max {v['max_ms']:.2f}), rank Spearman {v['spearman']:.3f}")  # fmt: skip
    write_outputs(args.out, summary, md)


if __name__ == "__main__":
    main()
