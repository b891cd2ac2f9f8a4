"""Which network an arch is a subnet of: one frozen record instead of four loose parameters.

A subnet is fixed by its :class:`~compofa_bench.spaces.Arch` *and* the supernet it is cut
from: the base (``mbv3`` or ``proxyless``), the width multiplier, the number of classes and the
weights (a checkpoint, or random init, which is fine for latency and meaningless for
accuracy). Those four travel together through profiling, measured-latency search and export.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NetSpec:
    """The supernet a subnet is extracted from. ``checkpoint`` None: random init."""

    base: str = "mbv3"
    width_mult: float = 1.0
    n_classes: int = 1000
    checkpoint: str | None = None

    def replace(self, **changes: Any) -> NetSpec:
        return dataclasses.replace(self, **changes)
