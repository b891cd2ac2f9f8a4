"""``space list|show`` and ``arch info`` from the command line, good and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compofa_bench import spaces, supernet
from compofa_bench.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, obj: object, name: str = "arch.json") -> str:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return str(path)


def test_space_list(capsys) -> None:
    code, out, _ = run(capsys, "space", "list")
    assert code == 0
    for name in spaces.names():
        assert name in out
    code, out, _ = run(capsys, "space", "list", "--json")
    assert code == 0
    listed = {d["name"]: d for d in json.loads(out)}
    assert listed["compofa"]["structures"] == 243


def test_space_show_json_and_table(capsys) -> None:
    code, out, _ = run(capsys, "space", "show", "compofa", "--resolutions", "160,224", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["structures"] == 243 and info["size"] == 486
    assert info["resolutions"] == [160, 224]
    assert info["coupling"] == [[2, 3], [3, 4], [4, 6]]
    code, out, _ = run(capsys, "space", "show", "ofa")
    assert code == 0 and "stages" in out and f"{7371**5:,}" in out


def test_arch_info_counts_match_library(capsys, tmp_path: Path) -> None:
    arch = spaces.get("compofa").sample(np.random.default_rng(0))
    path = write(tmp_path, arch.to_ofa())
    code, out, _ = run(
        capsys, "arch", "info", path, "--space", "compofa", "--width-mult", "1.2", "--json"
    )
    assert code == 0
    info = json.loads(out)
    assert info["key"] == arch.key()
    assert info["macs"] == supernet.count_macs(arch, width_mult=1.2)
    assert info["params"] == supernet.count_params(arch, width_mult=1.2)
    assert spaces.Arch.from_ofa(info["arch"]) == arch
    # image_size form and a resolution given on the command line
    no_r = {k: v for k, v in arch.to_ofa().items() if k != "r"}
    code, out, _ = run(
        capsys,
        "arch",
        "info",
        write(tmp_path, no_r, "b.json"),
        "--space",
        "compofa",
        "--resolution",
        "160",
        "--json",
    )
    assert code == 0 and json.loads(out)["resolution"] == 160
    code, out, _ = run(capsys, "arch", "info", path, "--space", "compofa")
    assert code == 0 and "MACs" in out and arch.key() in out


BAD_ARCHS = {
    "malformed_json": '{"ks": [3, 5,',
    "not_object": "[1, 2, 3]",
    "wrong_length": {"ks": [3] * 19, "e": [3] * 20, "d": [2] * 5, "r": [224]},
    "wrong_stages": {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 4, "r": [224]},
    "kernel_outside": {"ks": [9] * 20, "e": [3] * 20, "d": [2] * 5, "r": [224]},
    "expand_outside": {"ks": [3] * 20, "e": [5] * 20, "d": [2] * 5, "r": [224]},
    "depth_outside": {"ks": [3] * 20, "e": [3] * 20, "d": [5] * 5, "r": [224]},
    "string_value": {"ks": ["3"] * 20, "e": [3] * 20, "d": [2] * 5, "r": [224]},
    "nan_resolution": '{"ks": [3], "e": [3], "d": [2], "r": [NaN]}',
    "no_resolution": {"ks": [3] * 20, "e": [3] * 20, "d": [2] * 5},
    "missing_field": {"ks": [3] * 20, "d": [2] * 5, "r": [224]},
}


@pytest.mark.parametrize("case", sorted(BAD_ARCHS))
def test_arch_info_bad_input_is_one_line_exit_2(capsys, tmp_path: Path, case: str) -> None:
    code, out, err = run(capsys, "arch", "info", write(tmp_path, BAD_ARCHS[case]))
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_bad_space_and_resolutions(capsys, tmp_path: Path) -> None:
    arch = spaces.get("ofa").sample(np.random.default_rng(0)).to_ofa()
    for argv in (
        ("space", "show", "nope"),
        ("space", "show", "ofa", "--resolutions", "abc"),
        ("space", "show", "ofa", "--resolutions", "130"),
        ("arch", "info", write(tmp_path, arch), "--space", "nope"),
        ("arch", "info", write(tmp_path, arch), "--space", "compofa"),  # ofa arch, compofa space
        ("arch", "info", write(tmp_path, arch), "--width-mult", "-1"),
        ("arch", "info", str(tmp_path / "missing.json")),
    ):
        code, _out, err = run(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)


def test_subprocess_entry_point(tmp_path: Path) -> None:
    arch = spaces.get("ofa").largest(224)
    path = write(tmp_path, arch.to_ofa("image_size"))
    ok = subprocess.run(
        [sys.executable, "-m", "compofa_bench", "arch", "info", path, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["macs"] == supernet.count_macs(arch)
    bad = subprocess.run(
        [sys.executable, "-m", "compofa_bench", "arch", "info", write(tmp_path, "{", "x.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
    assert "Traceback" not in bad.stderr
