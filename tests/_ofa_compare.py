"""Reference checks against the ofa package: integer MAC counts, logit distance, and its
tutorial modules loaded one file at a time."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn


def ofa_tutorial(name: str) -> ModuleType:
    """One file of ``ofa.tutorial`` (skips the test without ``ofa``). The tutorial package's
    __init__ imports gdown and model-zoo code that the tests do not need."""
    ofa = pytest.importorskip("ofa")
    path = Path(ofa.__file__).parent / "tutorial" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_ofa_tutorial_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def macs_and_output(net: nn.Module, x: torch.Tensor) -> tuple[int, torch.Tensor]:
    """Integer MACs by OFA's rules (convs and linears only) plus the forward output.

    ofa.utils.count_net_flops accumulates in float32 and so rounds large counts."""
    total = [0]

    def conv_hook(m: nn.Conv2d, _inp: object, out: torch.Tensor) -> None:
        k = m.weight.shape[2] * m.weight.shape[3]
        total[0] += m.in_channels * out.numel() // out.shape[0] * k // m.groups

    def linear_hook(m: nn.Linear, _inp: object, _out: object) -> None:
        total[0] += m.in_features * m.out_features

    hooks = []
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            out = net(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0] // x.shape[0], out


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the reference ``b``'s largest magnitude."""
    return float((a - b).abs().max() / b.abs().max())


def assert_counts_match_ofa(
    arch,
    width: float,
    base: str,
    ofa_sub: nn.Module,
    sub: nn.Module,
    macs_seen: tuple[int, int],
    check_flops: bool,
) -> None:
    """Our MACs and params computed from the arch alone equal those of OFA's extracted subnet
    and of ours (``macs_seen``: OFA's and ours counted by :func:`macs_and_output`); with
    ``check_flops``, OFA's own float32 counter agrees within its accumulation error."""
    from compofa_bench import supernet

    ofa_utils = pytest.importorskip("ofa.utils")
    r = arch.resolution
    macs = supernet.count_macs(arch, width_mult=width, base=base)
    params = supernet.count_params(arch, width_mult=width, base=base)
    assert macs == macs_seen[0] == macs_seen[1], arch.key()
    assert params == ofa_utils.count_parameters(ofa_sub), arch.key()
    assert params == sum(p.numel() for p in sub.parameters()), arch.key()
    if check_flops:
        flops = ofa_utils.count_net_flops(ofa_sub, (1, 3, r, r))
        assert abs(flops - macs) <= 1e-6 * macs, (flops, macs)
