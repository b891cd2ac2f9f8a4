"""Overhead of `compofa-bench profile`: its wall time over the timed inference it reports.

Runs `profile` in a subprocess over every arch of the CompOFA space at one resolution (243),
first with an empty ONNX cache (cold: export + parity check for every arch), then again into a
fresh store with the cache filled (warm: what a rerun with --force or another protocol costs).
The wall time is measured from outside the process (interpreter start and imports included);
the split comes from the per-measurement timings the store keeps.

    .venv/bin/python benchmarks/profile_overhead.py [--resolution 160] [--min-seconds 1.0]
        [--passes cold,warm] [--limit N]
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


def main() -> None:
    from compofa_bench.store import ResultStore

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--resolution", type=int, default=160)
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--warmup-seconds", type=float, default=0.1)
    ap.add_argument("--passes", default="cold,warm")
    ap.add_argument("--limit", type=int, default=None, help="only the first N archs (a quick look)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="overhead-"))
    env = {**os.environ, "COMPOFA_BENCH_CACHE": str(tmp / "cache")}
    selection = ["--archs", "all"]
    if args.limit:
        from compofa_bench.profile import select_archs

        archs = select_archs("compofa", all_archs=True, resolutions=[args.resolution])[: args.limit]
        (tmp / "archs.json").write_text(json.dumps([a.to_ofa("r") for a in archs]))
        selection = ["--arch-file", str(tmp / "archs.json")]
    report = {}
    for name in args.passes.split(","):
        store = tmp / f"{name}.db"
        cmd = [sys.executable, "-m", "compofa_bench", "profile", "--device", args.device,
               "--space", "compofa", *selection, "--resolutions", str(args.resolution),
               "--store", str(store), "--min-seconds", str(args.min_seconds),
               "--warmup-seconds", str(args.warmup_seconds), "--json"]  # fmt: skip
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.exit(f"{name} pass failed: {out.stderr}")
        summary = json.loads(out.stdout)["devices"][0]
        with ResultStore(store, readonly=True) as s:
            rows = s.rows(("prepare_json", "count", "median_ms"), status="ok")
        split: dict[str, float] = {}
        for r in rows:
            for k, v in json.loads(r["prepare_json"]).items():
                split[k] = split.get(k, 0.0) + v
        timed = summary["timed_s"]
        time_call = split.pop("time_call_s", 0.0)
        report[name] = {
            "archs": summary["measured"],
            "wall_s": round(wall, 1),
            "timed_s": round(timed, 1),
            "wall_over_timed": round(wall / timed, 3),
            "split_s": {
                **{k: round(v, 1) for k, v in split.items()},
                "warmup_and_binding_s": round(time_call - timed, 1),
                "timed_s": round(timed, 1),
                "other_s (startup, imports, fingerprint, store)": round(
                    wall - sum(split.values()) - time_call, 1
                ),
            },
        }
        print(json.dumps({name: report[name]}), flush=True)
    print(
        json.dumps(
            {
                "device": args.device,
                "resolution": args.resolution,
                "min_seconds": args.min_seconds,
                "passes": report,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
