"""The build methods of ``lut build --method`` on the real ONNX Runtime (tiny resolution):
what each probe model holds, and how each method turns probe medians into layer latencies.
Functional checks only; which method predicts best is benchmarks/lut_accuracy.py's job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _devices import write_tiny_ort_device

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.errors import LutError
from compofa_bench.lut import LatencyTable
from compofa_bench.lut.build import LayerJobSpec, stored_layer_stats
from compofa_bench.lut.layers import unique_layers
from compofa_bench.lut.methods import (
    DEFAULT_METHOD,
    METHODS,
    BuildMethod,
    Probe,
    _ridge_to_one,
    make_plan,
)
from compofa_bench.store import ResultStore

pytest.importorskip("onnxruntime")

RES = 32
SPACE = spaces.get("compofa", [RES])


@pytest.fixture(scope="module")
def layers():
    return unique_layers(SPACE)


def _run(probe: Probe) -> torch.Tensor:
    with torch.no_grad():
        return probe.module()(torch.randn(probe.input_shape(1)))


def _onnx_ops(probe: Probe, tmp_path: Path) -> list[str]:
    import onnx

    from compofa_bench.convert import to_onnx

    path = to_onnx(probe.module(), probe.input_shape(1), tmp_path / f"{abs(hash(probe.name))}.onnx")
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.slow
def test_chain_of_k_holds_k_copies_with_their_own_weights(layers, tmp_path):
    keyed = layers[RES]
    same = next(s for s in keyed.values() if s.kind == "expanded_conv" and s.idskip)
    strided = next(s for s in keyed.values() if s.kind == "expanded_conv" and s.stride == 2)
    for spec, k in ((same, 3), (strided, 4)):
        one = Probe("layer", (spec,), ("x",))
        chain = Probe("chain", (spec,), ("x",), copies=k)
        assert _onnx_ops(chain, tmp_path).count("Conv") == k * _onnx_ops(one, tmp_path).count(
            "Conv"
        )
        weights = [m.weight for m in chain.module().modules() if isinstance(m, torch.nn.Conv2d)]
        assert not torch.equal(weights[0], weights[len(weights) // k])  # copies are distinct
        assert torch.isfinite(_run(chain)).all()
    # a layer that keeps its shape is chained (each copy feeds the next); any other fans out
    chained = _run(Probe("chain", (same,), ("x",), 3))
    assert tuple(chained.shape) == (1, same.out_c, same.out_hw, same.out_hw)
    out = _run(Probe("chain", (strided,), ("x",), 4))
    assert tuple(out.shape) == (1, 1, 1, 1)


@pytest.mark.slow
def test_every_probe_of_every_method_builds_and_runs(layers):
    # predecessor pairs and blocks compose: each layer's input is its predecessor's output
    ran: set[str] = set()
    for name in METHODS:
        plan = make_plan(BuildMethod(name, n_fit=3), SPACE, layers)
        for probe in plan.probes.values():
            if probe.kind in ("seq", "empty") and probe.name not in ran:
                assert torch.isfinite(_run(probe)).all(), probe.name
                ran.add(probe.name)
        keys = {k for keyed in layers.values() for k in keyed}
        assert keys <= set(plan.probes)  # every method times the isolated layers too
        if name == "learned":
            assert len(plan.fit_archs) == 3


def test_method_settings_are_checked():
    with pytest.raises(LutError, match="unknown build method"):
        BuildMethod("magic")
    with pytest.raises(LutError, match="at least 2 copies"):
        BuildMethod("chain", copies=1)
    assert BuildMethod().name == DEFAULT_METHOD


def test_ridge_fit_recovers_factors_and_pulls_unused_ones_to_one():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 5, size=(30, 3))
    x[:, 2] = 0.0  # a layer type no fit arch uses
    m = x @ np.array([0.8, 1.3, 7.0])
    a = _ridge_to_one(x, m, ridge=1e-9)
    assert a[:2] == pytest.approx([0.8, 1.3], rel=1e-6) and a[2] == pytest.approx(1.0)


# ------------------------------------------------------------------ builds on ONNX Runtime


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lutmethods")
    write_tiny_ort_device(d, parity_check=False)
    return d


def _build(workdir: Path, method: BuildMethod):
    from compofa_bench.lut.build import build_table

    return build_table(
        workdir / "dev.toml", SPACE, store_path=workdir / "s.db",
        out=workdir / f"{method.name}.json", method=method,
    )  # fmt: skip


def _medians(workdir: Path, table: LatencyTable) -> dict[str, float]:
    """Probe name -> median ms, read back from the store rows the build wrote."""
    prov = table.provenance
    ident = LayerJobSpec(table.base, table.key_style, prov["batch_size"])
    with ResultStore(workdir / "s.db") as store:
        stats = stored_layer_stats(store, prov["fingerprint_hash"], prov["protocol_hash"])
    prefix = ident.cache_key("")
    return {ck[len(prefix) :]: e.median_ms for ck, e in stats.items() if ck.startswith(prefix)}


@pytest.fixture(scope="module")
def isolated(workdir):
    return _build(workdir, BuildMethod("isolated"))[0]


@pytest.mark.slow
def test_overhead_subtracts_a_positive_empty_model_cost_but_not_from_the_stem(workdir, isolated):
    table, summary = _build(workdir, BuildMethod("overhead"))
    assert summary["measured_now"] == 1  # the empty model; every layer came from the store
    med = _medians(workdir, table)
    stem_key = table.keys(SPACE.smallest(RES))[0]
    (empty,) = [v for k, v in med.items() if k.startswith("empty:")]
    assert empty > 0
    for key, entry in table.entries[RES].items():
        iso = isolated.entries[RES][key].median_ms
        if key == stem_key:
            assert entry.median_ms == iso  # the stem keeps the one call a network pays
        else:
            assert entry.median_ms == pytest.approx(max(iso - empty, 0.1 * iso))
            assert (
                entry.mean_ms == entry.median_ms and entry.count == isolated.entries[RES][key].count
            )
    assert table.provenance["method"]["name"] == "overhead"


@pytest.mark.slow
def test_chain_takes_the_per_copy_difference(workdir, isolated):
    table, _ = _build(workdir, BuildMethod("chain", copies=3))
    med = _medians(workdir, table)
    stem_key = table.keys(SPACE.smallest(RES))[0]
    for key, entry in table.entries[RES].items():
        iso = isolated.entries[RES][key].median_ms
        if key == stem_key:
            assert entry.median_ms == iso
            continue
        per_copy = (med[f"chain3:{key}"] - iso) / 2
        assert entry.median_ms == pytest.approx(max(per_copy, 0.1 * iso))
    assert table.provenance["method"]["copies"] == 3


@pytest.mark.slow
def test_every_method_predicts_positive_latency_for_every_arch(workdir, isolated):
    archs = list(SPACE.enumerate())
    for name in ("neighbours", "blocks", "learned"):
        table, summary = _build(workdir, BuildMethod(name, n_fit=4))
        assert set(table.entries[RES]) == set(isolated.entries[RES])
        predicted = table.predict_ms(archs)
        assert np.all(np.isfinite(predicted)) and np.all(predicted > 0)
        assert LatencyTable.load(workdir / f"{name}.json").provenance["method"]["name"] == name
        if name == "learned":
            assert len(table.provenance["fit_archs"]) == 4
            assert summary["fit_measurement"]["measured_now"] == 4
            factors = table.provenance["method_details"]["factors"]
            assert set(factors) == {"stem", "tail", "expanded_conv-k3", "expanded_conv-k5"}
            assert all(f > 0 for f in factors.values())


@pytest.mark.slow
def test_cli_build_method_is_recorded(workdir, capsys):
    args = ["lut", "build", "--device", str(workdir / "dev.toml"), "--space", "compofa",
            "--resolutions", str(RES), "--store", str(workdir / "s.db"),
            "--out", str(workdir / "cli.json"), "--method", "overhead", "--json"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "overhead" and summary["probes"] == summary["layers"] + 1
    with pytest.raises(SystemExit) as exc:
        main([*args[:-3], "--method", "magic"])
    assert exc.value.code == 2
