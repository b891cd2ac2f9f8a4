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
from gpu_common import (
    add_run_args,
    device,
    md_table,
    measure_medians,
    protocol_overrides,
    rank_agreement,
    start,
    write_outputs,
)

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
    ap.add_argument(
        "--compile-n",
        type=int,
        default=None,
        help="time the torch.compile modes on the first N archs only (each arch compiles "
        "for seconds); default: all",
    )
    add_run_args(ap)
    args = ap.parse_args()
    gpu = start(args)
    space = spaces.get("compofa", (224,))
    archs = space.sample_many(args.n, np.random.default_rng(args.seed))
    modes = args.modes.split(",")
    results: dict[str, dict] = {}
    for b in (int(x) for x in args.batches.split(",")):
        per_mode: dict[str, dict] = {}
        results[f"batch{b}"] = per_mode
        for mode in modes:
            spec = device(args.device, args.dry_run, **MODES[mode])
            subset = archs
            if mode.startswith("compile") and args.compile_n is not None:
                subset = archs[: args.compile_n]
            ms, cost = measure_medians(
                subset, spec, args.store, space="compofa", batch_size=b,
                protocol_overrides=protocol_overrides(args),
            )  # fmt: skip
            per_mode[mode] = {"ms": ms.tolist(), "cost": cost}
            # Written after every mode: compile modes take seconds an arch, and a run stopped
            # at its time limit keeps what it measured.
            write_outputs(args.out, {"gpu": gpu, "archs": [a.key() for a in archs],
                                     "results": compare_to_eager(results)},
                          summary_markdown(gpu, len(archs), results))  # fmt: skip


def compare_to_eager(results: dict[str, dict]) -> dict[str, dict]:
    """Each mode's ratio to eager and rank agreement with it, on the archs both measured."""
    for per_mode in results.values():
        eager = np.array(per_mode["eager"]["ms"]) if "eager" in per_mode else None
        for r in per_mode.values():
            ms = np.array(r["ms"])
            r["n_archs"] = len(ms)
            if eager is not None:
                ratio = ms / eager[: len(ms)]
                r["ratio_to_eager"] = {"median": float(np.median(ratio)), "min": float(ratio.min()),
                                       "max": float(ratio.max())}  # fmt: skip
                r["vs_eager"] = rank_agreement(eager[: len(ms)], ms)
    return results


def summary_markdown(gpu: dict, n: int, results: dict[str, dict]) -> list[str]:
    md = [f"### Execution modes on {gpu['gpu']} ({n} CompOFA archs at 224)", ""]
    for batch, per_mode in results.items():
        rows = [
            [mode, r["n_archs"], float(np.median(r["ms"])),
             r.get("ratio_to_eager", {}).get("median", 1.0),
             r.get("vs_eager", {}).get("spearman", 1.0)]
            for mode, r in per_mode.items()
        ]  # fmt: skip
        md += [f"{batch}:", ""]
        md += md_table(
            ["mode", "archs", "median ms", "median ratio to eager", "Spearman vs eager"], rows
        )
        md.append("")
    return md


if __name__ == "__main__":
    main()
