"""CompOFA's original GPU timing recipe vs the synchronized truth, for 10 archs at 224.

The recipe: ``time.time()`` around 10 forward passes, no ``torch.cuda.synchronize()``,
divided by 10. CUDA launches are asynchronous, so the host clock stops when the last kernel
is *queued*, not when it has run; how wrong that is depends on how far the launch queue lets
the host run ahead of the GPU. Compared here, per arch, with:

- ``recipe+sync``: the same 10-run ``time.time()`` loop with a synchronize before reading the
  clock (isolates the effect of the missing synchronize);
- ``truth``: the cuda-torch device (CUDA events, warmup, >= 50 runs, median).

All three run under the device's backend flags (cuDNN autotuning on, TF32 off) after one
untimed forward: the first H200 run left PyTorch's defaults (TF32 convolutions) to the recipe,
and its "recipe + sync" then came out 18% *faster* than the truth, a difference of arithmetic,
not of clocks. With the flags equal, what remains is the timing method alone.

Usage:
  .venv/bin/python benchmarks/gpu_compofa_recipe.py --n 10 --batches 64,1 \
      --out benchmarks/results/gpu_compofa_recipe
"""

from __future__ import annotations

import argparse
import time

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
from compofa_bench.adapters.gpu_timing import TorchFlags
from compofa_bench.profile import SubnetFactory


def recipe_ms(model, x, sync: bool) -> float:
    """CompOFA's loop: time.time() around 10 runs; with ``sync`` the one fix applied."""
    import torch

    on_gpu = x.is_cuda
    with torch.no_grad():
        model(x)  # untimed: cuDNN autotunes on the first call of each shape
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.time()
        for _ in range(10):
            model(x)
        if sync and on_gpu:
            torch.cuda.synchronize()
        t1 = time.time()
    if on_gpu:
        torch.cuda.synchronize()  # never let one arch's queued work leak into the next
    return (t1 - t0) / 10 * 1e3


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda-torch")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--store", default="runs/gpu_recipe.db")
    ap.add_argument("--out", default="benchmarks/results/gpu_compofa_recipe")
    add_run_args(ap)
    args = ap.parse_args()
    gpu = start(args)
    where = "cpu" if args.dry_run else "cuda"
    spec = device(args.device, args.dry_run)
    space = spaces.get("compofa", (224,))
    archs = space.sample_many(args.n, np.random.default_rng(args.seed))
    factory = SubnetFactory()
    results = {}
    md = [f"### CompOFA's GPU timing recipe vs synchronized truth on {gpu['gpu']}", ""]
    for b in (int(x) for x in args.batches.split(",")):
        naive, synced = [], []
        for arch in archs:
            model = factory(arch).to(where).eval()
            x = torch.randn(b, 3, 224, 224, device=where)
            if where == "cuda":
                torch.cuda.synchronize()
            opts = spec.options
            with TorchFlags(opts.get("cudnn_benchmark", True), opts.get("tf32", False)):
                naive.append(recipe_ms(model, x, sync=False))
                synced.append(recipe_ms(model, x, sync=True))
            del model, x
            if where == "cuda":
                torch.cuda.empty_cache()
        truth, cost = measure_medians(
            archs, spec, args.store, space="compofa", batch_size=b,
            protocol_overrides=protocol_overrides(args),
        )  # fmt: skip
        naive_a, synced_a = np.array(naive), np.array(synced)
        results[f"batch{b}"] = {
            "archs": [a.key() for a in archs],
            "recipe_ms": naive, "recipe_sync_ms": synced, "truth_ms": truth.tolist(),
            "recipe_over_truth": (naive_a / truth).tolist(),
            "recipe_sync_over_truth": (synced_a / truth).tolist(),
            "recipe_vs_truth": rank_agreement(naive_a, truth),
            "recipe_sync_vs_truth": rank_agreement(synced_a, truth),
            "truth_cost": cost,
        }  # fmt: skip
        r = results[f"batch{b}"]
        md += [f"batch {b}:", ""]
        md += md_table(
            ["timing", "median ms", "median ratio to truth", "Spearman vs truth"],
            [["recipe (no sync)", float(np.median(naive_a)), float(np.median(naive_a / truth)),
              r["recipe_vs_truth"]["spearman"]],
             ["recipe + sync", float(np.median(synced_a)), float(np.median(synced_a / truth)),
              r["recipe_sync_vs_truth"]["spearman"]],
             ["truth (CUDA events)", float(np.median(truth)), 1.0, 1.0]],
        )  # fmt: skip
        md.append("")
    write_outputs(args.out, {"gpu": gpu, "results": results}, md)


if __name__ == "__main__":
    main()
