"""ProxylessNAS latency tables: OFA's ProxylessNAS keys, prediction equal to the ofa package's
``ProxylessNASLatencyTable`` on OFA's phone table (mobile_trim.yaml), unique-layer enumeration
and vectorized prediction for the proxyless spaces, and the CLI import of a single yaml file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from compofa_bench import spaces
from compofa_bench.cli import main
from compofa_bench.errors import LutError
from compofa_bench.lut import LatencyTable, LutEntry, import_ofa_dir
from compofa_bench.lut.layers import unique_layers

TRIM = "proxylessnas/mobile_trim.yaml"


@pytest.fixture(scope="module")
def trim_path(reference_dir: Path) -> Path:
    p = reference_dir / TRIM
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p


@pytest.fixture(scope="module")
def ofa_table(trim_path: Path):
    """OFA's ProxylessNASLatencyTable over the local file. Its constructor downloads (and calls
    yaml.load without a Loader, which PyYAML 6 rejects), so the table is set directly."""
    lut_mod = pytest.importorskip("ofa.nas.efficiency_predictor.latency_lookup_table")
    t = object.__new__(lut_mod.ProxylessNASLatencyTable)
    with open(trim_path) as fh:
        t.lut = yaml.safe_load(fh)
    return t


@pytest.fixture(scope="module")
def ofa_net():
    nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    return nets.OFAProxylessNASNets(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], width_mult=1.0
    ).eval()


def trim_spaces() -> list[spaces.SearchSpace]:
    """The proxyless spaces cut to what mobile_trim.yaml covers: it was measured for the
    original ProxylessNAS space, expand ratios {3, 6} only, at 224."""
    ofa_sp = spaces.get("ofa-proxyless", [224])
    comp = spaces.get("compofa-proxyless", [224])
    return [
        dataclasses.replace(ofa_sp, expand_choices=(3, 6)),
        dataclasses.replace(comp, coupling=tuple(p for p in comp.coupling if p[1] != 4)),
    ]


def test_import_single_file_infers_resolution(trim_path: Path):
    table = import_ofa_dir(trim_path, width_mult=1.0, base="proxyless")
    assert table.resolutions == (224,)
    assert table.key_style == "ofa-proxyless"
    raw = yaml.safe_load(trim_path.read_text())
    assert len(table) == len(raw)
    for key, v in raw.items():  # var in the file, std in the table
        assert table.entries[224][key].mean_ms == v["mean"]
        assert table.entries[224][key].std_ms == pytest.approx(v["var"] ** 0.5, rel=1e-12)


@pytest.mark.parametrize("which", [0, 1])
def test_prediction_equals_ofa_proxyless_latency_table(trim_path, ofa_table, ofa_net, which):
    table = import_ofa_dir(trim_path, width_mult=1.0, base="proxyless")
    space = trim_spaces()[which]
    archs = space.sample_many(40, np.random.default_rng(which))
    got = table.predict_ms(archs, width_mult=1.0)
    for i, arch in enumerate(archs):
        spec = arch.to_ofa()
        ofa_net.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
        if i < 8:  # the network form OFA's search uses (built subnets are slower to make)
            want = ofa_table.predict_network_latency(ofa_net.get_active_subnet(), 224)
        else:
            config = ofa_net.get_active_net_config()
            want = ofa_table.predict_network_latency_given_config(config, 224)
        assert got[i] == pytest.approx(want, rel=1e-12), arch.key()


def test_breakdown_keys_are_the_ones_ofa_queries(trim_path, ofa_table, ofa_net):
    table = import_ofa_dir(trim_path, width_mult=1.0, base="proxyless")
    queried: list[str] = []

    class Recording(dict):
        def __getitem__(self, key: str) -> object:
            queried.append(key)
            return super().__getitem__(key)

    arch = trim_spaces()[0].sample(np.random.default_rng(11))
    spec = arch.to_ofa()
    ofa_net.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
    config = ofa_net.get_active_net_config()
    plain = ofa_table.lut
    ofa_table.lut = Recording(plain)
    try:
        ofa_table.predict_network_latency_given_config(config, 224)
    finally:
        ofa_table.lut = plain
    assert [k for k, _ in table.predict_breakdown(arch)] == queried
    assert table.keys(arch)[-2:] == [
        "Conv_1-input:7x7x320-output:7x7x1280",
        "Logits-input:7x7x1280-output:1000",
    ]


def test_expand_4_is_refused_naming_the_missing_key(trim_path):
    table = import_ofa_dir(trim_path, width_mult=1.0, base="proxyless")
    arch = spaces.get("compofa-proxyless").parse(
        {"ks": [3] * 21, "e": [4] * 21, "d": [3, 3, 3, 3, 3, 1], "r": [224]}
    )
    with pytest.raises(LutError, match="expand:4-kernel:3"):
        table.predict_ms([arch])


def _synthetic(space: spaces.SearchSpace, seed: int) -> LatencyTable:
    rng = np.random.default_rng(seed)
    layers = unique_layers(space, width_mult=1.3)
    entries = {
        r: {k: LutEntry(count=5, mean_ms=float(rng.uniform(0.1, 3)), std_ms=0.0) for k in keyed}
        for r, keyed in layers.items()
    }
    return LatencyTable(base="proxyless", width_mult=1.3, entries=entries)


def test_unique_layers_are_exactly_the_layers_of_every_compofa_proxyless_arch():
    space = spaces.get("compofa-proxyless", [128, 224])
    layers = unique_layers(space, width_mult=1.3)
    table = _synthetic(space, 0)
    seen: dict[int, set[str]] = {r: set() for r in space.resolutions}
    for arch in space.enumerate():
        seen[arch.resolution].update(table.keys(arch))
    assert {r: set(v) for r, v in layers.items()} == seen
    # Expand 1 for the fixed first block, and the last block's three widths.
    assert any("-expand:1-" in k for k in layers[224])
    assert {k.split("-expand:")[1][0] for k in layers[224] if "output:7x7x416" in k} == {
        "3",
        "4",
        "6",
    }


@pytest.mark.parametrize("space_name", ["ofa-proxyless", "compofa-proxyless"])
def test_vectorized_equals_per_arch_sum(space_name):
    space = spaces.get(space_name, [160, 224])
    table = _synthetic(space, 3)
    archs = space.sample_many(200, np.random.default_rng(4))
    fast = table.predict_ms(archs)
    slow = np.array([sum(v for _, v in table.predict_breakdown(a)) for a in archs])
    np.testing.assert_allclose(fast, slow, rtol=1e-12)


def test_single_layer_models_exist_for_every_key():
    """Each unique layer builds and runs as a single-layer model (what lut build measures)."""
    from compofa_bench import supernet

    space = spaces.get("compofa-proxyless", [64])
    layers = unique_layers(space, width_mult=1.0)[64]
    for spec in layers.values():
        module = supernet.build_layer(spec)
        with torch.no_grad():
            out = module(torch.randn(supernet.layer_input_shape(spec)))
        assert out.shape[1] == spec.out_c


def test_cli_import_and_predict(trim_path, ofa_table, ofa_net, tmp_path, capsys):
    out = tmp_path / "trim.json"
    args = ["lut", "import-ofa", str(trim_path), "--base", "proxyless", "--width-mult", "1.0"]
    assert main([*args, "--out", str(out)]) == 0
    arch = trim_spaces()[1].sample(np.random.default_rng(2))
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(json.dumps(arch.to_ofa()))
    capsys.readouterr()
    assert main(["lut", "predict", "--lut", str(out), str(arch_file), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    spec = arch.to_ofa()
    ofa_net.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
    want = ofa_table.predict_network_latency_given_config(ofa_net.get_active_net_config(), 224)
    assert got["latency_ms"] == pytest.approx(want, rel=1e-12)
    assert len(got["layers"]) == 2 + sum(arch.d) + 2
    # An MobileNetV3 arch against the proxyless table: one line, exit 2.
    arch_file.write_text(json.dumps(spaces.get("compofa").largest(224).to_ofa()))
    assert main(["lut", "predict", "--lut", str(out), str(arch_file)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
