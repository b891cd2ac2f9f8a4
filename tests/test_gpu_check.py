"""The GPU check's dry run: the one prepared command walks every GPU step on this CPU (cpu-ort-1t
in place of the GPU, tiny sizes), packs what it measured, and the report script derives its
figures from the returned archive. A bug here would otherwise cost GPU time to find."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_dry_run_walks_every_step_and_the_report_reads_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OUT": str(out),
        "PYTHON": sys.executable,
        "TMPDIR": str(tmp_path),
        # the nested GPU tests are this suite's own; the CPU jobs have their own --quick tests
        "STEPS": "latency_all,repeat,lut,recipe,train,modes",
        "CPU_JOBS": "0",
        "BUDGET_S": "400",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = (out / "steps.tsv").read_text().splitlines()[1:]
    assert [s.split("\t")[:2] for s in steps] == [
        [name, "ok"] for name in ("latency_all", "repeat", "lut", "recipe", "train", "modes")
    ]
    run = tmp_path / "run"
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        tar.extractall(run, filter="data")
    assert (run / "stores" / "gpu_all.db").is_file() and not (run / "cache").exists()
    assert json.loads((run / "results" / "train_throughput.json").read_text())["images_per_s"]

    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check_report.py"), str(run),
         "--out", str(report)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(report.with_suffix(".json").read_text())
    # the dry run's stand-in measured the table's validation archs end to end
    assert doc["table"]["uncalibrated"]["n"] >= 3
    assert doc["gpu_compofa_recipe"]["results"]["batch2"]["truth_ms"]
    # the recipe's truth and the modes' eager run measured the same archs: a repeat pair
    assert any(p["n"] >= 2 for p in doc["repeatability"]["pairs"])
