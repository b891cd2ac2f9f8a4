"""Is the table's error the method's or the shared machine's? Side by side, in one run, with
two clocks: wall time (what `profile` and `lut build` record) and the calling thread's CPU time.

On a shared 2-core machine under load, a 10-50 ms network is preempted several times per run
while a 0.1-1 ms layer mostly is not, so wall-clock layer sums underpredict networks by the
contention factor. With one intra-op thread ONNX Runtime computes on the calling thread, so that
thread's CPU time (CLOCK_THREAD_CPUTIME_ID) excludes time spent preempted: a contention-free
proxy of the quiet-machine latency. This script measures every CompOFA layer (4 resolutions)
and the validation/calibration archs of benchmarks/lut_cpu_ort.py with both clocks through the
device's own adapter (its prepare/bind and its cached ONNX files), then scores the layer-sum
prediction against the networks for each clock, uncalibrated and calibrated on the separate set.

ORT- and Linux-specific, so it lives in benchmarks/, not in the library.

Usage:
  .venv/bin/python benchmarks/lut_cputime.py --device cpu-ort-1t --sample 60 --calibrate 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from compofa_bench import spaces, supernet
from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.devices import load_device
from compofa_bench.lut import LatencyTable, LutEntry
from compofa_bench.lut.build import LayerJobSpec
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.plot import scatter
from compofa_bench.lut.validate import fit_calibration, metrics
from compofa_bench.profile import SubnetFactory, arch_cache_key

RESOLUTIONS = (160, 176, 192, 224)


def two_clocks(run, warmup: int, runs: int) -> tuple[float, float]:
    for _ in range(warmup):
        run()
    wall, cpu = [], []
    for _ in range(runs):
        c0, w0 = time.thread_time(), time.perf_counter()
        run()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.thread_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def measure(adapter, workload: Workload, warmup: int, runs: int) -> tuple[float, float]:
    prepared = adapter.prepare(workload)
    try:
        binding = adapter.bind(prepared.handle, workload.input_shape)
        return two_clocks(lambda: prepared.handle.run_with_iobinding(binding), warmup, runs)
    finally:
        adapter.release(prepared)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--calibrate", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--out", default="benchmarks/lut_cputime.json")
    ap.add_argument("--plot", default="benchmarks/lut_cputime_scatter.png")
    ap.add_argument("--table-out", default="lookup_tables/cpu-ort-1t-compofa-cputime.json")
    args = ap.parse_args()
    device = load_device(args.device)
    adapter = open_adapter(device)
    if adapter.describe().get("intra_op_threads") != 1:
        raise SystemExit("thread CPU time is only meaningful with one intra-op thread")
    load0 = os.getloadavg()
    space = spaces.get("compofa", RESOLUTIONS)
    layers = unique_layers(space, width_mult=1.0)
    ident = LayerJobSpec("mbv3", "ofa-mbv3", 1)
    t0 = time.perf_counter()
    by_key: dict[str, tuple[float, float]] = {}
    for keyed in layers.values():
        for key, spec in keyed.items():
            if key not in by_key:
                wl = Workload(
                    key,
                    supernet.build_layer(spec),
                    supernet.layer_input_shape(spec, 1),
                    ident.cache_key(key),
                )
                by_key[key] = measure(adapter, wl, args.warmup, args.runs)
    layers_s = time.perf_counter() - t0
    tables = {}
    for i, clock in enumerate(("wall", "cpu")):
        entries = {
            r: {k: LutEntry(args.runs, by_key[k][i], 0.0, by_key[k][i]) for k in keyed}
            for r, keyed in layers.items()
        }
        tables[clock] = LatencyTable(
            base="mbv3", width_mult=1.0, entries=entries, statistic="median",
            provenance={"device": args.device, "method": f"isolated layers, {clock} clock",
                        "note": "benchmarks/lut_cputime.py; medians of "
                                f"{args.runs} runs after {args.warmup} warmup"},
        )  # fmt: skip

    archs = space.sample_many(args.sample + args.calibrate, np.random.default_rng(args.seed))
    factory = SubnetFactory()
    t0 = time.perf_counter()
    net = np.zeros((len(archs), 2))
    for n, arch in enumerate(archs):
        ck = arch_cache_key(arch, batch_size=1)
        wl = Workload(arch.key(), factory(arch), (1, 3, arch.resolution, arch.resolution), ck)
        net[n] = measure(adapter, wl, args.warmup, args.runs)
    nets_s = time.perf_counter() - t0

    val, cal = slice(0, args.sample), slice(args.sample, None)
    results = {}
    for i, clock in enumerate(("wall", "cpu")):
        pred = tables[clock].predict_ms(archs)
        o, s = fit_calibration(pred[cal], net[cal, i])
        results[clock] = {
            "uncalibrated": metrics(pred[val], net[val, i]),
            "calibrated": metrics(o + s * pred[val], net[val, i]),
            "fit": {"overhead_ms": o, "scale": s},
        }
        if clock == "cpu":
            scatter(
                pred[val],
                net[val, i],
                args.plot,
                calibrated=o + s * pred[val],
                title=f"CompOFA on {args.device}, thread CPU time ({args.sample} archs)",
            )
    cpu_table = tables["cpu"]
    from compofa_bench.lut.table import Calibration

    fit = results["cpu"]["fit"]
    cpu_table.with_calibration(
        Calibration(fit["overhead_ms"], fit["scale"], args.calibrate,
                    {**results["cpu"]["calibrated"], "clock": "thread cpu time"})
    ).save(args.table_out)  # fmt: skip
    out = {
        "device": args.device, "resolutions": list(RESOLUTIONS), "runs": args.runs,
        "load_avg_before": load0, "load_avg_after": os.getloadavg(),
        "layers": len(by_key), "layers_s": layers_s, "networks": len(archs), "networks_s": nets_s,
        "results": results,
        "archs": [
            {"key": a.key(), "wall_ms": float(w), "cpu_ms": float(c)}
            for a, (w, c) in zip(archs, net, strict=True)
        ],
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"load avg {load0} -> {os.getloadavg()}")
    print(
        f"{'clock':6s} {'':12s} {'RMSPE':>8s} {'±5%':>7s} {'±10%':>7s} {'Spearman':>9s} {'Kendall':>8s}"
    )
    for clock, r in results.items():
        for label in ("uncalibrated", "calibrated"):
            m = r[label]
            print(
                f"{clock:6s} {label:12s} {m['rmspe']:8.2%} {m['within_5pct']:7.1%} "
                f"{m['within_10pct']:7.1%} {m['spearman']:9.4f} {m['kendall']:8.4f}"
            )
        print(f"{clock:6s} fit: {r['fit']['overhead_ms']:.3f} ms + {r['fit']['scale']:.3f} x sum")


if __name__ == "__main__":
    main()
