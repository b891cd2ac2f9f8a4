"""Recipes: the bundled schedules match the papers' tables; bad recipes name the field."""

from __future__ import annotations

import pytest

from compofa_bench.errors import TrainError
from compofa_bench.train import recipe as R


def _raw(**phase):
    base = {"name": "t", "space": "compofa", "resolutions": [32]}
    p = {"name": "p", "epochs": 1, "lr": 0.1, "space": "compofa", **phase}
    return {**base, "phase": [p]}


def test_every_bundled_recipe_loads():
    names = sorted(p.stem for p in R.trainers_dir().glob("*.toml"))
    assert {
        "teacher",
        "ofa-ps",
        "compofa",
        "compofa-ek",
        "fofa",
        "fofa-n4",
        "fofa-sandwich",
    } <= set(names)
    for n in names:
        r = R.load(n)
        assert r.phases


def test_ofa_progressive_shrinking_schedule():
    r = R.load("ofa-ps")
    got = [(p.name, p.epochs, p.subnets_per_step) for p in r.phases]
    # CompOFA Table 1a: teacher 180, kernel 120, depth 25 + 120, expand 25 + 120.
    assert [g[1] for g in got] == [180, 120, 25, 120, 25, 120]
    assert [g[2] for g in got] == [1, 1, 2, 2, 4, 4]
    kernel, d1, d2, e1, e2 = r.phases[1:]
    assert kernel.search_space(r.resolutions).depth_choices[0] == (4,)
    assert d1.search_space(r.resolutions).depth_choices[0] == (3, 4)
    assert d2.search_space(r.resolutions).depth_choices[0] == (2, 3, 4)
    assert e1.search_space(r.resolutions).expand_choices == (4, 6)
    assert e2.search_space(r.resolutions).expand_choices == (3, 4, 6)
    assert e1.reorganize and e2.reorganize and not d1.reorganize
    assert all(p.kd == "teacher" for p in r.phases[1:])


def test_compofa_schedule_is_one_compound_stage():
    r = R.load("compofa")
    teacher, c1, c2 = r.phases
    assert teacher.is_teacher and teacher.sampling == "largest"
    assert (c1.epochs, c2.epochs) == (25, 125)
    assert c1.subnets_per_step == c2.subnets_per_step == 4
    assert c1.search_space(r.resolutions).structure_count() == 243
    assert c1.kd == "teacher"
    largest = teacher.search_space(r.resolutions).largest(224)
    assert largest.d == (4,) * 5 and set(largest.e) == {6}
    assert set(largest.ks[:4]) == {3} and set(largest.ks[4:8]) == {5}  # fixed kernels


def test_fofa_variants():
    n3, n4, sw = R.load("fofa"), R.load("fofa-n4"), R.load("fofa-sandwich")
    for r, n, s in ((n3, 3, "upper-attentive"), (n4, 4, "upper-attentive"), (sw, 4, "sandwich")):
        warm, main = r.phases
        assert warm.sampling == "largest" and warm.kd == "none"
        assert (main.sampling, main.subnets_per_step, main.kd) == (s, n, "inplace")
        assert main.grad_clip == 1.0
        assert not any(p.is_teacher for p in r.phases)


def test_scale_multiplies_epochs_and_warmup():
    r = R.load("ofa-ps").scaled(0.01)
    assert r.phases[1].epochs == pytest.approx(1.2)
    assert r.phases[1].warmup_epochs == pytest.approx(0.05)
    with pytest.raises(TrainError, match="scale"):
        R.load("ofa-ps").scaled(0)


@pytest.mark.parametrize(
    ("phase", "field"),
    [
        ({"sampling": "random"}, "sampling"),
        ({"kd": "teacher", "kd_ratio": 1.0}, "kd 'teacher'"),
        ({"lr": -1}, "lr"),
        ({"epochs": "ten"}, "epochs"),
        ({"subnets": 3}, "unknown field"),
        ({"sampling": "upper-attentive", "subnets_per_step": 1}, "subnets_per_step"),
        ({"d": [7]}, "d: restriction"),
        ({"kd": "inplace", "kd_ratio": 1.0}, "inplace"),
    ],
)
def test_invalid_phase_is_reported_by_field(phase, field):
    with pytest.raises(TrainError, match=field):
        R.parse(_raw(**phase), "x.toml")


def test_invalid_top_level_fields():
    raw = _raw()
    with pytest.raises(TrainError, match="resolutions"):
        R.parse({**raw, "resolutions": [30]})
    with pytest.raises(TrainError, match="space"):
        R.parse({**raw, "space": "nope"})
    with pytest.raises(TrainError, match="missing field 'phase'"):
        R.parse({"name": "x", "space": "compofa"})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(TrainError, match="bundled recipes"):
        R.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(TrainError, match="not valid TOML"):
        R.load(bad)
