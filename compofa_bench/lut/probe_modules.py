"""The PyTorch modules of build-method probes (see :mod:`compofa_bench.lut.methods`); kept
apart so that the methods' names and settings load without torch."""

from __future__ import annotations

import torch
import torch.nn as nn


class Empty(nn.Module):
    """One call of a trivial graph (a one-element slice plus a constant): what every model
    pays besides its layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :1, :1] + 1.0 if x.dim() == 4 else x[:, :1] + 1.0


class Sequence_(nn.Module):
    """Layers in sequence, each feeding the next; ``flatten[i]`` flattens layer i's input
    (a 1x1 feature map into a classifier, as the network does)."""

    def __init__(self, layers: list[nn.Module], flatten: list[bool]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.flatten = list(flatten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for f, layer in zip(self.flatten, self.layers, strict=True):
            x = layer(torch.flatten(x, 1) if f else x)
        return x


class FanOut(nn.Module):
    """Copies of a layer applied to one input; one element of each output is summed, so the
    model has one output (what the adapters bind) and no copy can be pruned."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for layer in self.layers:
            out = layer(x)
            picked = out[:, :1, :1, :1] if out.dim() == 4 else out[:, :1]
            total = picked if total is None else total + picked
        assert total is not None
        return total
