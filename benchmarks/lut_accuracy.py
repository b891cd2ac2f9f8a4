"""Lookup-table accuracy per build method (issue 15's "must show"), with the run's noise floor.

For each build method (compofa_bench/lut/methods.py) a table of SPACE is built on DEVICE at
the given resolutions; all tables are then scored against the same end-to-end measurements:

* N held-out validation archs and M calibration archs (disjoint; also disjoint from the
  learned method's fit archs), spread over the resolutions, are timed in ROUNDS interleaved
  rounds: each round visits all of them in a new shuffled order, and an arch's latency is the
  median of its round medians, so that drift of the host during the run hits every arch alike;
* uncalibrated: RMSPE, share within ±5% and ±10%, Spearman, Kendall and the mean error per
  resolution on the N archs; calibrated: the same after `overhead + scale_r * sum` fitted on
  the M *other* archs (lut validate's calibration);
* build cost: each method's device time (export/convert, session and timing of every probe it
  needs, read back from the store rows, plus the learned method's end-to-end fit archs) as a
  share of timing every CompOFA network end to end (243 archs x the resolutions) with the
  device's own protocol, estimated from the per-network cost of the fit archs, which are
  measured exactly as `profile` measures networks;
* noise floor: a fixed reference arch timed at the start, before every round and at the end
  (its spread), and the spread of each validation arch's round medians (median and p90 over
  archs). A method's error cannot be read below that floor.

To keep the default run within ~6 minutes on one quiet core, the end-to-end rounds use a
shorter protocol than the device's (--e2e-warmup-seconds 0.05, --e2e-min-seconds 0.15,
--e2e-min-runs 10 per round, x3 rounds) and layers --layer-min-seconds 0.1,
--layer-warmup-seconds 0.03. Exports/conversions are cached (ONNX and TFLite caches): a
second run on the same host is faster. TFLite converts every probe (~14 s each on an idle
2-core machine), so a first tflite-local run is far longer: see docs/lut.md.

Usage (quiet host, one core):
  .venv/bin/python benchmarks/lut_accuracy.py --device cpu-ort-1t --space compofa --cpus 2
  .venv/bin/python benchmarks/lut_accuracy.py --device cpu-ort-1t --space ofa --cpus 2
  .venv/bin/python benchmarks/lut_accuracy.py --device tflite-local --space compofa --cpus 1
  .venv/bin/python benchmarks/lut_accuracy.py --quick      # tiny functional run (any machine)
Writes benchmarks/results/lut_accuracy_<device>_<space>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from compofa_bench import spaces
from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Workload
from compofa_bench.devices import load_device
from compofa_bench.lut.build import LayerJobSpec, build_table
from compofa_bench.lut.keys import layout
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.methods import DEFAULT_METHOD, METHODS, BuildMethod, make_plan
from compofa_bench.lut.validate import (
    bias_by_resolution,
    fit_calibration,
    measure_archs,
    metrics,
)
from compofa_bench.measure import Stats
from compofa_bench.netspec import NetSpec
from compofa_bench.profile import SubnetFactory, arch_cache_key
from compofa_bench.spaces import Arch

#: CompOFA's size: the denominator of the build-cost goal is every CompOFA network.
COMPOFA_ARCHS = 243


def disjoint_archs(space, counts: list[int], rng: np.random.Generator) -> list[list[Arch]]:
    """Sets of archs with no arch in two sets (nor twice in one)."""
    want = sum(counts)
    seen: dict[str, Arch] = {}
    for _ in range(50):
        for a in space.sample_many(want, rng):
            seen.setdefault(a.key(), a)
        if len(seen) >= want:
            break
    pool = list(seen.values())
    if len(pool) < want:
        raise SystemExit(f"space {space.name} has too few distinct archs for {counts}")
    order = rng.permutation(len(pool))[:want]
    picked = [pool[i] for i in order]
    out, start = [], 0
    for n in counts:
        out.append(picked[start : start + n])
        start += n
    return out


class RoundTimer:
    """Times networks directly through the adapter (no store: every round is a new
    measurement); modules and exports are built once and reused across rounds."""

    def __init__(self, adapter, spec, protocol, base: str, width: float, n_classes: int):
        self.adapter, self.protocol = adapter, protocol
        self.base, self.width, self.n_classes = base, width, n_classes
        self.factory = SubnetFactory(NetSpec(base, width, n_classes))
        self.modules: dict[str, Any] = {}

    def __call__(self, arch: Arch) -> float:
        ck = arch_cache_key(arch, base=self.base, width_mult=self.width, n_classes=self.n_classes)
        shape = (1, 3, arch.resolution, arch.resolution)

        def module():
            if arch.key() not in self.modules:
                self.modules[arch.key()] = self.factory(arch)
            return self.modules[arch.key()]

        wl = Workload(arch.key(), None, shape, ck, module_factory=module)
        if not getattr(self.adapter, "lazy_module", False):
            wl.get_module()
        prepared = self.adapter.prepare(wl)
        try:
            timing = self.adapter.time(prepared, self.protocol)
        finally:
            self.adapter.release(prepared)
        return Stats.from_timing(timing, self.protocol.unstable_threshold).median_ms


def probe_costs_s(store_path: Path, cache_keys: set[str]) -> float:
    """Device time of the store rows of these probes (started -> finished: export/convert,
    session, warmup and timing), the latest row per probe."""
    con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT cache_key, started_at, finished_at FROM measurements "
            "WHERE kind = 'layer' AND status = 'ok' ORDER BY id"
        ).fetchall()
    finally:
        con.close()
    last = {ck: (a, b) for ck, a, b in rows if ck in cache_keys}
    return sum(
        (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()
        for a, b in last.values()
    )


def rel_spread(values: np.ndarray) -> float:
    return float((values.max() - values.min()) / np.median(values))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cpu-ort-1t", help="cpu-ort-1t, tflite-local, ...")
    ap.add_argument("--space", default="compofa", help="compofa, ofa, compofa-ek, ...")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    ap.add_argument("--n", type=int, default=100, help="validation archs (default 100)")
    ap.add_argument("--calibrate", type=int, default=20, help="calibration archs (default 20)")
    ap.add_argument("--fit-archs", type=int, default=16, help="learned method's fit archs")
    ap.add_argument("--resolutions", default="128,160,192,224")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpus", default=None, help="pin this process to these CPUs, e.g. 2 or 2,3")
    ap.add_argument("--e2e-warmup-seconds", type=float, default=0.05)
    ap.add_argument("--e2e-min-seconds", type=float, default=0.15)
    ap.add_argument("--e2e-min-runs", type=int, default=10)
    ap.add_argument("--layer-warmup-seconds", type=float, default=0.03)
    ap.add_argument("--layer-min-seconds", type=float, default=0.1)
    ap.add_argument("--store", default=None, help="results store (default: a fresh temp file)")
    ap.add_argument("--quick", action="store_true", help="tiny functional run (32 px, 4 archs)")
    ap.add_argument("--out", default=None, help="JSON (default benchmarks/results/...)")
    args = ap.parse_args()
    t_start = time.perf_counter()

    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        BuildMethod(m)  # unknown names fail before any work
    resolutions = spaces.parse_resolutions(args.resolutions)
    n_val, n_cal, n_fit = args.n, args.calibrate, args.fit_archs
    spec = load_device(args.device)
    e2e = spec.protocol.replace(
        warmup_min_s=args.e2e_warmup_seconds, min_s=args.e2e_min_seconds,
        min_runs=args.e2e_min_runs,
    )  # fmt: skip
    layer_protocol = {"min_s": args.layer_min_seconds, "warmup_min_s": args.layer_warmup_seconds}
    if args.quick:
        resolutions, n_val, n_cal, n_fit = (32, 40), 4, 4, 3
        e2e = e2e.replace(warmup_runs=1, warmup_min_s=0.0, min_runs=3, min_s=0.0, max_s=0.5)
        layer_protocol = {"warmup_runs": 1, "warmup_min_s": 0.0, "min_runs": 3, "min_s": 0.0}
        spec = _quick_spec(spec).with_protocol(e2e)
    space = spaces.get(args.space, resolutions)
    rng = np.random.default_rng(args.seed)
    val, cal, fit = disjoint_archs(space, [n_val, n_cal, n_fit], rng)
    # the same reference arch in every run of a space and resolution set
    ref = space.sample_many(1, np.random.default_rng(12345))[0]
    store = Path(args.store) if args.store else Path(tempfile.mkdtemp()) / "lut_accuracy.db"
    out = Path(args.out or f"benchmarks/results/lut_accuracy_{spec.name}_{space.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    phases: dict[str, float] = {}

    adapter = open_adapter(spec)
    try:
        timer = RoundTimer(adapter, spec, e2e, space.base, 1.0, 1000)
        ref_times = [timer(ref)]
        print(f"reference {ref.key()}: {ref_times[0]:.3f} ms", flush=True)

        # per-network cost of `profile` (the device's protocol), on the learned method's archs
        t0 = time.perf_counter()
        _, fit_cost = measure_archs(
            fit, spec, store, space=space.name, base=space.base, width_mult=1.0,
            n_classes=1000, batch_size=spec.protocol.batch_size, adapter=adapter,
        )  # fmt: skip
        phases["fit_archs_s"] = time.perf_counter() - t0
        per_network_s = fit_cost["wall_s"] / max(fit_cost["measured_now"], 1)
        all_compofa_s = per_network_s * COMPOFA_ARCHS * len(resolutions)

        tables, builds = {}, {}
        layers = unique_layers(space)
        ident = LayerJobSpec(space.base, layout(space.base).key_style, spec.protocol.batch_size)
        for name in methods:
            method = BuildMethod(name, n_fit=len(fit), seed=args.seed)
            t0 = time.perf_counter()
            table, summary = build_table(
                spec, space, store_path=store, adapter=adapter,
                protocol_overrides=layer_protocol, method=method, fit_archs=fit,
            )  # fmt: skip
            wall = time.perf_counter() - t0
            plan = make_plan(method, space, layers, fit_archs=fit)
            device_s = probe_costs_s(store, {ident.cache_key(p) for p in plan.probes})
            if plan.fit_archs:
                device_s += fit_cost["wall_s"]
            tables[name] = table
            builds[name] = {
                "probes": summary["probes"], "layers": summary["layers"],
                "device_s": device_s, "wall_s_this_run": wall,
                "share_of_all_compofa_e2e": device_s / all_compofa_s,
                "details": table.provenance.get("method_details"),
            }  # fmt: skip
            print(f"built {name}: {summary['probes']} probes, {device_s:.1f} s", flush=True)
        phases["builds_s"] = sum(b["wall_s_this_run"] for b in builds.values())

        # interleaved rounds over validation + calibration archs
        t0 = time.perf_counter()
        archs = val + cal
        rounds = np.zeros((args.rounds, len(archs)))
        for i in range(args.rounds):
            ref_times.append(timer(ref))
            for j in rng.permutation(len(archs)):
                rounds[i, j] = timer(archs[j])
            print(f"round {i + 1}/{args.rounds} done", flush=True)
        ref_times.append(timer(ref))
        phases["rounds_s"] = time.perf_counter() - t0
    finally:
        adapter.close()

    measured = np.median(rounds, axis=0)
    m_val, m_cal = measured[:n_val], measured[n_val:]
    r_val = [a.resolution for a in val]
    r_cal = [a.resolution for a in cal]
    per_arch_spread = (
        np.array([rel_spread(rounds[:, j]) for j in range(len(archs))])
        if args.rounds > 1
        else np.zeros(len(archs))
    )
    ref_arr = np.array(ref_times)
    noise = {
        "reference_arch": ref.key(),
        "reference_ms": ref_times,
        "reference_start_to_end": float(ref_arr[-1] / ref_arr[0] - 1),
        "reference_spread": rel_spread(ref_arr),
        "round_spread_median": float(np.median(per_arch_spread)),
        "round_spread_p90": float(np.percentile(per_arch_spread, 90)),
    }
    results = {}
    for name, table in tables.items():
        raw_val = table.predict_ms(val, calibrated=False)
        raw_cal = table.predict_ms(cal, calibrated=False)
        cal_fit = fit_calibration(raw_cal, m_cal, r_cal)
        calibrated = cal_fit.apply(raw_val, r_val)
        results[name] = {
            "uncalibrated": metrics(raw_val, m_val),
            "calibrated": metrics(calibrated, m_val),
            "calibration": cal_fit.describe(),
            "bias_by_resolution": {
                str(r): {"uncalibrated": b["mean_pct_error"], "n": b["n"]}
                for r, b in bias_by_resolution(raw_val, m_val, r_val).items()
            },
            "build": builds[name],
            "predicted_ms": raw_val.tolist(),
        }
        if "isolated" in tables:
            # what this method's correction is worth: its layer sum against isolated layers'
            iso = tables["isolated"].predict_ms(val, calibrated=False)
            results[name]["mean_change_vs_isolated"] = float(np.mean(raw_val / iso - 1))
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "device": spec.name,
        "space": space.name,
        "resolutions": list(resolutions),
        "n_validation": n_val,
        "n_calibration": n_cal,
        "n_fit": len(fit),
        "rounds": args.rounds,
        "e2e_protocol": e2e.to_dict(),
        "layer_protocol_overrides": layer_protocol,
        "cpus": sorted(os.sched_getaffinity(0)),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "default_method": DEFAULT_METHOD,
        "per_network_profile_s": per_network_s,
        "all_compofa_e2e_s_estimated": all_compofa_s,
        "noise_floor": noise,
        "phases_s": {**phases, "total_s": time.perf_counter() - t_start},
        "methods": results,
        "validation_archs": [a.key() for a in val],
        "measured_ms": m_val.tolist(),
        "rounds_ms": rounds.tolist(),
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print_table(doc)
    print(f"wrote {out}")


def print_table(doc: dict) -> None:
    nf = doc["noise_floor"]
    print(
        f"\n{doc['device']} / {doc['space']} at {doc['resolutions']}: {doc['n_validation']} "
        f"validation archs, calibration on {doc['n_calibration']} others, {doc['rounds']} rounds"
    )
    print(
        f"noise floor: reference start->end {nf['reference_start_to_end']:+.1%}, reference "
        f"spread {nf['reference_spread']:.1%}, per-arch round spread median "
        f"{nf['round_spread_median']:.1%} (p90 {nf['round_spread_p90']:.1%})"
    )
    head = (
        f"{'method':<11} {'RMSPE':>7} {'±5%':>5} {'±10%':>5} {'Spear.':>7} | "
        f"{'cal RMSPE':>9} {'±5%':>5} {'±10%':>5} {'Spear.':>7} | {'build':>6} {'vs iso':>7}"
    )
    print(head)
    for name, r in doc["methods"].items():
        u, c = r["uncalibrated"], r["calibrated"]
        print(
            f"{name:<11} {u['rmspe']:>7.2%} {u['within_5pct']:>5.0%} {u['within_10pct']:>5.0%} "
            f"{u['spearman']:>7.4f} | {c['rmspe']:>9.2%} {c['within_5pct']:>5.0%} "
            f"{c['within_10pct']:>5.0%} {c['spearman']:>7.4f} | "
            f"{r['build']['share_of_all_compofa_e2e']:>6.1%} "
            f"{r.get('mean_change_vs_isolated', float('nan')):>+7.1%}"
        )
    print(f"total {doc['phases_s']['total_s']:.0f} s ({doc['phases_s']})")


def _quick_spec(spec):
    """The device with a throwaway artifact cache and no parity check (a functional run)."""
    return spec.with_options(parity_check=False, cache_dir=tempfile.mkdtemp())


if __name__ == "__main__":
    main()
