"""Our cpu-ort measurement vs an independent plain loop, on the same subnets.

For each of N CompOFA subnets (random init, one resolution): the adapter's measurement
(IO binding + timed_loop under the device's protocol) and a plain loop written without any
compofa_bench timing code: a fresh ONNX Runtime session with the same settings, ``session.run``
on a numpy input, ``time.perf_counter`` around each call, the same number of warmup and timed
runs. The two are interleaved per arch (ours, plain, ours, plain) so that machine load drifts hit
both alike; the median over rounds is compared. Goal: median |relative difference| of the medians within 3%.

    .venv/bin/python benchmarks/profile_agreement.py [--n 10] [--resolution 224] [--device cpu-ort-1t]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def plain_loop(
    onnx_path: str, threads: int, shape: tuple[int, ...], warmup: int, runs: int
) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        out.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(out))


def main() -> None:
    from compofa_bench.adapters import open_adapter
    from compofa_bench.adapters.base import Workload
    from compofa_bench.devices import load_device
    from compofa_bench.measure import Stats
    from compofa_bench.profile import SubnetFactory, select_archs

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved ours/plain pairs per arch")
    args = ap.parse_args()

    spec = load_device(args.device)
    spec = spec.with_options(cache_dir=str(Path(tempfile.mkdtemp()) / "onnx"))
    adapter = open_adapter(spec)
    proto = spec.protocol
    archs = select_archs("compofa", sample=args.n, seed=args.seed, resolutions=[args.resolution])
    factory = SubnetFactory()
    rows = []
    for arch in archs:
        shape = (proto.batch_size, 3, arch.resolution, arch.resolution)
        prepared = adapter.prepare(
            Workload(arch.key(), factory(arch), shape, f"agree-{arch.key()}")
        )
        ours, plain = [], []
        for _ in range(args.rounds):
            timing = adapter.time(prepared, proto)
            ours.append(Stats.from_timing(timing).median_ms)
            plain.append(
                plain_loop(
                    prepared.artifact_path,
                    adapter.threads,
                    shape,
                    len(timing.warmup_ms),
                    len(timing.samples_ms),
                )
            )
        o, p = float(np.median(ours)), float(np.median(plain))
        rows.append(
            {
                "arch": arch.key(),
                "ours_ms": round(o, 3),
                "plain_ms": round(p, 3),
                "rel_diff": round((o - p) / p, 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    rel = np.array([r["rel_diff"] for r in rows])
    print(
        json.dumps(
            {
                "device": spec.name,
                "n": len(rows),
                "resolution": args.resolution,
                "median_abs_rel_diff": round(float(np.median(np.abs(rel))), 4),
                "max_abs_rel_diff": round(float(np.max(np.abs(rel))), 4),
                "median_signed_rel_diff": round(float(np.median(rel)), 4),
                "goal_median_within_3pct": bool(np.median(np.abs(rel)) <= 0.03),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
