"""The job wiring (compofa_bench.jobs): names resolved once, each resource opened once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from compofa_bench import jobs as J
from compofa_bench import profile
from compofa_bench.adapters.ort_cpu import OrtCpuAdapter
from compofa_bench.errors import SearchError
from compofa_bench.store import ResultStore


def fast_device(tmp_path: Path) -> str:
    path = tmp_path / "fast.toml"
    path.write_text(
        textwrap.dedent(
            f"""\
            name = "fast"
            adapter = "cpu-ort"
            [options]
            threads = 1
            cache_dir = "{tmp_path / "cache"}"
            [protocol]
            warmup_runs = 1
            warmup_min_s = 0.0
            min_runs = 3
            min_s = 0.0
            max_s = 1.0
            """
        )
    )
    return str(path)


@pytest.mark.slow
def test_measured_latency_search_opens_one_adapter_and_one_store(tmp_path, monkeypatch) -> None:
    # Count the REAL opens: the adapter's and the store's constructors, wrapped, still run.
    opened: dict[str, int] = {"adapter": 0, "store": 0, "batches": 0}
    real_adapter_init, real_store_init = OrtCpuAdapter.__init__, ResultStore.__init__
    real_profile_archs = profile.profile_archs

    def adapter_init(self, *a, **k):
        opened["adapter"] += 1
        real_adapter_init(self, *a, **k)

    def store_init(self, *a, **k):
        opened["store"] += 1
        real_store_init(self, *a, **k)

    def profile_archs(*a, **k):
        opened["batches"] += 1
        return real_profile_archs(*a, **k)

    monkeypatch.setattr(OrtCpuAdapter, "__init__", adapter_init)
    monkeypatch.setattr(ResultStore, "__init__", store_init)
    monkeypatch.setattr(profile, "profile_archs", profile_archs)
    job = J.SearchJob(
        space="compofa",
        targets=(1000.0,),
        out_dir=str(tmp_path / "out"),
        measure_latency=True,
        accuracy_proxy="macs",
        resolutions=(64,),
        method="evolution",
        population_size=2,
        generations=1,
        device=fast_device(tmp_path),
        store=str(tmp_path / "r.db"),
    )
    doc = J.run_search_job(job)
    item = doc["targets"][0]
    assert item["feasible"] and item["predicted_latency_ms"] > 0
    # several batches of new archs were measured, through one adapter and one store
    assert opened["batches"] >= 2
    assert opened["adapter"] == 1 and opened["store"] == 1


def test_a_job_names_what_is_missing_not_a_flag(tmp_path) -> None:
    with pytest.raises(SearchError) as info:
        J.SearchJob(space="compofa", targets=(10.0,), out_dir=str(tmp_path), accuracy_proxy="macs")
    assert "constraint source" in str(info.value) and "--" not in str(info.value)
    with pytest.raises(SearchError) as info:
        J.SearchJob(
            space="compofa",
            targets=(10.0,),
            out_dir=str(tmp_path),
            measure_latency=True,
            accuracy_proxy="macs",
        )
    assert "device" in str(info.value) and "--" not in str(info.value)
