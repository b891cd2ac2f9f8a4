"""Exhaustive search of the CompOFA space: 243 archs x 4 resolutions, 10 targets, one call.

Accuracy: OFA's pretrained predictor; latency: the Note10 tables (OFA w1.2 supernet), both from
shared/reference. Times the whole `search.search` call (enumeration, one predictor forward over
all 972 members, latency of all members, best per target, Pareto frontier, fastest member),
cold (fresh latency source: the table's per-layer model is built and checked inside the
timing) and warm (source reused, as in a long-running process). Reports the median of --repeat
runs and checks each winner against a brute force over Arch objects.

    .venv/bin/python benchmarks/search_exhaustive.py [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from compofa_bench import predictor, sources, spaces
from compofa_bench import search as S
from compofa_bench.lut import import_ofa_dir

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "compofa"
RESOLUTIONS = (160, 176, 192, 224)
TARGETS = [12.0, 14.0, 16.0, 18.0, 20.0, 22.0, 24.0, 26.0, 28.0, 30.0]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    if not REF.is_dir():
        print(f"reference data not found at {REF}", file=sys.stderr)
        return 2
    pred = predictor.load(REF / "acc_predictor.pth")
    table = import_ofa_dir(REF / "latency_table@note10", width_mult=1.2)
    space = spaces.get("compofa", RESOLUTIONS)
    acc = sources.PredictorAccuracy(pred)
    cold, warm = [], []
    warm_lut = sources.LutLatency(table, width_mult=1.2)
    S.search(space, acc, warm_lut, TARGETS, np.random.default_rng(0))  # builds the model
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        lut = sources.LutLatency(table, width_mult=1.2)
        out = S.search(space, acc, lut, TARGETS, np.random.default_rng(0))
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        S.search(space, acc, warm_lut, TARGETS, np.random.default_rng(0))
        warm.append(time.perf_counter() - t0)
    # brute force on the independent path: Arch objects and the table's own prediction
    archs = list(space.enumerate())
    a = pred.predict(archs)
    lat = table.predict_ms(archs, width_mult=1.2)
    ok = all(
        r.score == max(a[i] for i in range(len(archs)) if lat[i] <= r.target) for r in out.results
    )
    print(
        f"space {space.name} x {len(RESOLUTIONS)} resolutions = {space.size()} archs, "
        f"{len(TARGETS)} targets, method {out.method}"
    )
    for r in out.results:
        print(f"  {r.target:>4g} ms: top-1 {r.score * 100:.2f}%  {r.cost:6.2f} ms  {r.arch.key()}")
    print(f"winners equal the brute-force optimum: {ok}")
    print(
        f"one call, 10 targets: median {statistics.median(cold) * 1e3:.1f} ms cold "
        f"(min {min(cold) * 1e3:.1f}), {statistics.median(warm) * 1e3:.1f} ms warm "
        f"(min {min(warm) * 1e3:.1f}); {args.repeat} runs; load average {os.getloadavg()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
