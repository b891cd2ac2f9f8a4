"""Export: extraction with checkpoint weights, BN recalibration, ONNX parity, CLI paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compofa_bench import export as X
from compofa_bench import jobs as J
from compofa_bench import search as S
from compofa_bench import spaces, supernet
from compofa_bench.cli import main
from compofa_bench.errors import MissingDependencyError

FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """A supernet with non-trivial weights and BN statistics, saved as a checkpoint."""
    torch.manual_seed(0)
    net = supernet.build("mbv3", width_mult=1.0, n_classes=10)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "net.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    return path


def _onnx_out(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_export_onnx_carries_checkpoint_weights(small_ckpt: Path, tmp_path: Path) -> None:
    arch = spaces.get("compofa").sample(np.random.default_rng(0)).with_resolution(64)
    src = X.SubnetSource(checkpoint=str(small_ckpt), n_classes=10)
    res = X.export_arch(arch, "onnx", tmp_path / "m.onnx", src)
    assert res.parity and res.parity["ok"] and res.parity["max_abs_diff"] < 1e-3
    assert res.weights == str(small_ckpt)
    # independent reference: the checkpoint loaded into a fresh supernet, run in place
    net = supernet.build("mbv3", width_mult=1.0, n_classes=10)
    net.load_checkpoint(small_ckpt)
    net.eval()
    net.set_active(arch)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = _onnx_out(Path(res.path), x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert np.abs(want).max() > 1e-3  # real signal, not an all-zero net


@pytest.mark.slow  # decoding Fashion-MNIST dominates
@pytest.mark.skipif(not FMNIST.is_file(), reason="Fashion-MNIST not installed")
def test_bn_recalibration_changes_statistics(small_ckpt: Path) -> None:
    arch = spaces.get("compofa").largest(32)
    plain, seen0 = X.SubnetBuilder(X.SubnetSource(str(small_ckpt), n_classes=10)).extract(arch)
    src = X.SubnetSource(
        str(small_ckpt),
        n_classes=10,
        calib_data="fashion-mnist",
        calib_images=64,
        calib_batch_size=32,
    )
    recal, seen = X.SubnetBuilder(src).extract(arch)
    assert seen0 == 0 and seen == 64
    bn_a = [m for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn_b = [m for m in recal.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert not torch.allclose(bn_a[0].running_mean, bn_b[0].running_mean)
    assert not recal.training


def test_tensorrt_missing_is_one_clear_error(tmp_path: Path) -> None:
    try:
        import tensorrt  # noqa: F401

        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"compofa-bench\[tensorrt\]"):
        X.export_arch(spaces.get("compofa").smallest(128), "tensorrt", tmp_path / "m.engine")


def test_cli_export_json(tmp_path: Path, capsys) -> None:
    arch = spaces.get("compofa").smallest(96)
    (tmp_path / "a.json").write_text(json.dumps(arch.to_ofa()))
    rc = main(
        [
            "export",
            "--arch",
            str(tmp_path / "a.json"),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
            "--json",
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["key"] == arch.key() and info["parity"]["ok"]
    assert info["weights"].startswith("random-init")
    assert (tmp_path / "m.onnx").stat().st_size > 10_000


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "search",
            "--space",
            "compofa",
            "--latency",
            "10",
            "--accuracy-proxy",
            "macs",
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "--lut" in err and err.count("\n") == 1
    (tmp_path / "bad.json").write_text('{"ks": [3], "e": [3], "d": [2]}')
    rc = main(
        [
            "export",
            "--arch",
            str(tmp_path / "bad.json"),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ]
    )
    assert rc == 2 and capsys.readouterr().err.startswith("error:")


def test_cli_search_macs_proxy_writes_outputs(tmp_path: Path, capsys) -> None:
    rc = main(
        [
            "search",
            "--space",
            "compofa",
            "--resolutions",
            "128,160",
            "--macs",
            "1,150,300",
            "--accuracy-proxy",
            "macs",
            "--out",
            str(tmp_path),
            "--json",
        ]
    )
    assert rc == 0
    items = json.loads(capsys.readouterr().out)
    assert [i["target_mmacs"] for i in items] == [1.0, 150.0, 300.0]
    assert not items[0]["feasible"] and "fastest member" in items[0]["message"]
    for it in items[1:]:
        assert "predicted_accuracy" not in it  # a proxy is never called an accuracy
        assert "not an accuracy" in it["accuracy_source"]
        arch = spaces.get("compofa").parse(it["arch"])
        assert supernet.count_macs(arch) / 1e6 == pytest.approx(it["mmacs"])
        assert it["mmacs"] <= it["target_mmacs"]
        saved = json.loads(
            (tmp_path / f"target_{it['target_mmacs']:g}mmacs" / "arch.json").read_text()
        )
        assert saved == it["arch"]
    doc = json.loads((tmp_path / "search.json").read_text())
    assert doc["accuracy_is_proxy"] and doc["method"] == "exhaustive"
    assert (tmp_path / "pareto.png").stat().st_size > 5_000


def test_cli_search_evolution_defaults_and_records_its_settings(tmp_path: Path, capsys) -> None:
    # With an additive constraint a short evolution seeds the local search: 10 generations by
    # default, and search.json records every setting, the local search's too.
    rc = main(["search", "--space", "compofa", "--resolutions", "160", "--macs", "200",
               "--accuracy-proxy", "macs", "--method", "evolution", "--population", "20",
               "--out", str(tmp_path), "--json"])  # fmt: skip
    assert rc == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert item["feasible"] and item["mmacs"] <= 200.0
    evo = json.loads((tmp_path / "search.json").read_text())["evolution"]
    assert evo["generations"] == 10 and evo["population_size"] == 20
    assert evo["local_knapsack"] == S.EvolutionConfig().local_knapsack > 0
    # exhaustive search of the same space finds the true optimum: the evolution matches it
    rc = main(["search", "--space", "compofa", "--resolutions", "160", "--macs", "200",
               "--accuracy-proxy", "macs", "--out", str(tmp_path / "ex"), "--json"])  # fmt: skip
    (best,) = json.loads(capsys.readouterr().out)
    assert item["mmacs"] == pytest.approx(best["mmacs"])


def test_cli_predictor_train_then_search(tmp_path: Path, capsys) -> None:
    space = spaces.get("compofa", [128, 160])
    archs = list(space.enumerate())
    rng = np.random.default_rng(0)
    macs = np.array([supernet.count_macs(a) for a in archs], dtype=float)
    top1 = 0.6 + 0.2 * (macs - macs.min()) / np.ptp(macs) + rng.normal(0, 0.003, len(archs))
    with (tmp_path / "acc.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["space", "key", "resolution", "top1", "arch"])
        for a, t in zip(archs, top1, strict=True):
            w.writerow(
                [
                    "compofa",
                    a.key(),
                    a.resolution,
                    f"{t:.5f}",
                    json.dumps(a.to_ofa(), separators=(",", ":")),
                ]
            )
    rc = main(
        [
            "predictor",
            "train",
            "--data",
            str(tmp_path / "acc.csv"),
            "--out",
            str(tmp_path / "p.pt"),
            "--hidden",
            "32,32",
            "--epochs",
            "25",
            "--batch-size",
            "32",
            "--json",
        ]
    )
    assert rc == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_val"] == round(0.2 * len(archs)) and info["val_kendall_tau"] > 0.5
    rc = main(
        [
            "search",
            "--space",
            "compofa",
            "--macs",
            "200",
            "--predictor",
            str(tmp_path / "p.pt"),
            "--out",
            str(tmp_path / "s"),
            "--json",
        ]
    )
    assert rc == 0
    item = json.loads(capsys.readouterr().out)[0]
    assert 0.5 < item["predicted_accuracy"] < 1.0
    assert item["arch"]["r"][0] in (128, 160)  # only resolutions the predictor knows


@pytest.mark.slow
def test_search_export_and_measure_on_cpu(tmp_path: Path) -> None:
    job = J.SearchJob(
        space="compofa",
        targets=(120.0,),
        out_dir=str(tmp_path),
        macs=True,
        accuracy_proxy="macs",
        resolutions=(96,),
        export="onnx",
        device="cpu-ort",
        store=str(tmp_path / "r.db"),
    )
    doc = J.run_search_job(job)
    item = doc["targets"][0]
    assert item["export"]["parity"]["ok"]
    assert item["measured_latency_ms"] > 0 and item["measured_device"] == "cpu-ort"
    assert Path(item["export"]["path"]).is_file()
