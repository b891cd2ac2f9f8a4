"""Speed of vectorized table prediction (what search calls) against a per-arch loop.

Usage: .venv/bin/python benchmarks/lut_predict_speed.py [--table T.json] [--n 10000]
Without --table, the Note10 reference tables are imported from ../shared/reference.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from compofa_bench import spaces
from compofa_bench.lut import LatencyTable, import_ofa_dir

REF = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "reference"
    / "compofa"
    / "latency_table@note10"
)


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", default=None)
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    table = LatencyTable.load(args.table) if args.table else import_ofa_dir(REF, 1.2)
    space = spaces.get("ofa", table.resolutions)
    archs = space.sample_many(args.n, np.random.default_rng(0))
    t0 = time.perf_counter()
    first = table.predict_ms(archs)
    cold = time.perf_counter() - t0
    warm = best_of(lambda: table.predict_ms(archs))
    sub = archs[:1000]
    loop = best_of(lambda: [sum(v for _, v in table.predict_breakdown(a)) for a in sub], 2)
    loop_per_10k = loop * len(archs) / len(sub)
    assert np.all(np.isfinite(first))
    print(
        f"{args.n} OFA-space archs: vectorized cold {cold * 1e3:.1f} ms, warm {warm * 1e3:.1f} ms; "
        f"per-arch loop {loop_per_10k * 1e3:.0f} ms (extrapolated from 1000); "
        f"speed-up x{loop_per_10k / warm:.0f}"
    )


if __name__ == "__main__":
    main()
