"""Sweep search settings on OFA's predictor and the Note10 tables: time per target and accuracy.

Each named configuration is a set of ``search.EvolutionConfig`` fields; all of them run on the
same seeds, interleaved seed by seed so that the machine's drift hits every configuration alike.
Reports per configuration the median time per target (process CPU time, steadier than wall time
on a shared machine, and wall time), the mean predicted top-1 per target and the worst margin
per target over the seeds against a reference (by default OFA's EvolutionFinder, seed 0, from
benchmarks/RESULTS.md section *search*). OFA's finder itself is not run here:
benchmarks/search_vs_ofa.py runs both side by side.

    .venv/bin/python benchmarks/search_sweep.py --seeds 8 \\
        default:generations=10 fewer-random:generations=10,local_random=1
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from search_vs_ofa import REF, RESOLUTIONS, run_ours

from compofa_bench import predictor, spaces
from compofa_bench import search as S
from compofa_bench.lut import import_ofa_dir

#: OFA's EvolutionFinder, seed 0, top-1 % at 15/20/25/30 ms (benchmarks/RESULTS.md)
OFA_SEED0 = "78.538,80.654,81.801,82.442"


def parse_config(text: str) -> tuple[str, S.EvolutionConfig]:
    name, _, fields = text.partition(":")
    kwargs: dict[str, object] = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition("=")
        if not hasattr(S.EvolutionConfig, key):
            raise SystemExit(f"{name}: EvolutionConfig has no field {key!r}")
        default = getattr(S.EvolutionConfig(), key)
        if isinstance(default, bool):
            kwargs[key] = value.lower() == "true"
        elif isinstance(default, tuple):  # a/b/c
            kwargs[key] = tuple(float(v) for v in value.split("/"))
        else:
            kwargs[key] = type(default)(value)
    return name, S.EvolutionConfig(**kwargs)  # type: ignore[arg-type]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "configs", nargs="+", help="NAME:field=value,field=value ... (a tuple field: a/b/c)"
    )
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--targets", default="15,20,25,30")
    ap.add_argument("--reference", default=OFA_SEED0, help="top-1 %% per target to compare with")
    ap.add_argument(
        "--one-call-per-target", action="store_true", help="search each target in its own call"
    )
    args = ap.parse_args()
    if not REF.is_dir():
        print(f"reference data not found at {REF}", file=sys.stderr)
        return 2
    targets = [float(t) for t in args.targets.split(",")]
    reference = np.array([float(x) for x in args.reference.split(",")])
    pred = predictor.load(REF / "acc_predictor.pth")
    table = import_ofa_dir(REF / "latency_table@note10", width_mult=1.2)
    space = spaces.get("ofa", RESOLUTIONS)
    configs = dict(parse_config(c) for c in args.configs)

    def run(seed: int, cfg: S.EvolutionConfig) -> tuple[float, float, list[float]]:
        calls = [[t] for t in targets] if args.one_call_per_target else [targets]
        cpu = wall = 0.0
        acc: list[float] = []
        for ts in calls:
            out, w, c = run_ours(pred, table, space, ts, seed, cfg)
            wall, cpu = wall + w, cpu + c
            acc += [r.score * 100 for r in out.results]
        return cpu / len(targets), wall / len(targets), acc

    run(0, S.EvolutionConfig(generations=2))  # warm caches and lazy imports
    rows: dict[str, list[tuple[float, float, list[float]]]] = {k: [] for k in configs}
    for seed in range(args.seeds):
        for name, cfg in configs.items():
            rows[name].append(run(seed, cfg))
    print(f"targets {targets} ms, seeds 0-{args.seeds - 1}, reference {reference.tolist()}")
    for name, res in rows.items():
        cpu = np.median([r[0] for r in res])
        wall = np.median([r[1] for r in res])
        acc = np.array([r[2] for r in res])
        margin = (acc - reference).min(axis=0)
        print(
            f"{name:14s} cpu s/target {cpu:.3f}  wall s/target {wall:.3f}  "
            f"mean top-1 {acc.mean(0).round(3).tolist()}  worst margin {margin.round(3).tolist()}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
