"""Our supernet against the ofa package's OFAMobileNetV3: same keys, same logits, same counts.

The OFA net is randomly initialised and then its BN statistics/affine parameters, SE biases and
kernel-transform matrices are randomised, so a wrong slice, a missing transform or a swapped
activation shows up in the logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _ofa_compare import assert_counts_match_ofa, macs_and_output, rel_diff
from _weights import randomize
from torch import nn

from compofa_bench import spaces, supernet

ofa_nets = pytest.importorskip("ofa.imagenet_classification.elastic_nn.networks")

WIDTHS = (1.0, 1.2)
SPACES = ("ofa", "compofa", "compofa-ek")
RESOLUTIONS = (128, 144, 160)
N_ARCHS = 30
REL_TOL = 1e-4


def make_ofa(width: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = ofa_nets.OFAMobileNetV3(
        ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6], depth_list=[2, 3, 4], width_mult=width
    )
    randomize(net, torch.Generator().manual_seed(seed + 1), var=(0.5, 2.0))
    return net.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pair_cache() -> dict[float, tuple[nn.Module, supernet.ElasticSupernet]]:
    return {}


def get_pair(cache: dict, width: float) -> tuple[nn.Module, supernet.ElasticSupernet]:
    if width not in cache:
        ofa = make_ofa(width)
        ours = supernet.build("mbv3", width_mult=width)
        ours.load_ofa_state_dict(ofa.state_dict())
        cache[width] = (ofa, ours.eval())
    return cache[width]


@pytest.mark.parametrize("width", WIDTHS)
def test_state_dict_keys_and_shapes_identical(pair_cache: dict, width: float) -> None:
    ofa, ours = get_pair(pair_cache, width)
    ofa_sd, our_sd = ofa.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ofa_sd)
    assert {k: tuple(v.shape) for k, v in our_sd.items()} == {
        k: tuple(v.shape) for k, v in ofa_sd.items()
    }
    for k, v in our_sd.items():
        assert torch.equal(v, ofa_sd[k]), k


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("width", WIDTHS)
def test_logits_and_counts_match_ofa(pair_cache: dict, width: float, space_name: str) -> None:
    ofa, ours = get_pair(pair_cache, width)
    space = spaces.get(space_name, resolutions=RESOLUTIONS)
    rng = np.random.default_rng(100 * WIDTHS.index(width) + SPACES.index(space_name))
    archs = space.sample_many(N_ARCHS, rng)
    assert len({a.resolution for a in archs}) > 1
    gen = torch.Generator().manual_seed(7)
    for i, arch in enumerate(archs):
        r = arch.resolution
        x = torch.randn(1, 3, r, r, generator=gen)
        spec = arch.to_ofa()
        ofa.set_active_subnet(ks=spec["ks"], e=spec["e"], d=spec["d"])
        ofa_sub = ofa.get_active_subnet().eval()
        ours.set_active(arch)
        sub = ours.extract(arch).eval()
        with torch.no_grad():
            ref = ofa(x)
            got = ours(x)
        ofa_macs, ref_sub = macs_and_output(ofa_sub, x)
        our_macs, got_sub = macs_and_output(sub, x)
        assert rel_diff(got, ref) <= REL_TOL, (arch.key(), rel_diff(got, ref))
        assert rel_diff(got_sub, ref_sub) <= REL_TOL, (arch.key(), rel_diff(got_sub, ref_sub))

        assert_counts_match_ofa(
            arch, width, "mbv3", ofa_sub, sub, (ofa_macs, our_macs), check_flops=i < 3
        )


def test_largest_subnet_matches_at_224(pair_cache: dict) -> None:
    ofa, ours = get_pair(pair_cache, 1.0)
    arch = spaces.get("ofa").largest(224)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    ofa.set_max_net()
    with torch.no_grad():
        ref = ofa(x)
        ours.set_active(arch)
        got = ours(x)
    assert rel_diff(got, ref) <= REL_TOL
