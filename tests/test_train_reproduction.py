"""The Fashion-MNIST reproduction (benchmarks/train_reproduction.py) and what it feeds: the
on-device data path, the rank mapping of a predictor's resolutions, and the demo's choice of
accuracy source. The smoke run is the script itself, as a process, at one step per phase."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compofa_bench import data, spaces
from compofa_bench import jobs as demo  # the demo lives in jobs.py (#16)
from compofa_bench import predictor as P
from compofa_bench.errors import PredictorError

ROOT = Path(__file__).resolve().parents[1]
needs_fmnist = pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


# =============================================================================== data on device


@needs_fmnist
def test_device_batches_split_by_rank_and_resume_like_one_process():
    ds = data.DeviceFashionMNIST(data.FASHION_MNIST_DIR, torch.device("cpu"))
    idx = data.subset_indices(len(ds), 64, seed=3)
    one = list(ds.batches(idx, 16, 0, 1, seed=3, epoch=2))
    assert len(one) == 4
    # Two ranks each take half of every global batch: together, exactly one process's batch.
    r0 = list(ds.batches(idx, 16, 0, 2, seed=3, epoch=2))
    r1 = list(ds.batches(idx, 16, 1, 2, seed=3, epoch=2))
    for (x, y), (x0, y0), (x1, y1) in zip(one, r0, r1, strict=True):
        torch.testing.assert_close(torch.cat([x0, x1]), x, rtol=0, atol=0)
        assert torch.equal(torch.cat([y0, y1]), y)
    # Starting at step 2 (a resume) gives the uninterrupted run's steps 2 and 3.
    late = list(ds.batches(idx, 16, 0, 1, seed=3, epoch=2, start_step=2))
    for (x, y), (xs, ys) in zip(one[2:], late, strict=True):
        assert torch.equal(x, xs) and torch.equal(y, ys)
    # Another epoch draws another order and other crops.
    other = next(iter(ds.batches(idx, 16, 0, 1, seed=3, epoch=3)))
    assert not torch.equal(other[0], one[0][0])


@needs_fmnist
def test_device_batches_are_padded_crops_or_mirror_images_of_the_originals():
    ds = data.DeviceFashionMNIST(data.FASHION_MNIST_DIR, torch.device("cpu"))
    plain = data.FashionMNIST(data.FASHION_MNIST_DIR, "train", train_augment=False)
    x, y = next(iter(ds.batches(np.arange(32), 32, 0, 1, seed=0, epoch=0)))
    assert x.shape == (32, 3, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    order = np.random.default_rng([0, 0]).permutation(32)
    flips = 0
    for b in range(32):
        img, label = plain[int(order[b])]
        assert int(y[b]) == label
        padded = torch.nn.functional.pad(img[0], (2, 2, 2, 2))
        crops = [padded[dy : dy + 28, dx : dx + 28] for dy in range(5) for dx in range(5)]
        if any(torch.equal(x[b, 0], c) for c in crops):
            continue
        assert any(torch.equal(x[b, 0], c.flip(-1)) for c in crops), b
        flips += 1
    assert 0 < flips < 32  # both kinds occur


@needs_fmnist
def test_data_accepts_a_folder_holding_the_four_files(tmp_path):
    for f in data.FASHION_MNIST_DIR.glob("*.gz"):
        (tmp_path / f.name).symlink_to(f)
    spec = data.resolve(str(tmp_path))
    assert (spec.kind, spec.root, spec.n_classes) == ("fashion-mnist", tmp_path, 10)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(Exception, match="train/"):  # no longer Fashion-MNIST: an ImageFolder?
        data.resolve(str(tmp_path))


# =============================================================================== predictor


def _tiny_predictor(resolutions: tuple[int, ...] = (32, 40)) -> P.AccuracyPredictor:
    """A predictor really trained on a handful of archs whose accuracy grows with MACs."""
    from compofa_bench import supernet

    sp = spaces.get("compofa", resolutions)
    structs = sp.with_resolutions([resolutions[0]]).sample_many(12, np.random.default_rng(0))
    archs = tuple(a.with_resolution(r) for a in structs for r in resolutions)
    macs = np.array([supernet.count_macs(a, n_classes=10) for a in archs], dtype=float)
    top1 = 0.80 + 0.1 * (macs - macs.min()) / (macs.max() - macs.min())
    return P.train_predictor(
        P.AccuracyData(sp, archs, top1), P.TrainConfig(max_epochs=40, hidden=(32,))
    )


def test_predictor_maps_unknown_resolutions_by_rank():
    pred = _tiny_predictor()
    assert P.map_resolutions(pred, (32, 40)) is pred  # nothing to map
    mapped = P.map_resolutions(pred, (224, 160))
    assert mapped.mapping == {160: 32, 224: 40}
    assert "160->32" in mapped.label and "224->40" in mapped.label
    sp = spaces.get("compofa", (160,))
    structs = sp.sample_many(5, np.random.default_rng(1))
    for demo_r, pred_r in ((160, 32), (224, 40)):
        got = mapped.predict([a.with_resolution(demo_r) for a in structs])
        want = pred.predict([a.with_resolution(pred_r) for a in structs])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(PredictorError, match="192"):
        mapped.predict([structs[0].with_resolution(192)])
    # Three search sizes on two trained ones: the ends map to the ends.
    three = P.map_resolutions(pred, (128, 160, 224))
    assert three.mapping[128] == 32 and three.mapping[224] == 40


def test_search_at_demo_resolutions_with_a_low_resolution_predictor(tmp_path):
    from compofa_bench.export import SubnetSource
    from compofa_bench.jobs import SearchJob, run_search_job

    path = _tiny_predictor().save(tmp_path / "p.pt")
    job = SearchJob(
        space="compofa",
        targets=(150.0, 400.0),
        out_dir=str(tmp_path / "search"),
        macs=True,
        predictor=str(path),
        resolutions=(160, 224),
        map_predictor_resolutions=True,
        source=SubnetSource(n_classes=10),
    )
    doc = run_search_job(job)
    assert "resolution by rank (160->32, 224->40 px)" in doc["accuracy_source"]
    assert not doc["accuracy_is_proxy"]
    for t in doc["targets"]:
        assert t["feasible"] and t["arch"]["r"][0] in (160, 224)
        assert t["mmacs"] <= t["target_mmacs"]
    # Without the mapping the predictor cannot score 160/224 px at all.
    with pytest.raises(Exception, match="resolution"):
        run_search_job(
            SearchJob(
                space="compofa", targets=(150.0,), out_dir=str(tmp_path / "s2"), macs=True,
                predictor=str(path), resolutions=(160, 224), source=SubnetSource(n_classes=10),
            )
        )  # fmt: skip


def test_demo_accuracy_source_never_ranks_by_a_placeholder(tmp_path, monkeypatch):
    pred = _tiny_predictor()
    real = tmp_path / "real.pt"
    pred.save(real)
    pred.info["placeholder"] = True
    fake = tmp_path / "placeholder.pt"
    pred.save(fake)

    monkeypatch.setattr(demo, "SHIPPED_PREDICTOR", real)
    path, proxy, note = demo.accuracy_source(demo.DemoConfig())
    assert (path, proxy) == (str(real), None)
    assert "Fashion-MNIST top-1" in note and "rank order" in note
    # Asked for MACs: MACs, even with a predictor shipped.
    assert demo.accuracy_source(demo.DemoConfig(accuracy_proxy="macs"))[:2] == (None, "macs")
    assert demo.accuracy_source(demo.DemoConfig(predictor="x.pt"))[:2] == ("x.pt", None)

    monkeypatch.setattr(demo, "SHIPPED_PREDICTOR", fake)
    path, proxy, note = demo.accuracy_source(demo.DemoConfig())
    assert (path, proxy) == (None, "macs") and "placeholder" in note
    monkeypatch.setattr(demo, "SHIPPED_PREDICTOR", tmp_path / "missing.pt")
    assert demo.accuracy_source(demo.DemoConfig())[:2] == (None, "macs")


def test_the_shipped_predictor_is_a_trained_one_and_the_demo_ranks_by_it():
    # predictors/fashion-mnist/ holds the CPU reproduction's predictor (not a placeholder):
    # the demo's default accuracy source is it, over every CompOFA subnet it was trained on.
    pred = P.load(demo.SHIPPED_PREDICTOR)
    assert not pred.info.get("placeholder")
    rows = P.read_acc_csv(demo.SHIPPED_PREDICTOR.with_name("acc.csv"))
    assert len({a.key() for a in rows.archs}) == 2 * spaces.get("compofa").structure_count()
    path, proxy, note = demo.accuracy_source(demo.DemoConfig())
    assert (path, proxy) == (str(demo.SHIPPED_PREDICTOR), None)
    assert "Fashion-MNIST top-1" in note


# =============================================================================== the smoke run


@needs_fmnist
@pytest.mark.slow
def test_reproduction_smoke_run_writes_every_output(tmp_path):
    out = tmp_path / "repro"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "train_reproduction.py"), "--smoke",
         "--device", "cpu", "--out", str(out), "--eval-others", "2"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PLAN: scale s =" in proc.stdout  # the plan comes first

    summary = json.loads((out / "summary.json").read_text())
    names = ["teacher", "ofa-ps", "compofa", "fofa", "compofa-same"]
    assert list(summary["methods"]) == names
    for name in names:
        rows = P.read_acc_csv(out / "runs" / name / "acc.csv")
        # The teacher: OFA's largest net at 32 and 40 px; compofa (the predictor's source): 3
        # subnets x 2 sizes; the other supernets: --eval-others 2 subnets x 2 sizes.
        assert len(rows.archs) == {"teacher": 2, "compofa": 6}.get(name, 4)
        assert sorted({a.resolution for a in rows.archs}) == [32, 40]
        assert ((rows.top1 >= 0) & (rows.top1 <= 1)).all()
        m = summary["methods"][name]
        assert m["steps"] == len(m["phases"]) and m["images_seen"] == 16 * m["steps"]
        metrics = [json.loads(x) for x in (out / "runs" / name / "metrics.jsonl").open()]
        assert metrics and all(0 <= r["acc"] <= 1 for r in metrics)
    # ofa-ps and compofa-same train from the given teachers: no teacher phase of their own.
    assert summary["methods"]["ofa-ps"]["phases"][0]["phase"] == "kernel"
    assert summary["methods"]["compofa-same"]["phases"][0]["phase"] == "compound-1"

    claims = json.loads((out / "claims.json").read_text())
    assert [c["method"] for c in claims["claims"]] == ["compofa", "compofa-same", "fofa"]
    assert all(isinstance(c["holds"], bool) for c in claims["claims"])
    md = (out / "claims.md").read_text()
    assert "| compofa vs ofa-ps |" in md and "## Accuracy predictor and search" in md
    for png in ("acc_vs_macs.png", "pareto.png", "train_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    pred = P.load(out / "predictor" / "predictor.pt")
    assert pred.info["placeholder"] is True and "PLACEHOLDER" in pred.label
    searched = json.loads((out / "predictor" / "searched_vs_front.json").read_text())
    assert searched["targets"] and searched["n_val"] >= 1


# =============================================================================== train CLI


TINY_RECIPE = """
name = "tiny"
space = "compofa"
resolutions = [32]
batch_size = 4
reference_batch_size = 4
seed = 5

[[phase]]
name = "teacher"
is_teacher = true
space = "compofa"
sampling = "largest"
epochs = 1
lr = 0.01

[[phase]]
name = "compound"
space = "compofa"
subnets_per_step = 2
epochs = 1
lr = 0.01
kd = "teacher"
kd_ratio = 1.0
"""


@needs_fmnist
def test_train_cli_on_device_data_logs_accuracy_and_plots_curves(tmp_path):
    from compofa_bench.cli import main

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    out = tmp_path / "run"
    args = ["train", "--recipe", str(recipe), "--data", "fashion-mnist", "--out", str(out),
            "--subset", "8", "--device", "cpu", "--data-on-device", "--log-every", "1",
            "--quiet"]  # fmt: skip
    torch.set_num_threads(1)
    assert main(args) == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").open()]
    assert [r["phase"] for r in rows] == ["teacher"] * 2 + ["compound"] * 2
    assert all(r["acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) for r in rows)  # 4-image batches
    assert (out / "train_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "final.pt").is_file()

    # The demo's --checkpoint: export takes the trained supernet's weights.
    from compofa_bench.errors import ExportError
    from compofa_bench.export import SubnetBuilder, SubnetSource

    state = torch.load(out / "final.pt", weights_only=True)["model"]
    net = SubnetBuilder(SubnetSource(checkpoint=str(out / "final.pt"), n_classes=10)).supernet()
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    with pytest.raises(ExportError, match="10 classes"):
        SubnetBuilder(SubnetSource(checkpoint=str(out / "final.pt"))).supernet()
