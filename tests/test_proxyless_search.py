"""Search on a proxyless space with a predictor trained on a proxyless acc.csv (`predictor
train` -> `search --predictor`), and OFA's MobileNetV3 predictor refused for it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from compofa_bench import spaces, supernet
from compofa_bench.cli import main
from compofa_bench.lut import LatencyTable, LutEntry
from compofa_bench.lut.layers import unique_layers

RES = (160, 224)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pxsearch")
    space = spaces.get("compofa-proxyless", RES)
    rng = np.random.default_rng(0)
    # A table whose layer costs grow with MACs, and accuracies that grow with MACs: synthetic,
    # but with the real keys, so the whole search path runs on proxyless archs.
    entries = {
        r: {
            k: LutEntry(count=1, mean_ms=1e-8 * supernet.layer_macs(s) + 0.01, std_ms=0.0)
            for k, s in keyed.items()
        }
        for r, keyed in unique_layers(space).items()
    }
    LatencyTable(base="proxyless", width_mult=1.0, entries=entries).save(d / "t.json")
    with open(d / "acc.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["space", "key", "resolution", "top1", "arch"])
        for a in space.sample_many(200, rng):
            gmacs = supernet.count_macs(a, base="proxyless") / 1e9
            top1 = 0.6 + 0.1 * np.log1p(gmacs) + rng.normal(0, 0.002)
            arch = json.dumps(a.to_ofa(), separators=(",", ":"))
            w.writerow([space.name, a.key(), a.resolution, f"{top1:.5f}", arch])
    return d


def test_predictor_train_then_search(work: Path, capsys) -> None:
    pred = work / "pred.pt"
    assert main(["predictor", "train", "--data", str(work / "acc.csv"), "--out", str(pred),
                 "--epochs", "30", "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    table = LatencyTable.load(work / "t.json")
    space = spaces.get("compofa-proxyless", RES)
    every = list(space.enumerate())
    cost = table.predict_ms(every)
    targets = [float(np.quantile(cost, q)) for q in (0.2, 0.8)]
    out = work / "out"
    args = ["search", "--space", "compofa-proxyless", "--lut", str(work / "t.json"), "--latency"]
    assert main([*args, ",".join(f"{t:.6f}" for t in targets), "--predictor", str(pred),
                 "--out", str(out), "--json"]) == 0  # fmt: skip
    capsys.readouterr()
    doc = json.loads((out / "search.json").read_text())
    assert doc["space"] == "compofa-proxyless" and not doc["accuracy_is_proxy"]
    for t, res in zip(targets, doc["targets"], strict=True):
        assert res["feasible"]
        arch = space.parse(res["arch"])
        assert table.predict_ms([arch])[0] <= t + 1e-9


def test_ofa_mbv3_predictor_is_refused(work: Path, reference_dir: Path, capsys) -> None:
    ofa_pred = reference_dir / "compofa" / "acc_predictor.pth"
    if not ofa_pred.is_file():
        pytest.skip(f"{ofa_pred} missing")
    args = ["search", "--space", "compofa-proxyless", "--lut", str(work / "t.json")]
    rc = main([*args, "--latency", "5", "--predictor", str(ofa_pred), "--out",
               str(work / "o2")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: ") and "21 layer slots" in err
