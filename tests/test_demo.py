"""The main job end to end on the local CPU, as the README's first command runs it (smaller)."""

from __future__ import annotations

import json
import os

import pytest

from compofa_bench.cli import main

pytestmark = pytest.mark.slow


def test_demo_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "demo"
    # one round keeps this test short (rounds are tested in test_trust.py)
    args = ["demo", "--sample", "3", "--resolutions", "128", "--rounds", "1",
            "--out", str(out), "--json", "--accuracy-proxy", "macs"]  # fmt: skip
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)

    # Asked for MACs (a shipped predictor would otherwise rank): MACs, labelled as a proxy.
    assert doc["accuracy_is_proxy"] is True
    assert "MACs" in doc["accuracy_source"]
    assert doc["constraint_source"].startswith("lut:")
    table = json.loads((out / "lut.json").read_text())
    assert table["resolutions"] == [128]

    # Three automatic targets spread over the space: each one feasible, the winner within it,
    # exported to ONNX, checked against PyTorch and measured again on the device.
    assert len(doc["targets"]) == 3
    for item in doc["targets"]:
        assert item["feasible"]
        assert item["predicted_latency_ms"] <= item["target_ms"]
        assert item["export"]["parity"]["max_abs_diff"] < 1e-3
        assert item["measured_latency_ms"] > 0
        folder = out / "search" / f"target_{item['target_ms']:g}ms"
        assert json.loads((folder / "arch.json").read_text())["r"] == [128]
        assert (folder / "model.onnx").stat().st_size > 100_000
    scores = [t["proxy_score_mmacs"] for t in doc["targets"]]
    assert scores == sorted(scores)  # a looser budget never picks a smaller net

    # Every winner is checked: measured/predicted and a verdict against its target.
    for item in doc["targets"]:
        v = item["verdict"]
        assert v["measured_ms"] == item["measured_latency_ms"]
        assert v["status"] == ("MISSED" if v["measured_ms"] > 1.1 * item["target_ms"] else "met")
        assert v["measured_over_predicted"] > 0
    assert doc["verdict"]["checked"] == 3 and doc["verdict"]["line"].startswith("verdict: ")
    assert doc["table_verdict"]["line"].startswith("table: RMSPE")
    assert doc["pinned_cpu"] in os.sched_getaffinity(0)

    # A rerun resumes from the same store (and the same pinned core) and gives the same answer;
    # --accept-unstable keeps rows this busy host made unstable or contended.
    assert main([*args, "--accept-unstable"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert [t["key"] for t in again["targets"]] == [t["key"] for t in doc["targets"]]
