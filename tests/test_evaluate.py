"""evaluate: acc.csv rows per arch and resolution, resumable, feeding the predictor."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from compofa_bench import data, spaces
from compofa_bench.cli import main
from compofa_bench.errors import DataError
from compofa_bench.train import checkpoint as ckpt
from compofa_bench.train import recipe as R
from compofa_bench.train.evaluate import HEADER, EvalConfig, evaluate, select_archs
from compofa_bench.train.trainer import CHECKPOINT, TrainConfig, Trainer

pytestmark = pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint after two real training steps on Fashion-MNIST."""
    out = tmp_path_factory.mktemp("run")
    recipe = R.parse(
        {
            "name": "t",
            "space": "compofa",
            "resolutions": [32],
            "batch_size": 16,
            "reference_batch_size": 16,
            "phase": [
                {
                    "name": "p",
                    "space": "compofa",
                    "sampling": "sandwich",
                    "subnets_per_step": 2,
                    "epochs": 1,
                    "lr": 0.05,
                }
            ],
        }
    )
    Trainer(
        recipe,
        TrainConfig(
            data="fashion-mnist", out=out, subset=64, device="cpu", quiet=True, max_steps=2
        ),
    ).run()
    return out / CHECKPOINT


CFG = EvalConfig(data="fashion-mnist", val_subset=64, calib_images=32, batch_size=32, device="cpu")


def test_rows_and_resume(trained, tmp_path):
    space = spaces.get("compofa")
    archs = select_archs(space, (32, 40), sample=2, seed=0)
    assert len(archs) == 4 and {a.resolution for a in archs} == {32, 40}
    out = tmp_path / "acc.csv"
    rows = evaluate(trained, space, archs, CFG, out)
    with open(out, newline="") as fh:
        table = list(csv.reader(fh))
    assert tuple(table[0]) == HEADER
    assert len(table) == 5
    for (sp, key, res, top1, arch_json), row in zip(table[1:], rows, strict=True):
        arch = space.validate(spaces.Arch.from_ofa(json.loads(arch_json)), check_resolution=False)
        assert sp == "compofa" and key == arch.key() == row.arch.key()
        assert int(res) == arch.resolution
        assert 0.0 <= float(top1) <= 1.0
        # 64 validation images: top1 is a multiple of 1/64.
        assert float(top1) * 64 == pytest.approx(round(float(top1) * 64), abs=1e-3)

    # A rerun keeps existing rows; only new resolutions are computed.
    before = out.read_text()
    events = []
    more = archs + [a.with_resolution(48) for a in archs[:2]]
    evaluate(trained, space, more, CFG, out, on_item=lambda r, skipped: events.append(skipped))
    assert events == [True] * 4 + [False] * 2
    assert out.read_text().startswith(before)
    assert len(out.read_text().splitlines()) == 7


def test_wrong_class_count_is_refused(trained, tmp_path):
    state = ckpt.load(trained)
    state["n_classes"] = 5
    bad = tmp_path / "bad.pt"
    ckpt.save_atomic(state, bad)
    space = spaces.get("compofa")
    with pytest.raises(DataError, match="5 classes"):
        evaluate(bad, space, [space.largest(32)], CFG, tmp_path / "a.csv")


def test_arch_column_round_trips_for_the_predictor(trained, tmp_path):
    # The arch column round-trips through Arch.from_ofa: it is what `predictor train` reads.
    space = spaces.get("compofa")
    out = tmp_path / "acc.csv"
    evaluate(trained, space, [space.smallest(32), space.largest(32)], CFG, out)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    parsed = [spaces.Arch.from_ofa(json.loads(r["arch"])) for r in rows]
    assert [p.key() for p in parsed] == [r["key"] for r in rows]
    assert np.all([0 <= float(r["top1"]) <= 1 for r in rows])


def test_cli_errors_are_one_line(tmp_path, capsys, trained):
    rc = main(
        [
            "evaluate",
            "--checkpoint",
            str(trained),
            "--space",
            "ofa",
            "--archs",
            "all",
            "--data",
            "fashion-mnist",
            "--out",
            str(tmp_path / "a.csv"),
        ]
    )
    assert rc == 2
    assert "use --sample" in capsys.readouterr().err
    rc = main(
        [
            "train",
            "--recipe",
            str(tmp_path / "missing.toml"),
            "--data",
            "fashion-mnist",
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: recipe") and len(err.strip().splitlines()) == 1
    rc = main(
        [
            "train",
            "--recipe",
            "compofa",
            "--data",
            str(tmp_path / "nodata"),
            "--out",
            str(tmp_path / "r"),
        ]
    )
    assert rc == 2
    assert "ImageFolder" in capsys.readouterr().err


def test_checkpoint_is_loadable_supernet(trained):
    from compofa_bench import supernet

    state = ckpt.load(trained)
    net = supernet.build(n_classes=state["n_classes"])
    net.load_state_dict(state["model"])
    net.set_active(spaces.get("compofa").largest(32))
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
