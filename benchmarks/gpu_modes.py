"""Eager vs CUDA graphs vs torch.compile on cuda-torch, for 10 CompOFA archs at 224.

The same archs under each execution mode of the cuda-torch adapter, at batch 64 (the papers')
and batch 1 (where launch overhead dominates and graphs should matter most). Reports each
mode's latency per arch and its ratio to eager, and whether the modes rank archs alike.

Usage:
  .venv/bin/python benchmarks/gpu_modes.py --n 10 --batches 64,1 \
      --out benchmarks/results/gpu_modes
"""

from __future__ import annotations

import argparse

import numpy as np
from gpu_common import device, md_table, measure_medians, rank_agreement, require_gpu, write_outputs

from compofa_bench import spaces

MODES: dict[str, dict[str, object]] = {
    "eager": {},
    "cuda-graph": {"cuda_graph": True},
    "compile": {"compile": "default"},
    "compile-reduce-overhead": {"compile": "reduce-overhead"},
}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda-torch")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--store", default="runs/gpu_modes.db")
    ap.add_argument("--out", default="benchmarks/results/gpu_modes")
    args = ap.parse_args()
    gpu = require_gpu()
    space = spaces.get("compofa", (224,))
    archs = space.sample_many(args.n, np.random.default_rng(args.seed))
    modes = args.modes.split(",")
    results: dict[str, dict] = {}
    md = [f"### Execution modes on {gpu['gpu']} ({args.n} CompOFA archs at 224)", ""]
    for b in (int(x) for x in args.batches.split(",")):
        per_mode = {}
        for mode in modes:
            spec = device(args.device, **MODES[mode])
            ms, cost = measure_medians(archs, spec, args.store, space="compofa", batch_size=b)
            per_mode[mode] = {"ms": ms.tolist(), "cost": cost}
        eager = np.array(per_mode["eager"]["ms"]) if "eager" in per_mode else None
        rows = []
        for mode, r in per_mode.items():
            ms = np.array(r["ms"])
            if eager is not None:
                ratio = ms / eager
                r["ratio_to_eager"] = {"median": float(np.median(ratio)), "min": float(ratio.min()),
                                       "max": float(ratio.max())}  # fmt: skip
                r["vs_eager"] = rank_agreement(eager, ms)
            rows.append([mode, float(np.median(ms)), r.get("ratio_to_eager", {}).get("median", 1.0),
                         r.get("vs_eager", {}).get("spearman", 1.0)])  # fmt: skip
        results[f"batch{b}"] = per_mode
        md += [f"batch {b}:", ""]
        md += md_table(["mode", "median ms", "median ratio to eager", "Spearman vs eager"], rows)
        md.append("")
    summary = {"gpu": gpu, "archs": [a.key() for a in archs], "results": results}
    write_outputs(args.out, summary, md)


if __name__ == "__main__":
    main()
