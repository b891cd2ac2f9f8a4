"""CompOFA-Proxyless through the whole pipeline on the real ONNX Runtime CPU adapter at 32 px:
`lut build` -> `lut predict` -> `profile` -> exhaustive `search` -> `export`, with no
base-specific code in those modules (the space names its base)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _devices import write_tiny_ort_device

from compofa_bench import spaces, supernet
from compofa_bench.cli import main
from compofa_bench.lut import LatencyTable
from compofa_bench.lut.layers import unique_layers

ort = pytest.importorskip("onnxruntime")

RES = 32
pytestmark = pytest.mark.slow  # ~40 single-layer and a few network ONNX exports


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pxpipe")
    write_tiny_ort_device(d, parity_check=True)
    return d


@pytest.fixture(scope="module")
def table(work: Path) -> Path:
    out = work / "t.json"
    args = ["lut", "build", "--device", str(work / "dev.toml"), "--space", "compofa-proxyless"]
    assert main([*args, "--resolutions", str(RES), "--out", str(out), "--store",
                 str(work / "s.db")]) == 0  # fmt: skip
    return out


def test_build_measures_every_proxyless_layer(table: Path) -> None:
    t = LatencyTable.load(table)
    space = spaces.get("compofa-proxyless", [RES])
    assert (t.base, t.key_style) == ("proxyless", "ofa-proxyless")
    assert set(t.entries[RES]) == set(unique_layers(space)[RES])
    assert all(e.mean_ms > 0 for e in t.entries[RES].values())
    archs = space.sample_many(50, np.random.default_rng(0))
    pred = t.predict_ms(archs)
    assert np.all(np.isfinite(pred)) and np.all(pred > 0)


def test_profile_and_search_and_export(table: Path, work: Path, capsys) -> None:
    dev = str(work / "dev.toml")
    store = str(work / "s.db")
    profile = ["profile", "--device", dev, "--space", "compofa-proxyless", "--sample", "2"]
    capsys.readouterr()
    assert main([*profile, "--resolutions", str(RES), "--store", store, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["devices"][0]["results"]
    assert len(rows) == 2 and all(r["status"] == "ok" and r["median_ms"] > 0 for r in rows)
    assert all(r["key"].startswith("L444441-") for r in rows)

    t = LatencyTable.load(table)
    space = spaces.get("compofa-proxyless", [RES])
    every = list(space.enumerate())
    pred = t.predict_ms(every)
    target = float(np.quantile(pred, 0.5))
    out = work / "search"
    search = ["search", "--space", "compofa-proxyless", "--lut", str(table), "--latency"]
    assert main([*search, f"{target:.6f}", "--accuracy-proxy", "macs", "--resolutions",
                 str(RES), "--out", str(out), "--method", "exhaustive", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    doc = json.loads((out / "search.json").read_text())
    best = doc["targets"][0]
    assert best["feasible"]
    arch = space.parse(best["arch"])
    # Exhaustive: no member within the target has more MACs than the one found.
    macs = np.array([supernet.count_macs(a, base="proxyless") for a in every])
    ok = pred <= target + 1e-9
    assert supernet.count_macs(arch, base="proxyless") == macs[ok].max()

    arch_file = work / "arch.json"
    arch_file.write_text(json.dumps(arch.to_ofa()))
    onnx_path = work / "best.onnx"
    export = ["export", "--arch", str(arch_file), "--space", "compofa-proxyless", "--format"]
    assert main([*export, "onnx", "--out", str(onnx_path), "--json"]) == 0
    capsys.readouterr()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, 3, RES, RES)).astype(np.float32)
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert y.shape == (1, 1000)
    # The export is this proxyless subnet: stem, the first block's 2 convs, 3 per active
    # block, the feature mix; one classifier; ReLU6 as Clip.
    import onnx

    ops = [n.op_type for n in onnx.load(str(onnx_path)).graph.node]
    assert ops.count("Conv") == 1 + 2 + 3 * sum(arch.d) + 1
    assert ops.count("Gemm") == 1 and "Clip" in ops and "HardSigmoid" not in ops
