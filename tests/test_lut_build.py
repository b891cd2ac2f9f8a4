"""Building and validating a table on the real ONNX Runtime CPU adapter (tiny resolution so
that it stays fast), plus the validation metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _devices import DEVICE_NAME, MIN_RUNS, write_tiny_ort_device

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.errors import LutError
from compofa_bench.lut import LatencyTable
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.validate import fit_calibration, metrics
from compofa_bench.ranking import kendall_tau_b, spearman

pytest.importorskip("onnxruntime")

RES = 32  # smallest resolution a space accepts: layers and networks export and run quickly


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lutbuild")
    write_tiny_ort_device(d, parity_check=False)
    return d


@pytest.fixture(scope="module")
def built(workdir: Path):
    from compofa_bench.lut.build import build_table

    space = spaces.get("compofa", [RES])
    table, summary = build_table(
        workdir / "dev.toml", space, store_path=workdir / "s.db", out=workdir / "t.json",
    )  # fmt: skip
    return space, table, summary


@pytest.mark.slow
def test_build_measures_every_layer_once_with_provenance(built, workdir):
    space, table, summary = built
    expected = unique_layers(space, width_mult=1.0)
    assert {r: set(e) for r, e in table.entries.items()} == {r: set(e) for r, e in expected.items()}
    assert summary["measured_now"] == summary["layers"] == len(expected[RES])
    assert summary["reused"] == 0
    for entry in table.entries[RES].values():
        assert entry.count >= MIN_RUNS and entry.median_ms > 0 and entry.std_ms >= 0
    prov = LatencyTable.load(workdir / "t.json").provenance
    assert prov["device"] == DEVICE_NAME and prov["adapter"] == "cpu-ort"
    assert prov["batch_size"] == 1 and prov["protocol"]["min_runs"] == MIN_RUNS
    assert prov["fingerprint_hash"] and "onnxruntime" in json.dumps(prov["runtime"]).lower()
    predicted = table.predict_ms(list(space.enumerate()))
    assert len(predicted) == 243 and np.all(predicted > 0)


@pytest.mark.slow
def test_build_resumes_from_the_store(built, workdir, capsys):
    _, table, _ = built
    # Rerunning measures nothing: every layer comes from the store, the table is the same.
    assert main(["lut", "build", "--device", str(workdir / "dev.toml"), "--space", "compofa",
                 "--resolutions", str(RES), "--store", str(workdir / "s.db"),
                 "--out", str(workdir / "t2.json"), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["measured_now"] == 0 and summary["reused"] == summary["layers"]
    assert LatencyTable.load(workdir / "t2.json").entries == table.entries


@pytest.mark.slow
def test_build_protocol_overrides_reach_the_layers(built, workdir, capsys):
    _, table, _ = built
    # A changed protocol is a different measurement: nothing is reused, and the table says so.
    runs = MIN_RUNS + 4
    assert main(["lut", "build", "--device", str(workdir / "dev.toml"), "--space", "compofa",
                 "--resolutions", str(RES), "--store", str(workdir / "s.db"),
                 "--out", str(workdir / "t3.json"), "--runs", str(runs), "--json"]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert summary["reused"] == 0 and summary["measured_now"] == summary["layers"]
    t3 = LatencyTable.load(workdir / "t3.json")
    assert t3.provenance["protocol"]["min_runs"] == runs
    assert t3.provenance["protocol_hash"] != table.provenance["protocol_hash"]
    assert all(e.count >= runs for e in t3.entries[RES].values())
    assert set(t3.entries[RES]) == set(table.entries[RES])


@pytest.mark.slow
def test_validate_with_calibration_on_a_separate_set(built, workdir):
    from compofa_bench.lut.validate import validate_table

    lut = workdir / "t.json"
    before = lut.read_bytes()
    report = validate_table(
        lut, workdir / "dev.toml", "compofa", n_sample=3, n_calibrate=3, seed=1,
        store_path=workdir / "s.db", plot=workdir / "p.png",
        out=workdir / "calibrated.json",
    )  # fmt: skip
    assert lut.read_bytes() == before  # the input table is never rewritten
    assert report["calibration"]["device"] == DEVICE_NAME and report["warnings"] == []
    assert report["n"] == 3 and len(report["archs"]) == 3
    assert report["measurement"]["measured_now"] == 6
    for block in ("uncalibrated", "calibrated"):
        assert 0 <= report[block]["within_10pct"] <= 1 and report[block]["rmse_ms"] >= 0
    saved = LatencyTable.load(workdir / "calibrated.json")
    assert saved.calibration is not None and saved.calibration.fitted_on == 3
    assert saved.calibration.device == DEVICE_NAME
    assert saved.calibration.validation["n"] == 3
    # The calibration is applied to predictions and the validation archs are not its fit set.
    val_keys = {row["key"] for row in report["archs"]}
    arch = spaces.get("compofa", [RES]).sample_many(6, np.random.default_rng(1))[0]
    assert arch.key() in val_keys
    raw = float(saved.predict_ms(arch, calibrated=False)[0])
    c = saved.calibration
    # one resolution with 3 fit archs: the per-resolution form, with that resolution's scale
    assert c.form == "per-resolution" and set(c.scale_by_resolution) == {RES}
    want = c.overhead_ms + c.scale_by_resolution[RES] * raw
    assert float(saved.predict_ms(arch)[0]) == pytest.approx(want)
    assert set(report["bias_by_resolution"]) == {RES}
    assert (workdir / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Measurements are reused on a second run.
    again = validate_table(
        lut,
        workdir / "dev.toml",
        "compofa",
        n_sample=3,
        seed=1,
        store_path=workdir / "s.db",
    )
    assert again["measurement"]["measured_now"] == 0
    assert [r["measured_ms"] for r in again["archs"]] == [r["measured_ms"] for r in report["archs"]]


@pytest.mark.slow
def test_validate_interleaves_measurement_and_keeps_the_validation_set(built, workdir):
    from compofa_bench.lut.validate import interleave_order, validate_table
    from compofa_bench.store import ResultStore
    from compofa_bench.timing_run import RunOptions

    lut = workdir / "interleave.json"
    lut.write_text((workdir / "t.json").read_text())  # a copy: the test may write next to it
    store = workdir / "interleave.db"  # a fresh store: every arch is measured in this run
    n, m, seed = 4, 3, 5
    report = validate_table(
        lut, workdir / "dev.toml", "compofa", n_sample=n, n_calibrate=m, seed=seed,
        store_path=store,
        run=RunOptions(rounds=1),  # one round keeps the interleaved order (more shuffle it)
    )  # fmt: skip
    archs = spaces.get("compofa", [RES]).sample_many(n + m, np.random.default_rng(seed))
    # The validation set is archs[:n], in order, exactly as before interleaving.
    assert [row["key"] for row in report["archs"]] == [a.key() for a in archs[:n]]
    # every prediction checked: measured/predicted per arch, contended ones listed
    assert all(
        row["measured_over_predicted"] == pytest.approx(row["measured_ms"] / row["predicted_ms"])
        for row in report["archs"]
    )
    assert set(report["measurement"]["contended"]) <= {a.key() for a in archs}
    with ResultStore(store) as st:
        rows = st.rows(("workload_key", "median_ms"), kind="network")
    measured_order = [r["workload_key"] for r in rows]
    assert measured_order == [archs[i].key() for i in interleave_order(n, m)]
    # calibration archs were measured among the validation archs, not after them all
    cal_keys = {a.key() for a in archs[n:]}
    is_cal = [k in cal_keys for k in measured_order]
    assert is_cal == [False, True, False, True, False, True, False]
    # Each validation arch carries its own measurement back through the un-permutation.
    by_key = {r["workload_key"]: r["median_ms"] for r in rows}
    for row in report["archs"]:
        assert row["measured_ms"] == pytest.approx(by_key[row["key"]], rel=1e-12)
    bias = report["bias_by_resolution"][RES]
    assert bias["n"] == n and {"uncalibrated", "calibrated"} <= set(bias)
    rel = [(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in report["archs"]]
    assert bias["uncalibrated"] == pytest.approx(float(np.mean(rel)), rel=1e-12)
    assert report["calibration"]["fit_archs_by_resolution"] == {RES: m}


# ------------------------------------------------------------------------- metrics


def test_rank_correlations_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a + rng.normal(scale=0.7, size=200)
    b[:20] = np.round(b[:20], 1)  # ties
    a[5:15] = a[5]
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-12)
    assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, rel=1e-12)


def test_metrics_on_known_errors():
    measured = np.array([10.0, 20.0, 40.0, 80.0])
    predicted = measured * np.array([1.04, 0.92, 1.0, 1.2])
    m = metrics(predicted, measured)
    assert m["within_5pct"] == 0.5 and m["within_10pct"] == 0.75
    assert m["rmspe"] == pytest.approx(np.sqrt((0.04**2 + 0.08**2 + 0 + 0.2**2) / 4))
    assert m["max_abs_pct_error"] == pytest.approx(0.2)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    with pytest.raises(LutError):
        metrics([1.0], [1.0, 2.0])


def test_calibration_recovers_overhead_and_scale():
    rng = np.random.default_rng(2)
    predicted = rng.uniform(5, 50, size=40)
    overhead, scale = fit_calibration(predicted, 1.7 + 1.15 * predicted)
    assert overhead == pytest.approx(1.7) and scale == pytest.approx(1.15)
    with pytest.raises(LutError, match="at least 3"):
        fit_calibration([1.0, 2.0], [1.0, 2.0])
