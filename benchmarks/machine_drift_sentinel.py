"""Does normalizing by a sentinel network remove this machine's drift?

Measures a few CompOFA subnets in several rounds (a pause between rounds). Around each subnet it
times a fixed sentinel subnet too, and reports how far each subnet's median moves between rounds
(its drift), raw and divided by the sentinel measured next to it. If the machine only slowed
down and sped up as a whole, the ratio would stay put and a sentinel-normalized protocol could
validate latency tables to a few percent even here; if the ratio drifts too, no in-guest
correction can.

    .venv/bin/python benchmarks/machine_drift_sentinel.py [--archs 5] [--rounds 6] [--gap 20]
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


def session(net, arch, path: Path) -> tuple[ort.InferenceSession, np.ndarray]:
    shape = (1, 3, arch.resolution, arch.resolution)
    to_onnx(net.extract(arch).eval(), shape, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess, np.random.default_rng(0).random(shape, dtype=np.float32)


def median_ms(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> float:
    for _ in range(5):
        sess.run(None, {"input": x})
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, {"input": x})
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--archs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--gap", type=float, default=20.0, help="seconds between rounds")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()

    archs = spaces.get("compofa", [160, 192, 224]).sample_many(
        args.archs, np.random.default_rng(args.seed)
    )
    sentinel = spaces.get("compofa", [176]).sample_many(1, np.random.default_rng(99))[0]
    net = supernet.build("mbv3").eval()
    tmp = Path(tempfile.mkdtemp(prefix="sentinel-"))
    subjects = [session(net, a, tmp / f"{i}.onnx") for i, a in enumerate(archs)]
    sent = session(net, sentinel, tmp / "sentinel.onnx")

    raw_ms = np.zeros((args.rounds, len(archs)))
    sentinel_ms = np.zeros_like(raw_ms)
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for i, (sess, x) in enumerate(subjects):
            before = median_ms(*sent, args.runs // 2)
            raw_ms[r, i] = median_ms(sess, x, args.runs)
            after = median_ms(*sent, args.runs // 2)
            sentinel_ms[r, i] = (before + after) / 2
        load.append(os.getloadavg()[0])
        if r + 1 < args.rounds:
            time.sleep(args.gap)

    def drift(m: np.ndarray) -> np.ndarray:
        return (m.max(axis=0) - m.min(axis=0)) / m.min(axis=0)

    ratio = raw_ms / sentinel_ms
    print(
        json.dumps(
            {
                "archs": [a.key() for a in archs],
                "sentinel": sentinel.key(),
                "raw_ms": np.round(raw_ms, 3).tolist(),
                "sentinel_ms": np.round(sentinel_ms, 3).tolist(),
                "raw_drift_per_arch": np.round(drift(raw_ms), 3).tolist(),
                "ratio_drift_per_arch": np.round(drift(ratio), 3).tolist(),
                "sentinel_drift": np.round(drift(sentinel_ms), 3).tolist(),
                "raw_drift_median": float(np.median(drift(raw_ms))),
                "ratio_drift_median": float(np.median(drift(ratio))),
                "load_avg_1min": [round(v, 2) for v in load],
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
