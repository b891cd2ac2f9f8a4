"""Repeatability of `compofa-bench profile`: the same archs measured twice, in two processes.

Both runs use the same device and protocol but separate stores (so nothing is skipped) and
share the ONNX export cache (the second run only times). Reports the Spearman rank correlation
of the two sets of medians (goal >= 0.99) and the median |relative difference| (goal <= 2%).

    .venv/bin/python benchmarks/profile_repeatability.py [--n 50] [--resolution 224] [--device cpu-ort-1t]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compofa_bench.ranking import spearman


def main() -> None:
    from compofa_bench.store import ResultStore

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--cache-dir", default=None, help="reuse an export cache (default: a fresh one)"
    )
    ap.add_argument("--extra", default="", help="extra profile arguments, e.g. '--min-seconds 1'")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="repeat-"))
    env = {**os.environ, "COMPOFA_BENCH_CACHE": args.cache_dir or str(tmp / "cache")}
    medians = []
    walls = []
    for run in (1, 2):
        store = tmp / f"run{run}.db"
        cmd = [sys.executable, "-m", "compofa_bench", "profile", "--device", args.device,
               "--space", "compofa", "--sample", str(args.n), "--seed", str(args.seed),
               "--resolutions", str(args.resolution), "--store", str(store), "--json",
               *args.extra.split()]  # fmt: skip
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        walls.append(time.perf_counter() - t0)
        if out.returncode != 0:
            sys.exit(f"run {run} failed: {out.stderr}")
        with ResultStore(store, readonly=True) as s:
            medians.append({r["workload_key"]: r["median_ms"] for r in s.rows(status="ok")})
    keys = sorted(set(medians[0]) & set(medians[1]))
    a = np.array([medians[0][k] for k in keys])
    b = np.array([medians[1][k] for k in keys])
    rel = np.abs(a - b) / ((a + b) / 2)
    print(
        json.dumps(
            {
                "device": args.device,
                "n": len(keys),
                "resolution": args.resolution,
                "spearman": round(spearman(a, b), 4),
                "median_abs_rel_diff": round(float(np.median(rel)), 4),
                "p90_abs_rel_diff": round(float(np.quantile(rel, 0.9)), 4),
                "run_wall_s": [round(w, 1) for w in walls],
                "median_ms_range": [round(float(a.min()), 2), round(float(a.max()), 2)],
                "goal_spearman_0.99": bool(spearman(a, b) >= 0.99),
                "goal_median_rel_2pct": bool(np.median(rel) <= 0.02),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
