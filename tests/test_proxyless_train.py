"""The ProxylessNAS trainer recipes: they load, every phase's space is a proxyless space whose
single-block last stage stays at depth 1, and the CompOFA-Proxyless recipe runs end to end
(teacher, then a compound phase with distillation and channel re-sorting) on Fashion-MNIST."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from compofa_bench import data, supernet
from compofa_bench.errors import TrainError
from compofa_bench.train import recipe as R
from compofa_bench.train.trainer import TrainConfig, Trainer

NAMES = ("ofa-proxyless", "compofa-proxyless")


@pytest.mark.parametrize("name", NAMES)
def test_recipe_loads_with_proxyless_spaces(name: str) -> None:
    r = R.load(R.trainers_dir() / f"{name}.toml")
    assert (r.base, r.width_mult, r.space) == ("proxyless", 1.3, name)
    assert r.phases[0].is_teacher
    for p in r.phases:
        space = p.search_space(r.resolutions)
        assert space.base == "proxyless"
        assert space.depth_choices[-1] == (1,), p.name
        assert space.size() > 0
    teacher = r.phases[0].search_space(r.resolutions).largest(224)
    assert teacher.d == (4, 4, 4, 4, 4, 1) and set(teacher.e) == {6}


def test_recipe_mixing_bases_is_refused(tmp_path) -> None:
    text = (R.trainers_dir() / "compofa-proxyless.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(
        text.replace(
            'space = "compofa-proxyless"\nsubnets_per_step',
            'space = "compofa"\nsubnets_per_step',
            1,
        )
    )
    with pytest.raises(TrainError, match="compofa is a mbv3 space"):
        R.load(bad)


@pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)
def test_compofa_proxyless_recipe_trains(tmp_path) -> None:
    r = R.load(R.trainers_dir() / "compofa-proxyless.toml")
    r = dataclasses.replace(r, width_mult=1.0, batch_size=4, reference_batch_size=4)
    r = r.scaled(1 / 180)  # teacher 1 epoch of 4 steps, compound-1 well under one epoch
    torch.set_num_threads(1)
    cfg = TrainConfig(
        data="fashion-mnist",
        out=tmp_path / "run",
        subset=16,
        resolutions=(32,),
        device="cpu",
        quiet=True,
        max_steps=7,
    )
    trainer = Trainer(r, cfg)
    result = trainer.run()
    assert result.position.phase >= 1  # the teacher phase finished; distillation ran
    assert result.last_loss is not None and torch.isfinite(torch.tensor(result.last_loss))
    model = trainer.model
    assert model.config.base == "proxyless"
    # The trained supernet still extracts subnets of the space.
    arch = r.phases[1].search_space((32,)).smallest(32)
    sub = model.eval().extract(arch)
    with torch.no_grad():
        assert sub(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert supernet.count_params(arch, 1.0, "proxyless", n_classes=10) == sum(
        p.numel() for p in sub.parameters()
    )


def test_evaluate_loads_ofa_proxyless_w13_file(tmp_path) -> None:
    """`evaluate --checkpoint ofa_proxyless_d234_e346_k357_w1.3` on a proxyless space: the
    file's width is found from its shapes and the weights load with OFA's key names."""
    nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")
    from compofa_bench import spaces
    from compofa_bench.train.evaluate import load_supernet

    torch.manual_seed(0)
    ofa = nets.OFAProxylessNASNets(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], width_mult=1.3
    ).eval()
    path = tmp_path / "ofa_proxyless_d234_e346_k357_w1.3"
    torch.save(ofa.state_dict(), path)
    net = load_supernet(path, 1000, torch.device("cpu"), base="proxyless").eval()
    assert net.config.width_mult == 1.3
    arch = spaces.get("compofa-proxyless").smallest(128)
    spec = arch.to_ofa()
    ofa.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        net.set_active(arch)
        torch.testing.assert_close(net(x), ofa(x), rtol=1e-4, atol=1e-5)
