"""Tables that know where they come from: device checks in validate/predict/search (a warning
naming both sides, an ``error:`` line and exit 2 under --strict), calibrations that record
their device and are never written over the input, OFA imports checked against base and
width, the validation plot and ``lut show``'s coverage. Real ONNX Runtime, tiny resolution."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _devices import DEVICE_NAME, write_tiny_ort_device

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.errors import LutError
from compofa_bench.lut import Calibration, LatencyTable, import_ofa_dir

pytest.importorskip("onnxruntime")

RES = 32
NOTE10 = "compofa/latency_table@note10"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from compofa_bench.lut.build import build_table

    d = tmp_path_factory.mktemp("lutprov")
    write_tiny_ort_device(d, parity_check=False)
    build_table(
        d / "dev.toml", spaces.get("compofa", [RES]), store_path=d / "s.db", out=d / "t.json",
    )  # fmt: skip
    return d


def _as_if_from(workdir: Path, name: str, device: str, calibration_device: str | None = None):
    """A copy of the built table whose provenance names another device (what a table built
    on that device carries), optionally with a calibration fitted on ``calibration_device``."""
    table = LatencyTable.load(workdir / "t.json")
    table.provenance["device"] = device
    if calibration_device is not None:
        table = table.with_calibration(Calibration(0.0, 1.0, 3, device=calibration_device))
    path = workdir / name
    table.save(path)
    return path


def _validate_args(workdir: Path, lut: Path, *extra: str) -> list[str]:
    return ["lut", "validate", "--lut", str(lut), "--device", str(workdir / "dev.toml"),
            "--sample", "3", "--seed", "2", "--store", str(workdir / "s.db"), *extra]  # fmt: skip


@pytest.mark.slow
def test_validate_warns_or_refuses_a_table_from_another_device(workdir, capsys):
    lut = _as_if_from(workdir, "other.json", "cpu-ort")
    before = lut.read_bytes()
    assert main(_validate_args(workdir, lut, "--json")) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    # the provenance warning (a busy host may add a noise-floor or contention one beside it)
    (line,) = [x for x in captured.err.splitlines() if x.startswith("warning:") and "device" in x]
    assert "'cpu-ort'" in line and repr(DEVICE_NAME) in line
    assert report["warnings"] == [line.removeprefix("warning: ")]
    assert main(_validate_args(workdir, lut, "--strict")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'cpu-ort'" in err[0]
    assert lut.read_bytes() == before


@pytest.mark.slow
def test_validate_names_a_fingerprint_that_differs_under_the_same_device_name(workdir, capsys):
    # what a table built under this device name on another host carries
    table = LatencyTable.load(workdir / "t.json")
    table.provenance["fingerprint_hash"] = "0123456789abcdef"
    table.provenance["fingerprint"]["stable"]["cpu_model"] = "Some Other CPU"
    lut = workdir / "other-host.json"
    table.save(lut)
    assert main(_validate_args(workdir, lut, "--json")) == 0
    captured = capsys.readouterr()
    (line,) = [
        x for x in captured.err.splitlines() if x.startswith("warning:") and "fingerprint" in x
    ]
    assert "0123456789abcdef" in line and "cpu_model: 'Some Other CPU' then" in line
    assert json.loads(captured.out)["warnings"] == [line.removeprefix("warning: ")]
    assert main(_validate_args(workdir, lut, "--strict")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "Some Other CPU" in err[0]


@pytest.mark.slow
def test_calibration_is_printed_not_written_without_out(workdir, capsys):
    lut = workdir / "t.json"
    before = lut.read_bytes()
    files = sorted(p.name for p in workdir.iterdir())
    assert main(_validate_args(workdir, lut, "--calibrate", "3")) == 0
    out = capsys.readouterr().out
    assert "not written: pass --out" in out and "ms + scale_r x layer sum" in out
    assert lut.read_bytes() == before
    assert sorted(p.name for p in workdir.iterdir()) == files
    # --out the input itself is refused before anything is measured
    assert main(_validate_args(workdir, lut, "--calibrate", "3", "--out", str(lut))) == 2
    assert "is the input table" in capsys.readouterr().err
    assert lut.read_bytes() == before
    # with --out: the calibrated table there records its device; the input is unchanged
    assert (
        main(_validate_args(workdir, lut, "--calibrate", "3", "--out", str(workdir / "c.json")))
        == 0
    )
    capsys.readouterr()
    cal = LatencyTable.load(workdir / "c.json").calibration
    assert cal is not None and cal.device == DEVICE_NAME
    assert lut.read_bytes() == before


@pytest.mark.slow
def test_predict_checks_the_table_and_calibration_device(workdir, tmp_path, capsys):
    arch = spaces.get("compofa", [RES]).sample_many(1, np.random.default_rng(0))[0]
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_ofa()))
    same = ["lut", "predict", "--lut", str(workdir / "t.json"), str(arch_file), "--json"]
    assert main([*same, "--device", str(workdir / "dev.toml")]) == 0
    assert capsys.readouterr().err == ""
    # layers from this device, calibration fitted on another
    lut = _as_if_from(workdir, "cal-other.json", DEVICE_NAME, calibration_device="cpu-ort")
    args = ["lut", "predict", "--lut", str(lut), str(arch_file), "--device", DEVICE_NAME]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["latency_ms"] > 0
    warnings = [x for x in captured.err.splitlines() if x.startswith("warning:")]
    assert any("calibration was fitted on device 'cpu-ort'" in w for w in warnings)
    assert all(repr(DEVICE_NAME) in w for w in warnings)
    assert main([*args, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'cpu-ort'" in err[0]
    # without --device: the calibration still disagrees with the table's own layers
    assert main(["lut", "predict", "--lut", str(lut), str(arch_file), "--json"]) == 0
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("warning:") and "'cpu-ort'" in line and repr(DEVICE_NAME) in line


@pytest.mark.slow
def test_search_warns_when_its_device_is_not_the_tables(workdir, tmp_path, capsys):
    lut = _as_if_from(workdir, "search-other.json", "cpu-ort")
    args = ["search", "--space", "compofa", "--resolutions", str(RES), "--lut", str(lut),
            "--accuracy-proxy", "macs", "--latency", "100", "--device", str(workdir / "dev.toml"),
            "--store", str(workdir / "s.db"), "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'cpu-ort'" in err[0]
    assert not (tmp_path / "strict").exists()
    assert main([*args, "--out", str(tmp_path / "warn")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "'cpu-ort'" in err and repr(DEVICE_NAME) in err
    assert (tmp_path / "warn" / "search.json").exists()


def test_validation_plot_is_a_png_people_can_read(tmp_path):
    from PIL import Image

    from compofa_bench.lut.plot import scatter

    rng = np.random.default_rng(0)
    measured = rng.uniform(5, 20, 40)
    res = np.repeat([128, 160, 192, 224], 10)
    out = scatter(
        measured * rng.normal(1.0, 0.05, 40), measured, tmp_path / "s.png",
        calibrated=measured * rng.normal(1.0, 0.02, 40), resolutions=res, title="t",
    )  # fmt: skip
    assert out.stat().st_size > 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        img.load()
        assert img.format == "PNG" and img.width > 200 and img.height > 200
        pixels = np.asarray(img.convert("RGB")).reshape(-1, 3)
    # several point colours (one per resolution) on top of the white/grey background
    saturated = pixels[(pixels.max(axis=1).astype(int) - pixels.min(axis=1)) > 60]
    assert len(np.unique(saturated // 32, axis=0)) >= 4


@pytest.mark.slow
def test_show_prints_coverage_of_each_space(workdir, capsys):
    assert main(["lut", "show", "--lut", str(workdir / "t.json"), "--json"]) == 0
    cov = json.loads(capsys.readouterr().out)["coverage"]
    assert set(cov) == {"ofa", "compofa", "compofa-ek"}
    full = cov["compofa"][str(RES)]
    assert full["present"] == full["needed"] > 0 and full["missing_example"] is None
    ofa = cov["ofa"][str(RES)]
    assert ofa["present"] < ofa["needed"] and ofa["missing_example"]
    # the space's own resolutions, which the table lacks, show as uncovered
    assert cov["compofa"]["224"]["present"] == 0
    assert main(["lut", "show", "--lut", str(workdir / "t.json"), "--space", "compofa"]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "100%" in out


# ------------------------------------------------------------------------ OFA import


@pytest.fixture(scope="module")
def note10_dir(reference_dir: Path) -> Path:
    d = reference_dir / NOTE10
    if not d.is_dir():
        pytest.skip(f"{d} not available")
    return d


def test_import_refuses_keys_of_another_width_or_base(note10_dir, tmp_path, capsys):
    assert import_ofa_dir(note10_dir, 1.2).provenance.get("import_warnings") is None
    with pytest.raises(LutError, match=r"width 1 .*fit --base mbv3 --width-mult 1\.2"):
        import_ofa_dir(note10_dir, 1.0)
    out = tmp_path / "x.json"
    assert main(["lut", "import-ofa", str(note10_dir), "--width-mult", "1.2", "--base",
                 "proxyless", "--out", str(out)]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert "base 'proxyless'" in err[0] and "--base mbv3 --width-mult 1.2" in err[0]
    assert not out.exists()


def test_import_names_layers_a_partial_file_lacks(note10_dir, tmp_path, capsys):
    import yaml

    partial = tmp_path / "partial"
    shutil.copytree(note10_dir, partial)
    path = partial / "160_lookup_table.yaml"
    data = yaml.safe_load(path.read_text())
    dropped = sorted(k for k in data if k.startswith("expanded_conv"))[0]
    del data[dropped]
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "p.json"
    args = ["lut", "import-ofa", str(partial), "--width-mult", "1.2", "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "resolution 160 lacks 1 " in err and dropped in err
    assert LatencyTable.load(out).provenance["import_warnings"]
    out.unlink()
    assert main([*args, "--strict"]) == 2
    assert "error:" in capsys.readouterr().err and not out.exists()


def test_search_output_names_a_prediction_that_missed_its_measurement(capsys):
    from compofa_bench.cli.search import print_search

    def target(t: float, predicted: float, measured: float) -> dict:
        return {"target_ms": t, "feasible": True, "predicted_latency_ms": predicted,
                "predicted_accuracy": 0.7, "measured_latency_ms": measured,
                "measured_device": "cpu-ort-1t", "key": f"arch{t:g}"}  # fmt: skip

    doc = {"unit": "ms", "accuracy_is_proxy": False, "space": "compofa", "method": "exhaustive",
           "resolutions": [224], "width_mult": 1.0, "search_seconds": 0.01,
           "accuracy_source": "p", "constraint_source": "lut", "weights": "random",
           "targets": [target(3, 2.50, 3.51), target(5, 4.9, 5.0)]}  # fmt: skip
    print_search(doc, "out")
    out = capsys.readouterr().out
    assert "3.51 (-29%)" in out and "5.00 (-2%)" in out
    (miss,) = [line for line in out.splitlines() if "missed by more than 10%" in line]
    assert "predicted 2.50 ms, measured 3.51 ms on cpu-ort-1t" in miss


def test_a_table_of_another_base_is_refused_naming_both(tmp_path, capsys):
    lut = Path(__file__).resolve().parents[1] / "lookup_tables/cpu-ort-1t-compofa-proxyless.json"
    write_tiny_ort_device(tmp_path, parity_check=False)
    before = lut.read_bytes()
    runs = [
        ["search", "--space", "compofa", "--lut", str(lut), "--accuracy-proxy", "macs",
         "--latency", "10", "--out", str(tmp_path / "s")],
        ["lut", "validate", "--lut", str(lut), "--device", str(tmp_path / "dev.toml"),
         "--space", "compofa", "--sample", "2", "--store", str(tmp_path / "s.db")],
    ]  # fmt: skip
    for args in runs:
        assert main(args) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error:") and "base 'proxyless'" in line and "base 'mbv3'" in line
    assert not (tmp_path / "s").exists() and lut.read_bytes() == before


@pytest.mark.slow
def test_validate_holds_out_the_archs_a_learned_table_was_fitted_on(workdir):
    from compofa_bench.lut.validate import validate_table

    drawn = spaces.get("compofa", [RES]).sample_many(3, np.random.default_rng(4))
    table = LatencyTable.load(workdir / "t.json")
    table.provenance["fit_archs"] = [drawn[0].key(), drawn[2].key()]  # as --method learned
    table.save(workdir / "fitted.json")
    report = validate_table(
        workdir / "fitted.json", workdir / "dev.toml", "compofa", n_sample=3, seed=4,
        store_path=workdir / "s.db",
    )  # fmt: skip
    keys = [row["key"] for row in report["archs"]]
    assert len(keys) == 3 == len(set(keys)) and drawn[1].key() in keys
    assert not {drawn[0].key(), drawn[2].key()} & set(keys)
