"""Random weights for supernet tests: fresh nets hold identities and zeros that hide bugs.

A freshly built net has BN statistics 0/1, BN affine 1/0, zero biases and kernel-transform
matrices equal to the identity, so a wrong slice, a missing transform, a swapped activation or
a wrong BN eps would not change the logits. :func:`randomize` makes each of them matter.
"""

from __future__ import annotations

import torch
from torch import nn

Range = tuple[float, float]


def _uniform(n: int, bounds: Range, g: torch.Generator) -> torch.Tensor:
    lo, hi = bounds
    return torch.rand(n, generator=g) * (hi - lo) + lo


def randomize(
    net: nn.Module,
    g: torch.Generator,
    *,
    var: Range = (0.5, 1.5),
    gamma: Range = (0.5, 1.5),
) -> None:
    """Perturb kernel-transform matrices, set biases and every BatchNorm2d's stats and affine.

    ``var`` and ``gamma`` bound the uniform running variances and BN scales. Callers that must
    see BN eps in the output pass small variances (ProxylessNAS uses eps 1e-3, not 1e-5).
    """
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("_matrix"):
                p.add_(torch.randn(p.shape, generator=g) * 0.15)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(_uniform(m.num_features, var, g))
                m.weight.copy_(_uniform(m.num_features, gamma, g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
