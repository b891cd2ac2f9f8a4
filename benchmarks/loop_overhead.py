"""Overhead of compofa_bench.measure.timed_loop against a bare perf_counter loop.

Two workloads: a no-op Python call (the loop's own cost per run) and a tiny ONNX Runtime
session run through IO binding (what the cpu-ort adapter times). Both loops run interleaved,
several rounds each, and the medians are compared: the ratio shows how much the protocol loop
adds to a measured latency.

    .venv/bin/python benchmarks/loop_overhead.py [--rounds 7] [--runs 20000]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def bare_loop(fn, n: int) -> list[float]:
    out = []
    pc = time.perf_counter
    for _ in range(n):
        t0 = pc()
        fn()
        out.append((pc() - t0) * 1e3)
    return out


def main() -> None:
    import torch.nn as nn

    from compofa_bench.adapters import open_adapter
    from compofa_bench.adapters.base import Workload
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.measure import Protocol, timed_loop

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=20000)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    adapter = open_adapter(DeviceSpec("bench", "cpu-ort", {"threads": 1, "cache_dir": str(tmp)}))
    module = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()).eval()
    prepared = adapter.prepare(Workload("tiny", module, (1, 3, 8, 8), "loop-overhead-tiny"))
    binding = adapter.bind(prepared.handle, (1, 3, 8, 8))
    ort_run = functools.partial(prepared.handle.run_with_iobinding, binding)

    def noop() -> None:
        return None

    report = {}
    for name, fn, n in (("noop", noop, args.runs), ("ort-tiny", ort_run, args.runs // 4)):
        proto = Protocol(warmup_runs=100, warmup_min_s=0.0, min_runs=n, min_s=0.0, max_s=1e9)
        bare_meds, loop_meds, bare_means, loop_means, between_us = [], [], [], [], []
        for _ in range(args.rounds):
            b = bare_loop(fn, n)
            timing = timed_loop(fn, proto)
            t = timing.samples_ms
            # time spent in the loop outside the timed windows (append, stop check), per run
            between_us.append((timing.extra["timed_wall_s"] * 1e3 - sum(t)) / len(t) * 1e3)
            bare_meds.append(float(np.median(b)))
            loop_meds.append(float(np.median(t)))
            bare_means.append(float(np.mean(b)))
            loop_means.append(float(np.mean(t)))
        bm, lm = statistics.median(bare_meds), statistics.median(loop_meds)
        report[name] = {
            "runs_per_round": n,
            "rounds": args.rounds,
            "bare_median_us": round(bm * 1e3, 3),
            "timed_loop_median_us": round(lm * 1e3, 3),
            "ratio_median": round(lm / bm, 4),
            "bare_mean_us": round(statistics.median(bare_means) * 1e3, 3),
            "timed_loop_mean_us": round(statistics.median(loop_means) * 1e3, 3),
            "added_us_per_run": round((lm - bm) * 1e3, 3),
            "untimed_loop_us_per_run": round(statistics.median(between_us), 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
