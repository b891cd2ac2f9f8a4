"""Progress goes through one callback (compofa_bench.progress); only the CLI draws it."""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from compofa_bench.adapters import open_adapter
from compofa_bench.devices import DeviceSpec
from compofa_bench.measure import Protocol, Workload
from compofa_bench.profile import Job, measure_workloads
from compofa_bench.progress import ProgressEvent
from compofa_bench.store import ResultStore

FAST = Protocol(warmup_runs=1, warmup_min_s=0.0, min_runs=3, min_s=0.0, max_s=1.0)


def job(key: str) -> Job:
    def build() -> Workload:
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 64, 2))
        return Workload(key, net.eval(), (1, 3, 8, 8), f"progress-{key}")

    return Job(key=key, cache_key=f"progress-{key}", build=build, kind="layer")


def test_measure_reports_each_job_to_the_callback(tmp_path: Path) -> None:
    spec = DeviceSpec("dev", "cpu-ort", {"threads": 1, "cache_dir": str(tmp_path / "c")}, FAST)
    events: list[ProgressEvent] = []
    with open_adapter(spec) as adapter, ResultStore(tmp_path / "r.db") as store:
        measure_workloads([job("a"), job("b")], adapter, store, FAST, progress=events.append)
        assert {e.task for e in events} == {"dev"} and all(e.total == 2 for e in events)
        assert [e.done for e in events if e.current == "b"] == [1, 2]
        assert events[-1].finished and events[-1].done == 2 and events[-1].current == "done"
        # nothing left to measure: no bar at all
        events.clear()
        measure_workloads([job("a")], adapter, store, FAST, progress=events.append)
        assert events == []
