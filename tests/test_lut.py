"""Latency lookup tables: keys, format, prediction against OFA's own estimator, import/export."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.errors import LutError
from compofa_bench.lut import (
    Calibration,
    LatencyTable,
    LutEntry,
    export_ofa_dir,
    import_ofa_dir,
)
from compofa_bench.lut.layers import unique_layers

NOTE10 = "compofa/latency_table@note10"


def _ofa_latency_module():
    """OFA's tutorial/latency_table.py loaded on its own: the tutorial package's __init__
    imports gdown and model-zoo code that tests do not need."""
    ofa = pytest.importorskip("ofa")
    path = Path(ofa.__file__).parent / "tutorial" / "latency_table.py"
    spec = importlib.util.spec_from_file_location("ofa_tutorial_latency_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ofa_estimator(yaml_path: Path):
    """OFA's LatencyEstimator over a local file. Its constructor calls yaml.load without a
    Loader, which PyYAML 6 rejects, so the table is patched in instead."""
    est = object.__new__(_ofa_latency_module().LatencyEstimator)
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
    assert main(["lut", "export-ofa", str(out), "--out", str(tmp_path / "y")]) == 0
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
    assert main(["lut", "show", str(tmp_path / "missing.json")]) == 2
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
