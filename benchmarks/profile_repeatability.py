"""Repeatability of `compofa-bench profile`: the same archs measured in several processes.

Each run is a separate `compofa-bench profile` process with its own store (so nothing is
skipped) and the shared ONNX export cache (later runs only time), measuring every arch in
``--rounds`` interleaved rounds (default 3: each round in a fresh order, estimate = median of
round medians). For every pair of runs it reports the Spearman rank correlation of the medians
(goal >= 0.99) and the median |relative difference| (goal <= 2%); for every run the noise
floor (drift of the reference probe between its start and end) and how many rows were
contended (other processes on the measured CPUs) or unstable.

    # the issue's figures: 3 runs x 50 CompOFA archs at 160 and 224 px on cpu-ort-1t, quiet host
    .venv/bin/python benchmarks/profile_repeatability.py --cpus 2
    # the same with a CPU burner on another core (pinned to core 3) for the whole benchmark
    .venv/bin/python benchmarks/profile_repeatability.py --cpus 2 --burner 3
    # a tiny functional run (a few archs, short protocol): checks the script, not the host
    .venv/bin/python benchmarks/profile_repeatability.py --quick

Writes JSON to benchmarks/results/profile_repeatability[_burner<N>][_quick].json (or --out).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compofa_bench.ranking import spearman

RESULTS = Path(__file__).resolve().parent / "results"
QUICK_PROTOCOL = ["--warmup-runs", "1", "--warmup-seconds", "0", "--runs", "3",
                  "--min-seconds", "0", "--max-seconds", "0.3"]  # fmt: skip
BURNER = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def parse_cpus(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> int:
    from compofa_bench.store import ResultStore

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--n", type=int, default=50, help="archs, each measured at every resolution (default 50)"
    )
    ap.add_argument("--resolutions", default="160,224", help="default 160,224")
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--runs", type=int, default=3, help="profile processes (default 3)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per run (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", default=None, help="pin the runs to these CPUs, e.g. 2 or 0-1")
    ap.add_argument(
        "--burner", type=int, default=None, metavar="CORE",
        help="run a busy-loop process pinned to CORE for the whole benchmark",
    )  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny functional run (3 archs, 128 px)")
    ap.add_argument("--cache-dir", default=None, help="reuse an export cache (default: fresh)")
    ap.add_argument("--extra", default="", help="extra profile arguments, e.g. '--wait-idle 30'")
    ap.add_argument("--out", default=None, help="JSON output (default under benchmarks/results)")
    args = ap.parse_args()
    if args.runs < 2:
        sys.exit("error: --runs must be at least 2 (pairs of runs are compared)")
    n, resolutions, proto = args.n, args.resolutions, []
    if args.quick:
        n, resolutions, proto = 3, "128", QUICK_PROTOCOL
    cpus = parse_cpus(args.cpus) if args.cpus else None

    tmp = Path(tempfile.mkdtemp(prefix="repeat-"))
    from compofa_bench.profile import select_archs

    # n archs, each at every resolution (the same archs in every run)
    first = int(resolutions.split(",")[0])
    archs = select_archs("compofa", sample=n, seed=args.seed, resolutions=[first])
    arch_file = tmp / "archs.json"
    arch_file.write_text(json.dumps([{k: v for k, v in a.to_ofa().items() if k != "r"}
                                     for a in archs]))  # fmt: skip
    env = {**os.environ, "COMPOFA_BENCH_CACHE": args.cache_dir or str(tmp / "cache")}
    burner = None
    if args.burner is not None:
        burner = subprocess.Popen([sys.executable, "-c", BURNER, str(args.burner)])
    medians: list[dict[str, float]] = []
    runs: list[dict[str, object]] = []
    try:
        for run in range(1, args.runs + 1):
            store = tmp / f"run{run}.db"
            cmd = [sys.executable, "-m", "compofa_bench", "profile", "--device", args.device,
                   "--space", "compofa", "--arch-file", str(arch_file),
                   "--resolutions", resolutions, "--store", str(store), "--json",
                   "--rounds", str(args.rounds), "--order-seed", str(run),
                   *proto, *args.extra.split()]  # fmt: skip
            t0 = time.perf_counter()
            out = subprocess.run(
                cmd, capture_output=True, text=True, env=env,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                sys.exit(f"run {run} failed: {out.stderr}")
            with ResultStore(store, readonly=True) as s:
                rows = s.rows(status="ok")
                medians.append({r["workload_key"]: r["median_ms"] for r in rows})
                (info,) = s.runs(limit=1)
            runs.append(
                {
                    "run": run,
                    "wall_s": round(wall, 1),
                    "measured": len(rows),
                    "contended": sum(bool(r["contended"]) for r in rows),
                    "unstable": sum(bool(r["unstable"]) for r in rows),
                    "max_other_cpu": max((r["other_cpu"] or 0.0) for r in rows),
                    "noise_floor": info["noise_floor"],
                    "probe_ms": [info["probe_before_ms"], info["probe_after_ms"]],
                }
            )
    finally:
        if burner is not None:
            burner.kill()
            burner.wait()
    pairs = []
    for i, j in itertools.combinations(range(len(medians)), 2):
        keys = sorted(set(medians[i]) & set(medians[j]))
        a = np.array([medians[i][k] for k in keys])
        b = np.array([medians[j][k] for k in keys])
        rel = np.abs(a - b) / ((a + b) / 2)
        rho = spearman(a, b)
        pairs.append(
            {
                "runs": [i + 1, j + 1],
                "n": len(keys),
                "spearman": round(rho, 4),
                "median_abs_rel_diff": round(float(np.median(rel)), 4),
                "p90_abs_rel_diff": round(float(np.quantile(rel, 0.9)), 4),
                "goal_spearman_0.99": bool(rho >= 0.99),
                "goal_median_rel_2pct": bool(np.median(rel) <= 0.02),
            }
        )
    all_ms = [x for m in medians for x in m.values()]
    doc = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": args.device,
        "resolutions": resolutions,
        "archs_per_run": len(medians[0]),
        "rounds": args.rounds,
        "cpus": args.cpus,
        "burner_core": args.burner,
        "quick": args.quick,
        "runs": runs,
        "pairs": pairs,
        "median_ms_range": [round(min(all_ms), 2), round(max(all_ms), 2)],
        "all_goals_met": all(p["goal_spearman_0.99"] and p["goal_median_rel_2pct"] for p in pairs),
    }
    suffix = (f"_burner{args.burner}" if args.burner is not None else "") + (
        "_quick" if args.quick else ""
    )
    out_path = Path(args.out) if args.out else RESULTS / f"profile_repeatability{suffix}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
