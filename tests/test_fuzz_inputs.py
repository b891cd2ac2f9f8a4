"""Property-based fuzz of every file the tool reads, through the real CLI command that reads it.

Each case writes a mutated file (cut short, bytes replaced, values swapped for other JSON
values, or plain garbage) and runs the command in-process. The contract of docs/inputs.md:
exit 0, or exactly one ``error:`` line and exit 2; never an exception escaping ``main`` (a
traceback), and a failed command leaves no output file behind.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.encoding import Encoder
from compofa_bench.predictor import AccuracyPredictor, build_mlp

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

REFERENCE_YAML = (
    Path(__file__).resolve().parents[2]
    / "shared/reference/compofa/latency_table@note10/160_lookup_table.yaml"
)


# --------------------------------------------------------------------------- mutations
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def mutated_bytes(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` cut, spliced or overwritten, or garbage."""
    kind = draw(st.sampled_from(["truncate", "splice", "overwrite", "garbage", "same"]))
    n = len(seed)
    if kind == "garbage":
        return draw(st.binary(max_size=256))
    if kind == "same":
        return seed
    at = draw(st.integers(0, n))
    if kind == "truncate":
        return seed[:at]
    junk = draw(st.binary(min_size=1, max_size=16) | st.text(max_size=16).map(str.encode))
    if kind == "splice":
        return seed[:at] + junk + seed[at:]
    return seed[:at] + junk + seed[at + len(junk) :]


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_json(draw: st.DrawFn, seed: object) -> bytes:
    """``seed`` with one value (anywhere in it) replaced or a key added, or its text mutated."""
    if draw(st.booleans()):
        return draw(mutated_bytes(json.dumps(seed).encode()))
    doc = json.loads(json.dumps(seed))
    path = draw(st.sampled_from(_paths(doc)))
    value = draw(json_values)
    if not path:
        doc = value
    else:
        parent = doc
        for p in path[:-1]:
            parent = parent[p]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.text(max_size=6))] = value  # an extra (unknown) key
        else:
            parent[path[-1]] = value
    return json.dumps(doc, allow_nan=True).encode()


# --------------------------------------------------------------------------- the contract
def run_cli(capsys: pytest.CaptureFixture, argv: Sequence[str], outputs: Sequence[Path] = ()):
    capsys.readouterr()
    rc = main([str(a) for a in argv])  # anything but a CompofaError escapes and fails here
    err = capsys.readouterr().err
    assert rc in (0, 2), (rc, err)
    assert "Traceback" not in err
    if rc == 2:
        errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, err
        for o in outputs:
            assert not Path(o).exists(), f"{o} left behind by a failed run"
    return rc, err


def in_tmp(fn: Callable[[Path], None]) -> None:
    d = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        fn(d)
        # atomic writes leave no temporary siblings, whatever the outcome
        assert not [p.name for p in d.rglob("*") if ".tmp" in p.name], list(d.rglob("*"))
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- files
ARCH = spaces.get("compofa").largest(160).to_ofa()


@FUZZ
@given(data=mutated_json(ARCH))
def test_arch_json(capsys, data: bytes) -> None:
    def case(d: Path) -> None:
        (d / "a.json").write_bytes(data)
        run_cli(capsys, ["arch", "info", d / "a.json", "--space", "compofa", "--json"])

    in_tmp(case)


DEVICE_TOML = b"""name = "fuzz"
adapter = "cpu-ort"
description = "fuzzed"
batch_size = 1

[options]
threads = 1
graph_optimization = "all"

[protocol]
min_runs = 5
warmup_runs = 1
"""


@FUZZ
@given(data=mutated_bytes(DEVICE_TOML))
def test_device_toml(capsys, data: bytes) -> None:
    def case(d: Path) -> None:
        (d / "dev.toml").write_bytes(data)
        run_cli(capsys, ["devices", "show", d / "dev.toml", "--json"])

    in_tmp(case)


def _small_table() -> dict:
    path = Path(__file__).resolve().parents[1] / "lookup_tables" / "tflite-local-compofa-r128.json"
    doc = json.loads(path.read_text())
    # a few entries keep the fuzz fast and every key reachable by a mutation
    for r, entries in doc["entries"].items():
        doc["entries"][r] = dict(list(entries.items())[:3])
    return doc


TABLE = _small_table()


@FUZZ
@given(data=mutated_json(TABLE))
def test_table_json(capsys, data: bytes) -> None:
    def case(d: Path) -> None:
        (d / "t.json").write_bytes(data)
        run_cli(capsys, ["lut", "show", "--lut", d / "t.json", "--json"])

    in_tmp(case)


def test_table_json_with_null_n_classes_is_one_error_line(capsys, tmp_path) -> None:
    # Found by test_table_json on a fresh-clone CI run: int(None) escaped as a TypeError.
    doc = {**TABLE, "n_classes": None}
    (tmp_path / "t.json").write_text(json.dumps(doc))
    rc, err = run_cli(capsys, ["lut", "show", "--lut", tmp_path / "t.json", "--json"])
    assert rc == 2 and "n_classes must be an integer" in err


def _yaml_seed() -> bytes:
    if REFERENCE_YAML.is_file():
        return b"".join(REFERENCE_YAML.read_bytes().splitlines(True)[:40])
    return (
        b"Conv-input:160x160x3-output:80x80x24-k:3:\n  count: 10\n  mean: 1.5\n  std: 0.1\n"
        b"Logits-input:1x1x1536-output:1000:\n  count: 10\n  mean: 0.6\n  std: 0.07\n"
    )


@FUZZ
@given(data=mutated_bytes(_yaml_seed()))
def test_ofa_yaml(capsys, data: bytes) -> None:
    def case(d: Path) -> None:
        (d / "yaml").mkdir()
        (d / "yaml" / "160_lookup_table.yaml").write_bytes(data)
        out = d / "t.json"
        run_cli(
            capsys, ["lut", "import-ofa", d / "yaml", "--width-mult", "1.2", "--out", out], [out]
        )

    in_tmp(case)


@pytest.fixture(scope="module")
def store_bytes() -> bytes:
    from compofa_bench.store import Measurement, ResultStore

    d = Path(tempfile.mkdtemp(prefix="fuzz-store-"))
    arch = spaces.get("compofa").smallest(128)
    try:
        with ResultStore(d / "r.db") as store:
            for i in range(3):  # rows whose JSON columns and numbers the mutations can hit
                store.add(
                    Measurement(
                        device="cpu-ort-1t", adapter="cpu-ort",
                        fingerprint={"stable_hash": "abc", "cpu": "x"}, protocol={"min_runs": 5},
                        protocol_hash="p1", kind="network", workload_key=f"{arch.key()}-{i}",
                        cache_key=f"c{i}", batch_size=1, status="failed", error="boom",
                        space="compofa", arch=arch.to_ofa(), resolution=128, width_mult=1.0,
                    )
                )  # fmt: skip
        con = sqlite3.connect(d / "r.db")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        return (d / "r.db").read_bytes()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_results_store(capsys, store_bytes: bytes, data: st.DataObject) -> None:
    blob = data.draw(mutated_bytes(store_bytes))

    def case(d: Path) -> None:
        (d / "r.db").write_bytes(blob)
        run_cli(capsys, ["results", "show", "--store", d / "r.db", "--json"])
        run_cli(capsys, ["results", "show", "--store", d / "r.db"])
        run_cli(capsys, ["results", "devices", "--store", d / "r.db"])

    in_tmp(case)


@pytest.fixture(scope="module")
def predictor_bytes() -> bytes:
    d = Path(tempfile.mkdtemp(prefix="fuzz-pred-"))
    try:
        enc = Encoder.for_space(spaces.get("compofa"))
        AccuracyPredictor(enc, build_mlp(enc.dim, (8,)), (8,), source="fuzz").save(d / "p.pt")
        return (d / "p.pt").read_bytes()
    finally:
        shutil.rmtree(d, ignore_errors=True)


@FUZZ
@given(data=st.data())
def test_checkpoint(capsys, predictor_bytes: bytes, data: st.DataObject) -> None:
    """A torch file, cut or overwritten anywhere (zip directory, pickle, storages)."""
    blob = data.draw(mutated_bytes(predictor_bytes))

    def case(d: Path) -> None:
        (d / "p.pt").write_bytes(blob)
        run_cli(capsys, ["predictor", "show", d / "p.pt", "--json"])

    in_tmp(case)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_supernet_checkpoint(capsys, data: st.DataObject) -> None:
    """A supernet state dict, its bytes mutated, through ``export --checkpoint``."""
    seed = _supernet_seed()
    blob = data.draw(mutated_bytes(seed))

    def case(d: Path) -> None:
        (d / "c.pth").write_bytes(blob)
        (d / "a.json").write_text(json.dumps(ARCH))
        out = d / "m.onnx"
        run_cli(
            capsys,
            [
                "export",
                "--arch",
                d / "a.json",
                "--space",
                "compofa",
                "--checkpoint",
                d / "c.pth",
                "--format",
                "onnx",
                "--out",
                out,
            ],
            [out],
        )

    in_tmp(case)


_SEED: list[bytes] = []


def _supernet_seed() -> bytes:
    """A small torch file shaped like a checkpoint (a few real supernet tensors)."""
    if not _SEED:
        import io

        from compofa_bench import supernet

        sd = supernet.build("mbv3", n_classes=1000).state_dict()
        small = {k: sd[k] for k in list(sd)[:4]}
        buf = io.BytesIO()
        torch.save({"state_dict": small}, buf)
        _SEED.append(buf.getvalue())
    return _SEED[0]


def _acc_csv() -> bytes:
    import csv
    import io

    import numpy as np

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["space", "key", "resolution", "top1", "arch"])
    archs = spaces.get("compofa").sample_many(12, np.random.default_rng(0))
    for i, a in enumerate(archs):
        w.writerow(["compofa", a.key(), a.resolution, f"0.{50 + i}", json.dumps(a.to_ofa())])
    return buf.getvalue().encode()


ACC_CSV = _acc_csv()


@FUZZ
@given(data=mutated_bytes(ACC_CSV))
def test_acc_csv(capsys, data: bytes) -> None:
    def case(d: Path) -> None:
        (d / "acc.csv").write_bytes(data)
        out = d / "p.pt"
        run_cli(
            capsys,
            [
                "predictor",
                "train",
                "--data",
                d / "acc.csv",
                "--out",
                out,
                "--epochs",
                "2",
                "--hidden",
                "8",
                "--patience",
                "1",
            ],
            [out],
        )

    in_tmp(case)
