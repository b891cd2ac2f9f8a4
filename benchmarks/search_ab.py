"""Our search alone, timed in one source tree: seconds per target with 4 targets in one call,
seeds 0-7 (the search_vs_ofa setting, without OFA's side). Run it alternately on two trees to
compare code versions in one sitting:

    for i in 1 2 3; do python benchmarks/search_ab.py ../before; python benchmarks/search_ab.py .; done
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

tree = str(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
sys.path[:0] = [tree, tree + "/benchmarks"]

import search_vs_ofa as bench  # noqa: E402

from compofa_bench import predictor, spaces  # noqa: E402
from compofa_bench import search as S  # noqa: E402
from compofa_bench.lut import import_ofa_dir  # noqa: E402

assert bench.__file__.startswith(tree), f"imported {bench.__file__}, not {tree}'s"
pred = predictor.load(bench.REF / "acc_predictor.pth")
table = import_ofa_dir(bench.REF / "latency_table@note10", width_mult=1.2)
space = spaces.get("ofa", bench.RESOLUTIONS)
cfg = S.EvolutionConfig(generations=10)
per_target = []
for seed in range(8):
    _, wall, _ = bench.run_ours(pred, table, space, [15.0, 20.0, 25.0, 30.0], seed, cfg)
    per_target.append(wall / 4)
print(f"{tree}: median {statistics.median(per_target):.4f} s/target over 8 seeds")
