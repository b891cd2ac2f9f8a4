"""Which build method predicts end-to-end latency better on ONNX Runtime CPU: isolated
single-layer models (what `lut build` does) or ORT's own per-operator profiler?

The profiler table is built from whole networks: the CompOFA space is covered by 3 networks
per resolution (every stage at (d2,e3), (d3,e4) or (d4,e6)); each runs with ORT profiling on,
node kernel times are attributed to layers by ONNX node-name prefix (/first_conv, /blocks.i,
/final_expand_layer, ...), and each layer key gets the median per-run time. Time that no node
accounts for (run overhead) is reported separately, and a variant adds its mean per network.

Both tables predict the validation archs of `benchmarks/lut_cpu_ort.py` (same seed, same
store, so the same end-to-end medians), uncalibrated and with a calibration fitted on that
script's separate calibration archs. ORT-specific code lives here, in a benchmark, not in the
library.

Usage (after benchmarks/lut_cpu_ort.py, with its --store, --sample and --calibrate):
  .venv/bin/python benchmarks/lut_method_compare.py --device cpu-ort-1t \
      --lut lookup_tables/cpu-ort-1t-compofa.json --store runs/lut_bench.db --sample 60 --calibrate 40
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from compofa_bench import spaces
from compofa_bench.adapters import open_adapter
from compofa_bench.convert import to_onnx
from compofa_bench.devices import load_device
from compofa_bench.lut import LatencyTable, LutEntry
from compofa_bench.lut.validate import fit_calibration, metrics
from compofa_bench.profile import SubnetFactory
from compofa_bench.spaces import COMPOFA_COUPLING, COMPOFA_KERNELS, Arch
from compofa_bench.store import ResultStore

WARMUP, RUNS = 10, 40


def covering_archs(resolutions):
    out = []
    for r in resolutions:
        ks = tuple(k for k in COMPOFA_KERNELS for _ in range(4))
        for d, e in COMPOFA_COUPLING:
            out.append(Arch(ks, (e,) * 20, (d,) * 5, r))
    return out


def layer_of(node: str, n_layers: int) -> int | None:
    if node.startswith("/first_conv/"):
        return 0
    if node.startswith("/blocks."):
        return 1 + int(node.split("/")[1].split(".")[1])
    for offset, prefix in ((4, "/final_expand_layer/"), (3, "/global_pool"),
                           (2, "/feature_mix_layer/"), (1, "/classifier/")):  # fmt: skip
        if node.startswith(prefix):
            return n_layers - offset
    return None


def profile_network(adapter, arch, table, tmp: Path):
    import onnxruntime as ort

    net = SubnetFactory()(arch)
    shape = (1, 3, arch.resolution, arch.resolution)
    path = to_onnx(net, shape, tmp / f"{arch.key()}.onnx")
    so = adapter._session_options()  # the device's own settings, plus profiling
    so.enable_profiling = True
    so.profile_file_prefix = str(tmp / arch.key())
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    binding = adapter.bind(sess, shape)
    for _ in range(WARMUP + RUNS):
        sess.run_with_iobinding(binding)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    runs = runs[WARMUP:]
    keys = table.keys(arch)
    per_run = np.zeros((len(runs), len(keys)))
    unattributed = np.zeros(len(runs))
    e2e = np.array([r["dur"] for r in runs]) / 1e3
    starts = np.array([r["ts"] for r in runs])
    for ev in events:
        if ev.get("cat") != "Node" or not ev["name"].endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, ev["ts"], side="right")) - 1
        if i < 0 or ev["ts"] > runs[i]["ts"] + runs[i]["dur"]:
            continue  # a warmup run
        j = layer_of(ev["name"][: -len("_kernel_time")], len(keys))
        if j is None:
            unattributed[i] += ev["dur"] / 1e3
        else:
            per_run[i, j] += ev["dur"] / 1e3
    overhead = e2e - per_run.sum(axis=1)
    return keys, per_run, float(np.median(overhead)), float(np.median(unattributed))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu-ort-1t")
    ap.add_argument("--lut", default="lookup_tables/cpu-ort-1t-compofa.json")
    ap.add_argument("--store", default="runs/lut_bench.db")
    ap.add_argument("--sample", type=int, default=60)
    ap.add_argument("--calibrate", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    # The committed lut_cpu_ort.py run sampled its validation archs at these resolutions.
    ap.add_argument("--resolutions", default="160,176,192,224")
    ap.add_argument("--out", default="benchmarks/lut_method_compare.json")
    args = ap.parse_args()

    iso = LatencyTable.load(args.lut)
    device = load_device(args.device)
    adapter = open_adapter(device)
    res = tuple(iso.resolutions)
    t0 = time.perf_counter()
    observed: dict[int, dict[str, list[np.ndarray]]] = {r: {} for r in res}
    overheads = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in covering_archs(res):
            keys, per_run, overhead, unattributed = profile_network(adapter, arch, iso, Path(tmp))
            overheads.append(overhead)
            for j, k in enumerate(keys):
                observed[arch.resolution].setdefault(k, []).append(per_run[:, j])
            print(
                f"{arch.key()}: nodes {per_run.sum(1).mean():.3f} ms, run overhead "
                f"{overhead:.3f} ms, unattributed nodes {unattributed:.3f} ms"
            )
    build_s = time.perf_counter() - t0
    entries = {}
    for r, keyed in observed.items():
        entries[r] = {}
        for k, samples in keyed.items():
            x = np.concatenate(samples)
            entries[r][k] = LutEntry(len(x), float(x.mean()), float(x.std()), float(np.median(x)))
    prof = LatencyTable(
        base="mbv3",
        width_mult=iso.width_mult,
        entries=entries,
        statistic="median",
        provenance={"method": "ort per-operator profiler"},
    )

    space = spaces.get("compofa", spaces.parse_resolutions(args.resolutions))
    archs = space.sample_many(args.sample + args.calibrate, np.random.default_rng(args.seed))
    val, cal = archs[: args.sample], archs[args.sample :]
    with ResultStore(args.store, readonly=True) as store:
        found = store.lookup_many(
            [a.key() for a in archs],
            device=device.name,
            width_mult=1.0,
            batch_size=1,
            kind="network",
        )
    m_val = np.array([found[a.key()] for a in val])
    m_cal = np.array([found[a.key()] for a in cal])
    overhead = float(np.mean(overheads))
    methods = {
        "isolated layers": lambda a: iso.predict_ms(a, calibrated=False),
        "ort profiler": lambda a: prof.predict_ms(a),
        "ort profiler + run overhead": lambda a: prof.predict_ms(a) + overhead,
    }
    results = {}
    for name, predict in methods.items():
        raw = metrics(predict(val), m_val)
        o, s = fit_calibration(predict(cal), m_cal)
        calibrated = metrics(o + s * predict(val), m_val)
        results[name] = {"uncalibrated": raw, "calibrated": calibrated, "fit": [o, s]}
    out = {
        "device": args.device,
        "resolutions": list(res),
        "profiler_build_s": build_s,
        "profiler_networks": len(covering_archs(res)),
        "isolated_build_s": iso.provenance.get("build_device_s"),
        "mean_run_overhead_ms": overhead,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(
        f"{'method':32s} {'RMSPE':>8s} {'±5%':>6s} {'±10%':>6s} {'Spearman':>9s} | calibrated:"
        f" {'RMSPE':>8s} {'±5%':>6s} {'±10%':>6s}"
    )
    for name, r in results.items():
        u, c = r["uncalibrated"], r["calibrated"]
        print(
            f"{name:32s} {u['rmspe']:8.2%} {u['within_5pct']:6.1%} {u['within_10pct']:6.1%} "
            f"{u['spearman']:9.4f} |             {c['rmspe']:8.2%} {c['within_5pct']:6.1%} "
            f"{c['within_10pct']:6.1%}"
        )
    print(f"profiler build: {build_s:.1f} s for {out['profiler_networks']} networks")


if __name__ == "__main__":
    main()
