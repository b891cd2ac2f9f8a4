"""How stable is this machine? Within-session spread vs drift between sessions and over time.

Measures the same few CompOFA subnets on ONNX Runtime (1 thread) in several rounds. Each round
opens a fresh session per arch, warms it up, and times it. A tight interquartile range within
a session next to medians that move between rounds means the machine itself drifts: no
measurement protocol can then reach a 2% repeatability, and a lookup table cannot be validated
to ±5%. Run this before trusting any latency goal on a new machine.

    .venv/bin/python benchmarks/machine_noise.py [--archs 3] [--rounds 4] [--resolution 224]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from compofa_bench import spaces, supernet
from compofa_bench.convert import to_onnx


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    space = spaces.get("compofa", [args.resolution])
    archs = space.sample_many(args.archs, np.random.default_rng(args.seed))
    net = supernet.build("mbv3").eval()
    tmp = Path(tempfile.mkdtemp(prefix="noise-"))
    paths = []
    shape = (1, 3, args.resolution, args.resolution)
    for i, a in enumerate(archs):
        paths.append(to_onnx(net.extract(a).eval(), shape, tmp / f"{i}.onnx"))
    x = np.random.default_rng(0).random(shape, dtype=np.float32)

    medians = np.zeros((args.rounds, len(archs)))
    rel_iqr = np.zeros_like(medians)
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for i, p in enumerate(paths):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for _ in range(10):
                sess.run(None, {"input": x})
            t = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sess.run(None, {"input": x})
                t.append((time.perf_counter() - t0) * 1e3)
            q1, med, q3 = np.percentile(t, [25, 50, 75])
            medians[r, i], rel_iqr[r, i] = med, (q3 - q1) / med
        load.append(os.getloadavg()[0])
    drift = (medians.max(axis=0) - medians.min(axis=0)) / medians.min(axis=0)
    out = {
        "archs": [a.key() for a in archs],
        "medians_ms": np.round(medians, 3).tolist(),
        "within_session_rel_iqr_median": float(np.median(rel_iqr)),
        "between_rounds_max_drift_per_arch": np.round(drift, 3).tolist(),
        "load_avg_1min": [round(v, 2) for v in load],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
