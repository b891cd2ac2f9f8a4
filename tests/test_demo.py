"""The main job end to end on the local CPU, as the README's first command runs it (smaller)."""

from __future__ import annotations

import json

import pytest

from compofa_bench.cli import main

pytestmark = pytest.mark.slow


def test_demo_end_to_end_on_cpu(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--device", "cpu-ort-1t", "--sample", "3", "--resolutions", "128",
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

    # A rerun resumes from the same store and gives the same answer.
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert [t["key"] for t in again["targets"]] == [t["key"] for t in doc["targets"]]
