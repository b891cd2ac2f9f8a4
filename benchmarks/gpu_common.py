"""Shared helpers of the GPU benchmark scripts (benchmarks/gpu_*.py).

Every script measures through the library (``profile_archs`` -> adapter -> results store), so
a rerun resumes from the store, and writes a JSON summary plus a short markdown table next to
it. None of them has been run in the session that wrote them (no GPU there): see
benchmarks/RESULTS.md and docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compofa_bench.adapters.cuda_torch import gpu_description
from compofa_bench.devices import DeviceSpec, load_device
from compofa_bench.ranking import spearman
from compofa_bench.spaces import Arch


def require_gpu() -> dict[str, Any]:
    """Stop with one line when there is no GPU; otherwise describe it."""
    import torch

    if not torch.cuda.is_available():
        sys.exit("error: this benchmark needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    return {
        **gpu_description(torch, 0),
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
    }


#: What ``--dry-run`` measures in place of every GPU device: the same scripts, stores and
#: summaries on this CPU, so a plumbing bug shows up here and never costs GPU time.
DRY_RUN_DEVICE = "cpu-ort-1t"


def add_run_args(ap: argparse.ArgumentParser) -> None:
    """The flags every GPU script shares: the dry run and the protocol's time overrides."""
    g = ap.add_argument_group("run")
    g.add_argument(
        "--dry-run",
        action="store_true",
        help=f"no GPU needed: measure {DRY_RUN_DEVICE} in place of every GPU device, to prove "
        "the script end to end before GPU time is spent (pass small sizes too)",
    )
    g.add_argument("--warmup-s", type=float, help="protocol override: warmup_min_s")
    g.add_argument("--min-s", type=float, help="protocol override: min_s (timed seconds)")
    g.add_argument("--min-runs", type=int, help="protocol override: min_runs")
    g.add_argument("--max-s", type=float, help="protocol override: max_s")


def protocol_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"warmup_s": "warmup_min_s", "min_s": "min_s", "min_runs": "min_runs", "max_s": "max_s"}
    return {p: getattr(args, a) for a, p in names.items() if getattr(args, a) is not None}


def start(args: argparse.Namespace) -> dict[str, Any]:
    """Describe the GPU (or this CPU under --dry-run); stop with one line when there is none."""
    if args.dry_run:
        return {"gpu": f"dry run on the CPU ({DRY_RUN_DEVICE})", "host": platform.node(),
                "cpu_count": os.cpu_count(), "dry_run": True}  # fmt: skip
    return require_gpu()


def device(name: str, dry_run: bool = False, **options: Any) -> DeviceSpec:
    """The named device; under ``dry_run`` the CPU stand-in (GPU-only options dropped)."""
    if dry_run:
        return load_device(DRY_RUN_DEVICE)
    spec = load_device(name)
    return spec.with_options(**options) if options else spec


def measure_medians(
    archs: Sequence[Arch],
    spec: DeviceSpec,
    store_path: str | Path,
    *,
    space: str,
    batch_size: int,
    skip_done: bool = True,
    protocol_overrides: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Median latency (ms) of every arch, in order, and what the run cost. Raises on any
    failed arch: a benchmark with holes would compare different sets."""
    from compofa_bench.profile import profile_archs
    from compofa_bench.store import ResultStore

    Path(store_path).parent.mkdir(parents=True, exist_ok=True)
    overrides = {"batch_size": batch_size, **(protocol_overrides or {})}
    t0 = time.perf_counter()
    with ResultStore(store_path) as store:
        (run,) = profile_archs(
            archs, [spec], store, space=space, protocol_overrides=overrides, skip_done=skip_done
        )
        failed = run.by_status("failed")
        if failed:
            sys.exit(f"error: {len(failed)} archs failed on {spec.name}, e.g. {failed[0].error}")
        found = store.lookup_many(
            [a.key() for a in archs],
            fingerprint_hash=run.fingerprint_hash,
            protocol_hash=run.protocol_hash,
            batch_size=batch_size,
            kind="network",
        )
        keys = {a.key() for a in archs}
        rows = store.rows(
            ("workload_key", "unstable"),
            fingerprint_hash=run.fingerprint_hash,
            protocol_hash=run.protocol_hash,
            batch_size=batch_size,
            kind="network",
            status="ok",
        )
        unstable = len(
            {r["workload_key"] for r in rows if r["unstable"] and r["workload_key"] in keys}
        )
    medians = np.array([found[a.key()] for a in archs], dtype=float)
    cost = {
        "device": spec.name,
        "batch_size": batch_size,
        "measured_now": len(run.by_status("ok")),
        "reused": len(run.by_status("skipped")),
        "wall_s": round(time.perf_counter() - t0, 1),
        "unstable": unstable,
        "fingerprint_hash": run.fingerprint_hash,
    }
    return medians, cost


def describe(ms: np.ndarray) -> dict[str, float]:
    return {
        "min_ms": float(ms.min()),
        "p10_ms": float(np.percentile(ms, 10)),
        "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)),
        "max_ms": float(ms.max()),
    }


def rank_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    rel = np.abs(a - b) / np.minimum(a, b)
    return {
        "spearman": spearman(a, b),
        "median_abs_diff_ms": float(np.median(np.abs(a - b))),
        "median_rel_diff": float(np.median(rel)),
        "max_rel_diff": float(rel.max()),
    }


def write_outputs(stem: str | Path, summary: dict[str, Any], markdown: list[str]) -> None:
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    for path, text in (
        (json_path, json.dumps(summary, indent=1) + "\n"),
        (md_path, "\n".join(markdown) + "\n"),
    ):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print("\n".join(markdown))
    print(f"\nwrote {json_path} and {md_path}")


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return out
