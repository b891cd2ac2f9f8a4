"""Accuracy predictor: OFA parity, the general encoder, training, file round trips."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _ofa_compare import ofa_tutorial

from compofa_bench import predictor, spaces
from compofa_bench.encoding import Encoder
from compofa_bench.errors import PredictorError
from compofa_bench.ranking import kendall_tau_b

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
OFA_PTH = REFERENCE / "compofa" / "acc_predictor.pth"
needs_pth = pytest.mark.skipif(not OFA_PTH.is_file(), reason="shared reference data absent")


def _ofa_reference_predictor():
    mod = ofa_tutorial("accuracy_predictor")
    # pretrained=False skips OFA's download; the weights come from the local reference file.
    ref = mod.AccuracyPredictor(pretrained=False, device="cpu")
    ref.model.load_state_dict(torch.load(OFA_PTH, map_location="cpu", weights_only=True))
    return mod, ref


@needs_pth
def test_ofa_predictor_matches_ofa_package() -> None:
    ours = predictor.load(OFA_PTH)
    _, ref = _ofa_reference_predictor()
    space = spaces.get("ofa", [128, 144, 160, 176, 192, 208, 224, 236])
    archs = space.sample_many(400, np.random.default_rng(1))
    archs += [space.smallest(128), space.largest(224)]
    got = ours.predict(archs)
    want = ref.predict_accuracy([a.to_ofa() for a in archs]).squeeze(1).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert got.std() > 0.005  # the archs really differ, so the comparison means something


@needs_pth
def test_ofa_encoding_matches_spec2feats() -> None:
    mod, _ = _ofa_reference_predictor()
    space = spaces.get("compofa-ek", [160, 224])
    archs = space.sample_many(50, np.random.default_rng(2))
    ours = Encoder.ofa().encode(archs)
    for arch, row in zip(archs, ours, strict=True):
        spec = arch.to_ofa()
        want = mod.AccuracyPredictor.spec2feats(spec["ks"], spec["e"], spec["d"], spec["r"][0])
        np.testing.assert_array_equal(row, want.numpy())


def test_general_encoder_layout_and_inactive_slots() -> None:
    space = spaces.get("compofa", [160, 192, 224])
    enc = Encoder.for_space(space)
    assert enc.kernels == (3, 5) and enc.expands == (3, 4, 6) and enc.resolutions == (160, 192, 224)
    assert enc.dim == 20 * (2 + 3) + 3
    x = enc.encode([space.smallest(160), space.largest(224)])
    # every stage of the smallest has depth 2: 10 active slots, each with one kernel and one
    # expand bit, plus one resolution bit
    assert x[0].sum() == 10 * 2 + 1 and x[1].sum() == 20 * 2 + 1
    assert x[0, -3] == 1 and x[1, -1] == 1


def test_encoder_rejects_unknown_values() -> None:
    enc = Encoder.for_space(spaces.get("compofa", [160, 224]))
    with pytest.raises(PredictorError, match="resolution 192"):
        enc.encode([spaces.get("compofa").largest(192)])
    with pytest.raises(PredictorError, match="kernel 7"):
        enc.encode([spaces.get("ofa").largest(160)])
    with pytest.raises(PredictorError, match="outside OFA"):
        Encoder.ofa().encode([spaces.get("ofa").largest(96)])


def _write_acc_csv(path: Path, space: spaces.SearchSpace, archs, top1) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(predictor.ACC_CSV_HEADER)
        for a, t in zip(archs, top1, strict=True):
            w.writerow(
                [
                    space.name,
                    a.key(),
                    a.resolution,
                    f"{t:.6f}",
                    json.dumps(a.to_ofa(), separators=(",", ":")),
                ]
            )


def _synthetic_top1(archs, rng: np.random.Generator) -> np.ndarray:
    """An accuracy that grows with depth, expand ratio and resolution, plus noise."""
    d = np.array([sum(a.d) for a in archs], dtype=float)
    e = np.array([sum(a.e[s] for _, s, _ in a.active_layers()) for a in archs], dtype=float)
    r = np.array([a.resolution for a in archs], dtype=float)
    return 0.5 + 0.008 * d + 0.002 * e + 0.0006 * (r - 128) + rng.normal(0, 0.002, len(archs))


def test_train_save_load_roundtrip(tmp_path: Path) -> None:
    space = spaces.get("compofa-ek", [128, 160, 192, 224])
    rng = np.random.default_rng(3)
    archs = space.sample_many(300, rng)
    top1 = _synthetic_top1(archs, rng)
    csv_path = tmp_path / "acc.csv"
    _write_acc_csv(csv_path, space, archs, top1)
    data = predictor.read_acc_csv(csv_path)
    assert data.space.name == "compofa-ek" and len(data.archs) == 300
    cfg = predictor.TrainConfig(hidden=(48, 48), max_epochs=40, patience=10, seed=7)
    p = predictor.train_predictor(data, cfg)
    assert p.info["n_val"] == 60 and p.info["n_train"] == 240
    assert p.info["val_kendall_tau"] > 0.6  # a broken trainer ranks at random (tau ~ 0)
    assert p.info["val_rmse"] < np.std(top1)  # better than predicting the mean
    # seeded: the same config gives the same weights
    again = predictor.train_predictor(data, cfg)
    probe = space.sample_many(20, np.random.default_rng(9))
    np.testing.assert_array_equal(p.predict(probe), again.predict(probe))
    out = p.save(tmp_path / "pred.pt")
    loaded = predictor.load(out)
    np.testing.assert_array_equal(loaded.predict(probe), p.predict(probe))
    assert loaded.info["val_rmse"] == p.info["val_rmse"]
    assert loaded.encoder == p.encoder


def test_read_acc_csv_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("space,key,top1\ncompofa,x,0.7\n")
    with pytest.raises(PredictorError, match="missing column"):
        predictor.read_acc_csv(bad)
    space = spaces.get("compofa")
    pct = tmp_path / "pct.csv"
    _write_acc_csv(pct, space, [space.largest(224)], [76.1])
    with pytest.raises(PredictorError, match="fraction"):
        predictor.read_acc_csv(pct)
    with pytest.raises(PredictorError, match="does not exist"):
        predictor.read_acc_csv(tmp_path / "nope.csv")


def test_load_rejects_foreign_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(PredictorError):
        predictor.load(junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"0.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(PredictorError, match="does not fit"):
        predictor.load(wrong)


def test_kendall_tau() -> None:
    a = np.arange(10.0)
    assert kendall_tau_b(a, a) == pytest.approx(1.0)
    assert kendall_tau_b(a, -a) == pytest.approx(-1.0)
    b = a.copy()
    b[[0, 1]] = b[[1, 0]]  # one discordant pair of 45
    assert kendall_tau_b(a, b) == pytest.approx(43 / 45)
