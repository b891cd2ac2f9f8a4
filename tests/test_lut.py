"""Latency lookup tables: keys, format, prediction against OFA's own estimator, import/export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from _ofa_compare import ofa_tutorial

from compofa_bench import search as S
from compofa_bench import sources, spaces
from compofa_bench.cli import main
from compofa_bench.errors import LutError
from compofa_bench.lut import (
    Calibration,
    LatencyTable,
    LutEntry,
    export_ofa_dir,
    import_ofa_dir,
)
from compofa_bench.lut import validate as V
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.validate import fit_calibration, metrics

NOTE10 = "compofa/latency_table@note10"


def _ofa_estimator(yaml_path: Path):
    """OFA's LatencyEstimator over a local file. Its constructor calls yaml.load without a
    Loader, which PyYAML 6 rejects, so the table is patched in instead."""
    est = object.__new__(ofa_tutorial("latency_table").LatencyEstimator)
    with open(yaml_path) as fh:
        est.lut = yaml.safe_load(fh)
    return est


@pytest.fixture(scope="module")
def note10_dir(reference_dir: Path) -> Path:
    d = reference_dir / NOTE10
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    return d


@pytest.fixture(scope="module")
def note10(note10_dir: Path) -> LatencyTable:
    return import_ofa_dir(note10_dir, width_mult=1.2)


# ------------------------------------------------------------------------- against OFA


def test_import_predicts_exactly_what_ofa_predicts(note10: LatencyTable, note10_dir: Path):
    rng = np.random.default_rng(123)
    resolutions = (160, 176, 188, 208, 220, 224)
    space = spaces.get("ofa", resolutions)
    archs = space.sample_many(600, rng)
    ours = note10.predict_ms(archs)
    estimators = {r: _ofa_estimator(note10_dir / f"{r}_lookup_table.yaml") for r in resolutions}
    theirs = np.array(
        [estimators[a.resolution].predict_network_latency_given_spec(a.to_ofa()) for a in archs]
    )
    assert {a.resolution for a in archs} == set(resolutions)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)
    # Archs differ, so the comparison is not between constants.
    assert np.std(theirs) > 1.0


def test_breakdown_keys_are_the_ones_ofa_queries(note10: LatencyTable, note10_dir: Path):
    """Every key our geometry derives is one OFA's estimator reads from the file, for every
    layer kind, and the breakdown sums to the vectorized prediction."""
    est = _ofa_estimator(note10_dir / "200_lookup_table.yaml")
    queried: list[str] = []
    real_lut = est.lut

    class Recorder(dict):
        def __getitem__(self, key):
            queried.append(key)
            return real_lut[key]

    est.lut = Recorder()
    arch = spaces.get("ofa", [200]).largest()
    est.predict_network_latency_given_spec(arch.to_ofa())
    breakdown = note10.predict_breakdown(arch)
    assert [k for k, _ in breakdown] == queried
    assert {k.split("-")[0] for k in queried} == {
        "Conv",
        "expanded_conv",
        "Conv_1",
        "AvgPool2D",
        "Conv_2",
        "Logits",
    }
    assert math.isclose(
        sum(v for _, v in breakdown), float(note10.predict_ms(arch)[0]), rel_tol=1e-12
    )


def test_compofa_space_fully_covered_by_note10(note10: LatencyTable):
    space = spaces.get("compofa", [160, 192, 224])
    archs = list(space.enumerate())
    assert note10.missing_keys(archs) == []
    assert np.all(np.isfinite(note10.predict_ms(archs)))


# ------------------------------------------------------------------------- formats


def test_ofa_yaml_round_trip_is_lossless(note10: LatencyTable, note10_dir: Path, tmp_path):
    export_ofa_dir(note10, tmp_path / "yaml")
    again = import_ofa_dir(tmp_path / "yaml", width_mult=1.2)
    assert again.entries == note10.entries
    # And the exported files read as the originals do, bit for bit.
    for r in (160, 224):
        with (
            open(note10_dir / f"{r}_lookup_table.yaml") as a,
            open(tmp_path / "yaml" / f"{r}_lookup_table.yaml") as b,
        ):
            assert yaml.safe_load(a) == yaml.safe_load(b)


def test_json_round_trip_keeps_entries_provenance_and_calibration(note10, tmp_path):
    cal = Calibration(overhead_ms=1.5, scale=0.9, fitted_on=10, validation={"rmspe": 0.02})
    table = note10.with_calibration(cal)
    table.provenance["device"] = "note10"
    path = table.save(tmp_path / "t.json")
    loaded = LatencyTable.load(path)
    assert loaded.entries == table.entries
    assert loaded.provenance == table.provenance
    assert loaded.calibration == cal
    assert (loaded.width_mult, loaded.statistic, loaded.base) == (1.2, "mean", "mbv3")
    arch = spaces.get("compofa", [224]).largest()
    raw = float(note10.predict_ms(arch)[0])
    assert float(loaded.predict_ms(arch)[0]) == pytest.approx(1.5 + 0.9 * raw, rel=1e-12)
    assert float(loaded.predict_ms(arch, calibrated=False)[0]) == pytest.approx(raw, rel=1e-12)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ('{"format": "something-else"}', "not a compofa-bench latency table"),
        ('{"format": "compofa-bench-latency-table", "version": 99}', "version"),
        (
            '{"format": "compofa-bench-latency-table", "version": 1, "base": "mbv3", '
            '"width_mult": 1.0, "entries": {"224": {"Conv-x": {"count": 1}}}}',
            "mean_ms",
        ),
        (
            '{"format": "compofa-bench-latency-table", "version": 1, "base": "vgg", '
            '"width_mult": 1.0, "entries": {"224": {}}}',
            "no latency-table layout",
        ),
    ],
)
def test_malformed_table_files_raise_lut_error(tmp_path, content, message):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(LutError, match=message):
        LatencyTable.load(p)


def test_missing_file_raises_lut_error(tmp_path):
    with pytest.raises(LutError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope.json")


# ------------------------------------------------------------------------- refusals


def test_missing_layer_is_refused_with_its_key(note10: LatencyTable):
    arch = spaces.get("compofa", [192]).largest()
    keys = note10.keys(arch)
    victim = keys[7]
    entries = {r: dict(e) for r, e in note10.entries.items()}
    del entries[192][victim]
    holey = LatencyTable(base="mbv3", width_mult=1.2, entries=entries, statistic="mean")
    with pytest.raises(LutError, match="lacks 1 layer key") as exc:
        holey.predict_ms([spaces.get("compofa", [160]).largest(), arch])
    assert victim in str(exc.value)
    with pytest.raises(LutError, match="lacks 1 layer key"):
        holey.predict_breakdown(arch)
    assert holey.missing_keys([arch]) == [victim]
    # An arch that does not use the missing layer still predicts.
    other = spaces.get("compofa", [192]).smallest()
    assert victim not in note10.keys(other)
    assert np.isfinite(holey.predict_ms([other])[0])


def test_unknown_resolution_is_refused_naming_it(note10: LatencyTable):
    arch = spaces.get("compofa", [128]).largest()
    with pytest.raises(LutError, match=r"resolution\(s\) \[128\] not in the table"):
        note10.predict_ms([arch])


def test_width_mismatch_is_refused_unless_allowed(note10: LatencyTable):
    archs = spaces.get("compofa", [224]).sample_many(20, np.random.default_rng(1))
    with pytest.raises(LutError, match=r"width multiplier 1\.2"):
        note10.predict_ms(archs, width_mult=1.0)
    with pytest.raises(LutError, match=r"width multiplier 1\.2"):
        note10.predict_breakdown(archs[0], width_mult=1.0)
    forced = note10.predict_ms(archs, width_mult=1.0, allow_width_mismatch=True)
    np.testing.assert_array_equal(forced, note10.predict_ms(archs, width_mult=1.2))


# ------------------------------------------------------------------------- vectorization


def _synthetic_table(space: spaces.SearchSpace, width: float, seed: int) -> LatencyTable:
    """A table with a random value for every layer the space can run."""
    rng = np.random.default_rng(seed)
    layers = unique_layers(space, width_mult=width)
    entries = {
        r: {
            k: LutEntry(
                count=5,
                mean_ms=float(rng.uniform(0.1, 3)),
                std_ms=0.01,
                median_ms=float(rng.uniform(0.1, 3)),
            )
            for k in keyed
        }
        for r, keyed in layers.items()
    }
    return LatencyTable(base="mbv3", width_mult=width, entries=entries, statistic="median")


@pytest.mark.parametrize("space_name", ["ofa", "compofa", "compofa-ek"])
def test_vectorized_equals_per_arch_sum(space_name):
    space = spaces.get(space_name, [128, 172, 224])
    table = _synthetic_table(space, 1.0, seed=7)
    archs = space.sample_many(300, np.random.default_rng(3))
    fast = table.predict_ms(archs)
    slow = np.array([sum(v for _, v in table.predict_breakdown(a)) for a in archs])
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    # The median is what a built table sums.
    a = archs[0]
    assert fast[0] == pytest.approx(
        sum(table.entries[a.resolution][k].median_ms for k in table.keys(a)), rel=1e-12
    )


def test_unique_layers_cover_exactly_the_layers_of_every_compofa_arch():
    space = spaces.get("compofa", [160, 224])
    layers = unique_layers(space, width_mult=1.0)
    table = _synthetic_table(space, 1.0, seed=0)
    seen: dict[int, set[str]] = {r: set() for r in space.resolutions}
    for arch in space.enumerate():
        seen[arch.resolution].update(table.keys(arch))
    assert {r: set(v) for r, v in layers.items()} == seen


# ------------------------------------------------------------------------- CLI


def test_cli_import_export_predict(note10_dir: Path, tmp_path, capsys):
    out = tmp_path / "n10.json"
    assert (
        main(["lut", "import-ofa", str(note10_dir), "--width-mult", "1.2", "--out", str(out)]) == 0
    )
    assert main(["lut", "export-ofa", "--lut", str(out), "--out", str(tmp_path / "y")]) == 0
    assert len(list((tmp_path / "y").glob("*_lookup_table.yaml"))) == 17
    arch = spaces.get("ofa", [208]).sample(np.random.default_rng(5))
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_ofa()))
    capsys.readouterr()
    assert main(["lut", "predict", "--lut", str(out), str(arch_file), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    expected = _ofa_estimator(note10_dir / "208_lookup_table.yaml")
    assert got["latency_ms"] == pytest.approx(
        expected.predict_network_latency_given_spec(arch.to_ofa()), rel=1e-12
    )
    assert len(got["layers"]) == 2 + sum(arch.d) + 4
    # A width other than the table's: one-line error, exit 2; the override works.
    assert main(["lut", "predict", "--lut", str(out), str(arch_file), "--width-mult", "1.0"]) == 2
    assert "error: the table was measured for width multiplier 1.2" in capsys.readouterr().err
    assert (
        main(
            [
                "lut",
                "predict",
                "--lut",
                str(out),
                str(arch_file),
                "--width-mult",
                "1.0",
                "--allow-width-mismatch",
                "--json",
            ]
        )
        == 0
    )


def test_cli_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["lut", "show", "--lut", str(tmp_path / "missing.json")]) == 2
    assert capsys.readouterr().err.startswith("error: latency table")
    assert (
        main(
            [
                "lut",
                "import-ofa",
                str(tmp_path),
                "--width-mult",
                "1.0",
                "--out",
                str(tmp_path / "x.json"),
            ]
        )
        == 2
    )
    assert "no <R>_lookup_table.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------------- calibration


def _per_resolution_data(n_per_res: int, seed: int):
    """Layer sums at 4 resolutions and 'measurements' made with known per-resolution scales,
    a shared overhead, and 0.5% multiplicative noise."""
    rng = np.random.default_rng(seed)
    scales = {160: 0.84, 176: 0.89, 192: 0.91, 224: 1.06}
    r = np.repeat(list(scales), n_per_res)
    rng.shuffle(r)
    p = rng.uniform(4, 40, size=r.size)
    truth = 0.6 + np.array([scales[x] for x in r]) * p
    return p, truth * (1 + rng.normal(scale=0.005, size=r.size)), r, scales


def test_fit_recovers_known_per_resolution_scales():
    p, m, r, scales = _per_resolution_data(40, seed=11)
    cal = fit_calibration(p, m, r)
    assert cal.form == "per-resolution" and cal.fitted_on == len(p)
    assert set(cal.scale_by_resolution) == set(scales)
    for res, s in scales.items():
        assert cal.scale_by_resolution[res] == pytest.approx(s, rel=0.01)
    assert cal.overhead_ms == pytest.approx(0.6, abs=0.15)
    # Per-resolution beats the global form on data with a per-resolution bias.
    o, s = fit_calibration(p, m)
    per_res = metrics(cal.apply(p, r), m)["rmspe"]
    assert per_res < 0.01 < metrics(o + s * p, m)["rmspe"]
    # The fallback scale (resolutions the fit did not see) is a pooled one, between the ends.
    assert min(scales.values()) < cal.scale < max(scales.values())
    assert cal.scale_for(208) == cal.scale


def test_fit_falls_back_to_global_when_a_resolution_has_one_arch():
    p, m, r, _ = _per_resolution_data(5, seed=12)
    keep = np.ones(len(r), dtype=bool)
    keep[np.flatnonzero(r == 176)[1:]] = False  # one arch left at 176
    cal = fit_calibration(p[keep], m[keep], r[keep])
    assert cal.form == "global" and cal.scale_by_resolution == {}
    assert (cal.overhead_ms, cal.scale) == pytest.approx(fit_calibration(p[keep], m[keep]))
    # Two archs at every resolution suffice for the per-resolution form.
    two = np.concatenate([np.flatnonzero(r == x)[:2] for x in (160, 176, 192, 224)])
    assert fit_calibration(p[two], m[two], r[two]).form == "per-resolution"
    with pytest.raises(LutError, match="at least 3"):
        fit_calibration(p[:2], m[:2], r[:2])
    with pytest.raises(LutError, match="one resolution per arch"):
        fit_calibration(p, m, r[:-1])


def test_per_resolution_calibration_needs_resolutions_to_apply():
    cal = Calibration(0.5, 1.0, 8, scale_by_resolution={160: 0.8, 224: 1.1})
    np.testing.assert_allclose(cal.apply(np.array([10.0, 10.0, 10.0]), [160, 224, 192]),
                               [8.5, 11.5, 10.5])  # fmt: skip
    with pytest.raises(LutError, match="resolutions"):
        cal.apply(np.array([10.0]))
    # The global form applies without them, as before.
    assert Calibration(0.5, 2.0, 8).apply(np.array([3.0]))[0] == 6.5


def test_old_table_file_with_a_single_scale_loads_and_predicts_as_before(tmp_path):
    space = spaces.get("compofa", [160, 224])
    table = _synthetic_table(space, 1.0, seed=4)
    raw = table.to_json()
    # the calibration block exactly as tables were written before per-resolution scales
    raw["calibration"] = {"overhead_ms": 0.4, "scale": 1.02, "fitted_on": 40,
                          "validation": {"n": 100, "rmspe": 0.03}}  # fmt: skip
    path = tmp_path / "old.json"
    path.write_text(json.dumps(raw))
    old = LatencyTable.load(path)
    assert old.calibration.form == "global" and old.calibration.scale_by_resolution == {}
    archs = space.sample_many(50, np.random.default_rng(2))
    sums = table.predict_ms(archs)
    np.testing.assert_allclose(old.predict_ms(archs), 0.4 + 1.02 * sums, rtol=1e-12)
    assert "scale_by_resolution" in old.to_json()["calibration"]


def test_per_resolution_calibration_json_round_trip_and_prediction(tmp_path):
    space = spaces.get("compofa", [160, 224])
    cal = Calibration(0.3, 1.0, 12, {"rmspe": 0.1}, scale_by_resolution={160: 0.85, 224: 1.05})
    table = _synthetic_table(space, 1.0, seed=5).with_calibration(cal)
    loaded = LatencyTable.load(table.save(tmp_path / "t.json"))
    assert loaded.calibration == cal
    assert loaded.calibration.scale_by_resolution == {160: 0.85, 224: 1.05}
    archs = space.sample_many(60, np.random.default_rng(3))
    sums = loaded.predict_ms(archs, calibrated=False)
    want = np.array([0.3 + (0.85 if a.resolution == 160 else 1.05) * s for a, s in
                     zip(archs, sums, strict=True)])  # fmt: skip
    np.testing.assert_allclose(loaded.predict_ms(archs), want, rtol=1e-12)
    assert {a.resolution for a in archs} == {160, 224}


def test_bad_per_resolution_calibration_is_a_lut_error(tmp_path):
    raw = _synthetic_table(spaces.get("compofa", [160]), 1.0, seed=1).to_json()
    raw["calibration"] = {"overhead_ms": 0.1, "scale": 1.0, "scale_by_resolution": {"x": 1.0}}
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(LutError, match="invalid calibration"):
        LatencyTable.load(tmp_path / "bad.json")


@pytest.mark.parametrize("form", ["global", "per-resolution"])
def test_search_with_a_calibrated_table_prices_as_the_table(form):
    space = spaces.get("compofa", [160, 192, 224])
    scales = {160: 0.82, 192: 0.93, 224: 1.07} if form == "per-resolution" else {}
    cal = Calibration(0.7, 0.95, 30, scale_by_resolution=scales)
    table = _synthetic_table(space, 1.0, seed=8).with_calibration(cal)
    source = sources.LutLatency(table)
    model = source.additive(space)
    sample = S.Genome(space).sample(500, np.random.default_rng(9))
    archs = [S.to_arch(sample, i, space.stage_sizes) for i in range(len(sample))]
    np.testing.assert_allclose(model.evaluate(sample), table.predict_ms(archs), rtol=1e-12)
    # End to end: the search's Pricer verifies the model against the table, and each winner's
    # cost is the table's calibrated prediction.
    lat = table.predict_ms(list(space.enumerate()))
    targets = list(np.quantile(lat, [0.2, 0.5, 0.8]))
    out = S.search(space, sources.MacsProxy(space), source, targets, np.random.default_rng(0))
    assert all(r.feasible for r in out.results)
    for r in out.results:
        assert r.cost == pytest.approx(float(table.predict_ms([r.arch])[0]), rel=1e-12)
        assert r.cost <= r.target


def test_interleave_order_spreads_the_second_set_and_keeps_each_order():
    order = V.interleave_order(6, 3)
    assert sorted(order.tolist()) == list(range(9))
    first = [int(i) for i in order if i < 6]
    second = [int(i) for i in order if i >= 6]
    assert first == list(range(6)) and second == [6, 7, 8]
    # the 3 calibration archs sit in the first, middle and last third of the run
    pos = [order.tolist().index(i) for i in (6, 7, 8)]
    assert pos[0] < 3 <= pos[1] < 6 <= pos[2]
    assert V.interleave_order(4, 0).tolist() == [0, 1, 2, 3]


def test_bias_by_resolution_is_the_mean_signed_error_per_resolution():
    measured = np.array([10.0, 20.0, 10.0, 10.0])
    predicted = np.array([12.0, 22.0, 9.0, 10.0])
    got = V.bias_by_resolution(predicted, measured, [160, 160, 224, 224])
    assert got == {
        160: {"n": 2, "mean_pct_error": pytest.approx(0.15)},
        224: {"n": 2, "mean_pct_error": pytest.approx(-0.05)},
    }


def test_cli_show_and_predict_print_the_per_resolution_calibration(tmp_path, capsys):
    space = spaces.get("compofa", [160, 224])
    cal = Calibration(0.3, 1.0, 12, {"rmspe": 0.1, "n": 5, "within_5pct": 0.4,
                                     "within_10pct": 0.8,
                                     "bias_by_resolution": {"160": {"n": 3, "uncalibrated": 0.19,
                                                                    "calibrated": 0.01}}},
                      scale_by_resolution={160: 0.85, 224: 1.05})  # fmt: skip
    path = _synthetic_table(space, 1.0, seed=5).with_calibration(cal).save(tmp_path / "t.json")
    capsys.readouterr()
    assert main(["lut", "show", "--lut", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["calibration"]
    assert shown["form"] == "per-resolution"
    assert shown["scale_by_resolution"] == {"160": 0.85, "224": 1.05}
    assert main(["lut", "show", "--lut", str(path)]) == 0
    text = capsys.readouterr().out
    assert "per-resolution" in text and "160: 0.8500" in text and "+19.00%" in text
    arch = space.sample_many(1, np.random.default_rng(0))[0]
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_ofa()))
    assert main(["lut", "predict", "--lut", str(path), str(arch_file), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    scale = 0.85 if arch.resolution == 160 else 1.05
    assert got["calibration"] == {"form": "per-resolution", "overhead_ms": 0.3, "scale": scale}
    assert got["latency_ms"] == pytest.approx(0.3 + scale * got["uncalibrated_ms"], rel=1e-12)
