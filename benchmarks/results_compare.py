"""`results compare` on two real stores: the same CompOFA archs at 160 px profiled on cpu-ort-1t
into one store and on tflite-local into another, then compared with the CLI (per-arch ratio,
Spearman, Kendall, the archs whose rank moves most, a scatter plot).

The devices run one after the other (never at once: they would share the cores) through the
library (``profile_archs``), so a rerun with the same ``--dir`` resumes. Sequential runs are
only comparable on a quiet machine: run it there.

    .venv/bin/python benchmarks/results_compare.py --n 20 --dir runs/results_compare \
        --out benchmarks/results/results_compare

writes OUT.json (the `results compare --json` document plus the run's settings), OUT.txt (the
CLI's tables, as a file receives them) and OUT.png (the scatter plot). ``--quick`` is a
functional check only (3 archs at 128 px, short protocol, into a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from compofa_bench import spaces
from compofa_bench.devices import load_device
from compofa_bench.profile import profile_archs
from compofa_bench.store import ResultStore

ROOT = Path(__file__).resolve().parents[1]
QUICK_PROTOCOL = {"warmup_runs": 2, "warmup_min_s": 0.0, "min_runs": 5, "min_s": 0.1, "max_s": 1.0}


def cli(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "compofa_bench", *args], capture_output=True,
                          text=True, env=env, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"compofa-bench {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=20, help="number of CompOFA archs (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resolution", type=int, default=160)
    ap.add_argument("--dir", default="runs/results_compare", help="where the two stores live")
    ap.add_argument("--out", default="benchmarks/results/results_compare")
    ap.add_argument("--tflite-cache", default=None, help="TFLite conversion cache directory")
    ap.add_argument("--quick", action="store_true", help="functional check: 3 archs, 128 px")
    args = ap.parse_args()

    overrides: dict[str, object] = {}
    if args.quick:
        args.n, args.resolution, overrides = 3, 128, QUICK_PROTOCOL
        tmp = Path(tempfile.mkdtemp(prefix="results_compare_"))
        args.dir, args.out = str(tmp), str(tmp / "results_compare")
    archs = spaces.get("compofa", [args.resolution]).sample_many(
        args.n, np.random.default_rng(args.seed)
    )
    tfl = load_device("tflite-local")
    if args.tflite_cache:
        tfl = tfl.with_options(cache_dir=args.tflite_cache)
    ort = load_device("cpu-ort-1t")
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    stores, wall = [], {}
    for spec in (ort, tfl):
        path = d / f"{spec.name}.db"
        t0 = time.perf_counter()
        with ResultStore(path) as store:
            profile_archs(archs, [spec], store, space="compofa", protocol_overrides=overrides)
        wall[spec.name] = round(time.perf_counter() - t0, 1)
        stores.append(str(path))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compare_args = ["results", "compare", "--store", stores[0], "--store", stores[1],
                    "--top", "5", "--limit", "0"]  # fmt: skip
    doc = json.loads(cli(*compare_args, "--plot", str(out.with_suffix(".png")), "--json"))
    out.with_suffix(".txt").write_text(cli(*compare_args))
    doc["run"] = {
        "archs": args.n, "seed": args.seed, "resolution": args.resolution, "quick": args.quick,
        "wall_s": wall, "python": sys.version.split()[0], "cpu_count": os.cpu_count(),
        "load_avg": os.getloadavg(), "command": "compofa-bench " + " ".join(compare_args),
    }  # fmt: skip
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    [pair] = doc["pairs"]
    print(
        f"{pair['n']} archs on both: Spearman {pair['spearman']:.3f}, Kendall "
        f"{pair['kendall']:.3f}, {pair['b']}/{pair['a']} ratio geomean "
        f"{pair['ratio_geomean']:.3f} ({pair['ratio_min']:.3f}-{pair['ratio_max']:.3f}); "
        f"wall {wall}; wrote {out}.json/.txt/.png"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
