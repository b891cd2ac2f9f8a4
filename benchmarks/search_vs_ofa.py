"""Our evolutionary search vs OFA's own EvolutionFinder, side by side, same inputs.

Both use OFA's pretrained accuracy predictor (shared/reference/compofa/acc_predictor.pth) and
the Samsung Note10 latency tables of the OFA w1.2 supernet (shared/reference, read through
compofa_bench.lut for ours and through OFA's own LatencyEstimator for OFA's), over the OFA
MobileNetV3 space at resolutions 160,176,192,208,224 (OFA's ArchManager). OFA's finder runs
with its own budget: population 100, 500 generations, parent ratio 0.25, mutation ratio 0.5,
mutation prob 0.1. Ours runs its default search (evolution with the same operators, then the
multi-start iterated local search of ``search.EvolutionConfig``) with ``--generations`` (default
10) generations.

Reports per target: predicted accuracy of each winner (both re-scored with our predictor, which
equals OFA's to 1e-6), its latency re-checked on OFA's own table, and wall time per target.
Ours runs twice: all targets in one call (time / targets) and one call per target.

    .venv/bin/python benchmarks/search_vs_ofa.py [--targets 15,20,25,30] [--seeds 0]
        [--generations 10] [--ofa-generations 500] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # OFA's finder draws a tqdm bar per target

import numpy as np
import torch
import yaml

from compofa_bench import predictor, sources, spaces
from compofa_bench import search as S
from compofa_bench.lut import import_ofa_dir

REF = Path(__file__).resolve().parents[2] / "shared" / "reference" / "compofa"
RESOLUTIONS = (160, 176, 192, 208, 224)


def ofa_tutorial(name: str):
    """One file of ofa.tutorial, without the package __init__ (which needs gdown)."""
    import ofa

    path = Path(ofa.__file__).parent / "tutorial" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_ofa_tutorial_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ofa_components():
    acc_mod = ofa_tutorial("accuracy_predictor")
    acc = acc_mod.AccuracyPredictor(pretrained=False, device="cpu")  # no download
    acc.model.load_state_dict(
        torch.load(REF / "acc_predictor.pth", map_location="cpu", weights_only=True)
    )
    lat_mod = ofa_tutorial("latency_table")
    table = lat_mod.LatencyTable.__new__(lat_mod.LatencyTable)  # skip its download
    table.latency_tables = {}
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for r in RESOLUTIONS:
        est = lat_mod.LatencyEstimator.__new__(lat_mod.LatencyEstimator)
        with open(REF / "latency_table@note10" / f"{r}_lookup_table.yaml") as fh:
            est.lut = yaml.load(fh, Loader=loader)
        table.latency_tables[r] = est
    finder_mod = ofa_tutorial("evolution_finder")
    return acc, table, finder_mod.EvolutionFinder


def run_ours(
    pred, table, space, targets: list[float], seed: int, cfg: S.EvolutionConfig
) -> tuple[S.SearchOutcome, float, float]:
    """One call of our search with fresh sources (their setup is inside the timing): the
    outcome, its wall seconds and its process CPU seconds."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = S.search(
        space,
        sources.PredictorAccuracy(pred),
        sources.LutLatency(table, width_mult=1.2),
        targets,
        np.random.default_rng(seed),
        method="evolution",
        config=cfg,
    )
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--targets", default="15,20,25,30")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, each run for both")
    ap.add_argument("--generations", type=int, default=10, help="our evolution's generations")
    ap.add_argument("--ofa-generations", type=int, default=500, help="OFA's max_time_budget")
    ap.add_argument(
        "--our-seeds",
        default="",
        help="extra seeds run for ours only (all targets in one call): its spread",
    )
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not REF.is_dir():
        print(f"reference data not found at {REF}", file=sys.stderr)
        return 2
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    ofa_acc, ofa_lat, EvolutionFinder = ofa_components()
    ours_pred = predictor.load(REF / "acc_predictor.pth")
    table = import_ofa_dir(REF / "latency_table@note10", width_mult=1.2)
    space = spaces.get("ofa", RESOLUTIONS)
    cfg = S.EvolutionConfig(generations=args.generations)
    rows = []
    for seed in seeds:
        # ---- ours, all targets in one call, then one call per target
        out_all, ours_all_s, _ = run_ours(ours_pred, table, space, targets, seed, cfg)
        ours_one = {}
        for t in targets:
            o, one_s, _ = run_ours(ours_pred, table, space, [t], seed, cfg)
            ours_one[t] = (o.results[0], one_s)
        # ---- OFA's finder, one target at a time (its design)
        for i, t in enumerate(targets):
            random.seed(seed)
            np.random.seed(seed)
            finder = EvolutionFinder(
                constraint_type="note10",
                efficiency_constraint=t,
                efficiency_predictor=ofa_lat,
                accuracy_predictor=ofa_acc,
                population_size=100,
                max_time_budget=args.ofa_generations,
                parent_ratio=0.25,
                mutation_ratio=0.5,
                mutate_prob=0.1,
            )
            t0 = time.perf_counter()
            _, best = finder.run_evolution_search()
            ofa_s = time.perf_counter() - t0
            ofa_arch = spaces.Arch.from_ofa(best[1])
            ofa_acc_v = float(ours_pred.predict([ofa_arch])[0])
            r_all = out_all.results[i]
            r_one, one_s = ours_one[t]
            row = {
                "seed": seed,
                "target_ms": t,
                "ofa_acc": ofa_acc_v,
                "ofa_latency_ms": float(best[2]),
                "ofa_seconds": ofa_s,
                "ours_acc": r_all.score,
                "ours_latency_ms_on_ofa_table": float(
                    ofa_lat.predict_efficiency(r_all.arch.to_ofa())
                ),
                "ours_seconds_per_target": ours_all_s / len(targets),
                "ours_single_acc": r_one.score,
                "ours_single_seconds": one_s,
                "ours_arch": r_all.arch.to_ofa(),
                "ofa_arch": ofa_arch.to_ofa(),
            }
            rows.append(row)
            print(
                f"seed {seed} target {t:>5g} ms | OFA {ofa_acc_v * 100:6.3f}% "
                f"({row['ofa_latency_ms']:.2f} ms) {ofa_s:7.2f} s | ours {r_all.score * 100:6.3f}%"
                f" ({row['ours_latency_ms_on_ofa_table']:.2f} ms) "
                f"{row['ours_seconds_per_target']:6.3f} s/target (all-in-one), "
                f"{r_one.score * 100:6.3f}% {one_s:6.3f} s (alone) | "
                f"speedup {ofa_s / row['ours_seconds_per_target']:.0f}x / {ofa_s / one_s:.0f}x",
                flush=True,
            )
    for seed in [int(x) for x in args.our_seeds.split(",") if x.strip()]:
        o, took, _ = run_ours(ours_pred, table, space, targets, seed, cfg)
        print(
            f"ours, seed {seed}: "
            + ", ".join(f"{r.target:g} ms {r.score * 100:.3f}%" for r in o.results)
            + f" ({took / len(targets):.3f} s/target)",
            flush=True,
        )
    ofa_total = sum(r["ofa_seconds"] for r in rows)
    ours_total = sum(r["ours_seconds_per_target"] for r in rows)
    ours_single_total = sum(r["ours_single_seconds"] for r in rows)
    wins = sum(r["ours_acc"] >= r["ofa_acc"] - 1e-9 for r in rows)
    feas = all(r["ours_latency_ms_on_ofa_table"] <= r["target_ms"] + 1e-9 for r in rows)
    print(
        f"\nours >= OFA at {wins}/{len(rows)} targets; our winners within target on OFA's own "
        f"table: {feas}"
    )
    print(
        f"time per target: OFA {ofa_total / len(rows):.2f} s, ours {ours_total / len(rows):.3f} s "
        f"(all targets in one call; {ofa_total / ours_total:.0f}x less), "
        f"{ours_single_total / len(rows):.3f} s one call per target "
        f"({ofa_total / ours_single_total:.0f}x less)"
    )
    print(f"load average during the run: {os.getloadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
