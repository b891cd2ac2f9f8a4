"""Device files: lookup by name and path, search order, validation, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compofa_bench.cli import main
from compofa_bench.devices import list_devices, load_device, parse_device
from compofa_bench.errors import DeviceError

REPO = Path(__file__).resolve().parents[1]


def test_builtin_cpu_devices() -> None:
    names = {s.name for s in list_devices()}
    assert {"cpu-ort", "cpu-ort-1t"} <= names
    one = load_device("cpu-ort-1t")
    assert one.adapter == "cpu-ort" and one.options["threads"] == 1
    assert one.protocol.min_runs == 20 and one.protocol.batch_size == 1


def test_package_ships_the_repo_devices() -> None:
    pkg = REPO / "compofa_bench" / "devices_builtin"
    assert pkg.is_dir()
    shipped = {p.name: p.read_text() for p in pkg.glob("*.toml")}
    repo = {p.name: p.read_text() for p in (REPO / "devices").glob("*.toml")}
    assert shipped == repo and "cpu-ort.toml" in shipped


def test_every_builtin_device_parses() -> None:
    for path in (REPO / "devices").glob("*.toml"):
        assert load_device(path).name == path.stem


def test_path_works_where_a_name_does(tmp_path: Path) -> None:
    f = tmp_path / "mine.toml"
    f.write_text(
        'name = "mine"\nadapter = "cpu-ort"\nbatch_size = 4\n'
        "[options]\nthreads = 2\n[protocol]\nmin_runs = 7\n"
    )
    spec = load_device(str(f))
    assert spec.name == "mine" and spec.options == {"threads": 2}
    assert spec.protocol.min_runs == 7 and spec.protocol.batch_size == 4
    assert spec.protocol.max_s == 5.0  # untouched fields keep the defaults


def test_search_order_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    envdir, cwd = tmp_path / "env", tmp_path / "cwd"
    (cwd / "devices").mkdir(parents=True)
    envdir.mkdir()
    (cwd / "devices" / "cpu-ort-1t.toml").write_text(
        'name = "cpu-ort-1t"\nadapter = "cpu-ort"\n[options]\nthreads = 1\n[protocol]\nmin_runs = 33\n'
    )
    monkeypatch.chdir(cwd)
    assert load_device("cpu-ort-1t").protocol.min_runs == 33  # ./devices shadows built-ins
    (envdir / "cpu-ort-1t.toml").write_text(
        'name = "cpu-ort-1t"\nadapter = "cpu-ort"\n[protocol]\nmin_runs = 44\n'
    )
    monkeypatch.setenv("COMPOFA_BENCH_DEVICES", str(envdir))
    assert load_device("cpu-ort-1t").protocol.min_runs == 44
    assert load_device("cpu-ort").options["threads"] == 0  # built-ins still found


def test_unknown_name_lists_known_devices() -> None:
    with pytest.raises(DeviceError, match=r"unknown device 'nope'.*cpu-ort-1t"):
        load_device("nope")


@pytest.mark.parametrize(
    "text,match",
    [
        ('adapter = "cpu-ort"\n[protocol]\nmin_runs = 0\n', "min_runs"),
        ('adapter = "warp-drive"\n', "unknown adapter"),
        ('name = "x"\n', "adapter"),
        ('adapter = "cpu-ort"\ncolour = "red"\n', "unknown key"),
        ('adapter = "cpu-ort"\n[protocol]\nmin_run = 3\n', "unknown protocol field"),
        ("adapter = \n", "not valid TOML"),
    ],
)
def test_bad_device_files(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(DeviceError, match=match):
        load_device(f)


def test_missing_device_file(tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match="does not exist"):
        load_device(tmp_path / "none.toml")


def test_parse_device_from_mapping() -> None:
    spec = parse_device({"name": "d", "adapter": "cpu-ort", "protocol": {"max_s": 1.0}})
    assert spec.protocol.max_s == 1.0 and spec.path is None


def test_cli_devices_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "list", "--json"]) == 0
    names = {d["name"] for d in json.loads(capsys.readouterr().out)}
    assert {"cpu-ort", "cpu-ort-1t"} <= names
    assert main(["devices", "show", "cpu-ort-1t", "--probe", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    fp = info["fingerprint"]
    assert fp["stable"]["adapter"]["intra_op_threads"] == 1
    assert fp["stable"]["adapter"]["runtime"] == "onnxruntime"
    assert len(fp["stable_hash"]) == 16
    assert main(["devices", "show", "nope"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_remote_adapters_leave_host_out_of_the_stable_fingerprint() -> None:
    from compofa_bench.fingerprint import fingerprint

    local = fingerprint({"runtime": "x"}, host=True)
    remote = fingerprint({"runtime": "x"}, host=False)
    assert "cpu_model" in local["stable"] and "cpu_model" not in remote["stable"]
    assert remote["stable"] == {"adapter": {"runtime": "x"}}
    assert local["stable_hash"] != remote["stable_hash"]
    assert remote["volatile"]["host_cpu"] == local["stable"]["cpu_model"]  # still recorded


@pytest.mark.parametrize(
    "options,fragment",
    [
        ("threads = -2", "threads"),
        ('graph_optimization = "bogus"', "graph_optimization"),
        ("thraeds = 1", "unknown cpu-ort option(s) thraeds"),
        ('spinning = "false"', "spinning must be true or false"),
        ('timer = "thread_cpu"\nthreads = 2', "threads = 1"),
    ],
)
def test_devices_show_rejects_what_profile_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: str, fragment: str
) -> None:
    # One parser for a device's [options]: `devices show` (no adapter opened) and `profile`
    # (which opens it) fail on the same option with the same message.
    f = tmp_path / "d.toml"
    f.write_text(f'name = "d"\nadapter = "cpu-ort"\n[options]\n{options}\n')
    assert main(["devices", "show", str(f)]) == 2
    shown = capsys.readouterr().err
    assert fragment in shown
    rc = main(["profile", "--device", str(f), "--space", "compofa", "--sample", "1",
               "--store", str(tmp_path / "r.db")])  # fmt: skip
    assert rc == 2
    assert capsys.readouterr().err == shown


def test_bool_options_refuse_strings() -> None:
    from compofa_bench.adapters.options import (
        parse_android_adb_options,
        parse_ort_cpu_options,
        parse_tflite_local_options,
    )

    with pytest.raises(DeviceError, match="spinning must be true or false, got 'false'"):
        parse_ort_cpu_options({"spinning": "false"}, "d")
    assert parse_ort_cpu_options({"spinning": False}, "d").spinning is False
    with pytest.raises(DeviceError, match="xnnpack must be true or false"):
        parse_tflite_local_options({"xnnpack": "no"}, "d")
    with pytest.raises(DeviceError, match="threads must be an integer"):
        parse_tflite_local_options({"threads": True}, "d")
    phone = {"serial": "s:5555", "benchmark_binary": "bm"}
    with pytest.raises(DeviceError, match="gpu must be true or false"):
        parse_android_adb_options({**phone, "gpu": "false"}, "d")
    assert parse_android_adb_options(phone, "d").threads == 4
