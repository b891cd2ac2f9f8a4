"""OFA's published specialized subnets (reference data): archs, geometry and counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from compofa_bench import spaces, supernet
from compofa_bench.errors import ArchError
from compofa_bench.supernet.net_config import arch_from_net_config

ofa_networks = pytest.importorskip("ofa.imagenet_classification.networks")


def specialized(reference_dir: Path) -> list[tuple[str, dict, int]]:
    out = []
    for cfg_path in sorted((reference_dir / "compofa" / "ofa_specialized").glob("*/net.config")):
        run = json.loads((cfg_path.parent / "run.config").read_text())
        out.append((cfg_path.parent.name, json.loads(cfg_path.read_text()), run["image_size"]))
    if not out:
        pytest.skip("no specialized net configs in the reference data")
    return out


def integer_macs(net: nn.Module, r: int) -> int:
    total = [0]

    def conv(m: nn.Conv2d, _i: object, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += m.in_channels * out[0].numel() * k // m.groups

    def linear(m: nn.Linear, _i: object, _o: object) -> None:
        total[0] += m.in_features * m.out_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in net.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 3, r, r))
    for h in hooks:
        h.remove()
    return total[0]


def test_specialized_mbv3_configs_round_trip(reference_dir: Path) -> None:
    checked = 0
    nets: dict[float, supernet.ElasticSupernet] = {}
    for name, cfg, r in specialized(reference_dir):
        if cfg["name"] != "MobileNetV3":
            with pytest.raises(ArchError, match="not a MobileNetV3"):
                arch_from_net_config(cfg, r)
            continue
        arch, width = arch_from_net_config(cfg, r)
        spaces.get("ofa").validate(arch, check_resolution=False)
        ofa_net = ofa_networks.MobileNetV3.build_from_config(cfg)
        assert supernet.count_macs(arch, width) == integer_macs(ofa_net, r), name
        assert supernet.count_params(arch, width) == sum(p.numel() for p in ofa_net.parameters()), (
            name
        )
        # The subnet extracted from a supernet has exactly the published layer shapes.
        if width not in nets:
            nets[width] = supernet.build("mbv3", width_mult=width)
        sub = nets[width].extract(arch)
        ofa_shapes = {k: tuple(v.shape) for k, v in ofa_net.state_dict().items()}
        our_shapes = {k: tuple(v.shape) for k, v in sub.state_dict().items()}
        assert our_shapes == ofa_shapes, name
        checked += 1
    assert checked >= 5


def test_bad_net_configs(reference_dir: Path) -> None:
    _name, cfg, r = next(c for c in specialized(reference_dir) if c[1]["name"] == "MobileNetV3")
    bad = json.loads(json.dumps(cfg))
    bad["first_conv"]["out_channels"] = 20
    with pytest.raises(ArchError, match="match no MobileNetV3 supernet width"):
        arch_from_net_config(bad, r)
    bad = json.loads(json.dumps(cfg))
    body = bad["blocks"][2].get("conv", bad["blocks"][2].get("mobile_inverted_conv"))
    body["mid_channels"] = body["mid_channels"] + 8
    with pytest.raises(ArchError, match="mid_channels"):
        arch_from_net_config(bad, r)
    with pytest.raises(ArchError):
        arch_from_net_config({"name": "MobileNetV3", "blocks": 3}, r)
