"""ProxylessNAS supernet against the ofa package's OFAProxylessNASNets: same state-dict keys,
same logits of supernet and extracted subnet, same MACs/params, on random archs of both
proxyless spaces at w1.0 and w1.3; plus the proxyless spaces themselves.

The OFA net's BN statistics/affine parameters and kernel-transform matrices are randomised so
that a wrong slice, a missing transform, a wrong activation or BN eps shows in the logits.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _ofa_compare import assert_counts_match_ofa, macs_and_output, rel_diff
from _weights import randomize
from torch import nn

from compofa_bench import spaces, supernet
from compofa_bench.errors import ArchError, CheckpointError

ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

WIDTHS = (1.0, 1.3)
SPACES = ("ofa-proxyless", "compofa-proxyless")
RESOLUTIONS = (64, 96, 128)  # the check is resolution-free; small inputs keep it fast
N_ARCHS = 30
REL_TOL = 1e-4


def make_ofa(width: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = ofa_nets.OFAProxylessNASNets(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], width_mult=width
    )
    # Small variances make BN eps (1e-3 here, not 1e-5) visible in the logits.
    randomize(net, torch.Generator().manual_seed(seed + 1), var=(0.002, 0.052), gamma=(0.1, 0.5))
    return net.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs() -> dict[float, tuple[nn.Module, supernet.ElasticSupernet]]:
    out = {}
    for width in WIDTHS:
        ofa = make_ofa(width)
        ours = supernet.build("proxyless", width_mult=width)
        ours.load_ofa_state_dict(ofa.state_dict())
        out[width] = (ofa, ours.eval())
    return out


@pytest.mark.parametrize("width", WIDTHS)
def test_state_dict_keys_and_shapes_identical(pairs: dict, width: float) -> None:
    ofa, ours = pairs[width]
    ofa_sd, our_sd = ofa.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ofa_sd)
    for k, v in our_sd.items():
        assert v.shape == ofa_sd[k].shape, k
        assert torch.equal(v, ofa_sd[k]), k
    bn = next(m for m in ours.modules() if isinstance(m, nn.BatchNorm2d))
    assert (bn.momentum, bn.eps) == (0.1, 1e-3)


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("width", WIDTHS)
def test_logits_and_counts_match_ofa(pairs: dict, width: float, space_name: str) -> None:
    ofa, ours = pairs[width]
    space = spaces.get(space_name, resolutions=RESOLUTIONS)
    rng = np.random.default_rng([int(width * 10), len(space_name)])
    archs = space.sample_many(N_ARCHS, rng)
    assert len({a.resolution for a in archs}) > 1
    gen = torch.Generator().manual_seed(7)
    for i, arch in enumerate(archs):
        r = arch.resolution
        x = torch.randn(1, 3, r, r, generator=gen)
        spec = arch.to_ofa()
        assert (len(spec["ks"]), len(spec["e"]), len(spec["d"]), spec["d"][-1]) == (21, 21, 6, 1)
        ofa.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
        ofa_sub = ofa.get_active_subnet().eval()
        ofa_macs, ref = macs_and_output(ofa_sub, x)
        with torch.no_grad():
            ours.set_active(arch)
            got = ours(x)
        sub = ours.extract(arch).eval()
        sub_macs, got_sub = macs_and_output(sub, x)
        # OFA's subnet equals OFA's supernet (its own invariant, checked at 224 below), so
        # both of ours are compared with it.
        assert rel_diff(got, ref) <= REL_TOL, (arch.key(), rel_diff(got, ref))
        assert rel_diff(got_sub, ref) <= REL_TOL, (arch.key(), rel_diff(got_sub, ref))
        # The extracted subnet carries OFA's static subnet's keys and tensors.
        ofa_sub_sd = ofa_sub.state_dict()
        sub_sd = sub.state_dict()
        assert list(sub_sd) == list(ofa_sub_sd)
        assert all(torch.equal(v, ofa_sub_sd[k]) for k, v in sub_sd.items())

        assert_counts_match_ofa(
            arch, width, "proxyless", ofa_sub, sub, (ofa_macs, sub_macs), check_flops=i < 2
        )


def test_released_w13_largest_subnet_matches(pairs: dict) -> None:
    """ofa_proxyless_d234_e346_k357_w1.3's largest subnet at 224 (set_max_net)."""
    ofa, ours = pairs[1.3]
    arch = spaces.get("ofa-proxyless").largest(224)
    assert arch.d == (4, 4, 4, 4, 4, 1)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    ofa.set_max_net()
    with torch.no_grad():
        ref = ofa(x)
        ref_sub = ofa.get_active_subnet().eval()(x)
        ours.set_active(arch)
        got = ours(x)
    assert rel_diff(ref_sub, ref) <= REL_TOL
    assert rel_diff(got, ref) <= REL_TOL


def test_layer_specs_shapes_follow_the_net(pairs: dict) -> None:
    """Every expanded_conv spec's input/output shape is what the block really sees/produces."""
    _, ours = pairs[1.0]
    arch = spaces.get("ofa-proxyless").sample(np.random.default_rng(5))
    specs = ours.layer_specs(arch)
    assert [s.kind for s in specs[:2]] == ["Conv", "expanded_conv"]
    assert [s.kind for s in specs[-2:]] == ["Conv_1", "Logits"]
    assert len(specs) == 2 + sum(arch.d) + 2
    sub = ours.extract(arch).eval()
    r = arch.resolution
    shapes: list[tuple[int, ...]] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: shapes.append((*i[0].shape, *o.shape)))
        for b in sub.blocks
    ]
    with torch.no_grad():
        sub(torch.randn(1, 3, r, r))
    for h in hooks:
        h.remove()
    blocks = [s for s in specs if s.kind == "expanded_conv"]
    assert shapes == [(1, s.in_c, s.in_hw, s.in_hw, 1, s.out_c, s.out_hw, s.out_hw) for s in blocks]


def test_build_layer_logits_includes_pooling() -> None:
    arch = spaces.get("compofa-proxyless").largest(160)
    specs = supernet.layer_specs(arch, 1.0, base="proxyless")
    logits = specs[-1]
    assert (logits.in_hw, logits.in_c, logits.out_c) == (5, 1280, 1000)
    for spec in specs:
        module = supernet.build_layer(spec)
        shape = supernet.layer_input_shape(spec, batch_size=2)
        with torch.no_grad():
            out = module(torch.randn(shape))
        want = (
            (2, spec.out_c) if spec.kind == "Logits" else (2, spec.out_c, spec.out_hw, spec.out_hw)
        )
        assert tuple(out.shape) == want, spec


def test_spaces_and_arch_ofa_form() -> None:
    ofa_sp, comp = spaces.get("ofa-proxyless"), spaces.get("compofa-proxyless")
    assert ofa_sp.stage_sizes == comp.stage_sizes == spaces.PROXYLESS_STAGE_SIZES
    assert (ofa_sp.base, comp.base) == ("proxyless", "proxyless")
    # 5 coupled stages x 3 genes, and the single-block stage's free expand ratio.
    assert comp.structure_count() == 3**6
    assert len(set(comp.enumerate([224]))) == 3**6
    every = list(comp.enumerate([224]))
    assert all(set(a.ks) == {3} for a in every)
    assert {a.e[-1] for a in every} == {3, 4, 6}
    # Extremes include the last block's widest/narrowest expand ratio.
    assert comp.largest(224).e == (6,) * 21 and comp.largest(224).d == (4, 4, 4, 4, 4, 1)
    assert comp.smallest(128).e == (3,) * 21 and comp.smallest(128).d == (2, 2, 2, 2, 2, 1)
    # Per stage of OFA-Proxyless: sum over depth d in {2,3,4} of 9^d; the last stage: 9.
    assert ofa_sp.structure_count() == (9**2 + 9**3 + 9**4) ** 5 * 9
    rng = np.random.default_rng(0)
    for sp in (ofa_sp, comp):
        for a in sp.sample_many(20, rng):
            spec = json.loads(json.dumps(a.to_ofa()))
            assert spaces.Arch.from_ofa(spec) == a  # 21 ks/e and 6 d infer the layout
            assert sp.parse(spec) == a
            b = sp.mutate(a, rng, 0.5)
            sp.validate(sp.crossover(a, b, rng))


def test_compofa_proxyless_rejects_uncoupled_archs() -> None:
    comp = spaces.get("compofa-proxyless")
    good = comp.largest(224).to_ofa()
    bad = dict(good, e=[3, *good["e"][1:]])  # stage 0 has depth 4: expand must be 6
    with pytest.raises(ArchError, match=r"e\[0\].*couples depth 4 with expand 6"):
        comp.parse(bad)
    with pytest.raises(ArchError, match=r"d\[5\]"):
        comp.parse(dict(good, d=[4, 4, 4, 4, 4, 2]))
    with pytest.raises(ArchError, match=r"ks\[0\]"):
        comp.parse(dict(good, ks=[5, *good["ks"][1:]]))
    with pytest.raises(ArchError, match="stage layout"):
        comp.validate(spaces.get("compofa").largest(224))


def test_mbv3_checkpoint_into_proxyless_is_one_clear_error() -> None:
    ours = supernet.build("proxyless", width_mult=1.0)
    with pytest.raises(CheckpointError, match="does not fit"):
        ours.load_ofa_state_dict(supernet.build("mbv3").state_dict())
