"""Per-iteration learning rate: linear warmup, then cosine decay (OFA's schedule).

OFA's warmup raises the rate linearly from ``warmup_lr`` to ``lr`` over the warmup epochs;
the cosine then runs over the remaining ``epochs - warmup_epochs`` epochs:
``0.5 * lr * (1 + cos(pi * t / T))`` with ``t`` counted in iterations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CosineWarmup:
    lr: float
    total_steps: int
    warmup_steps: int = 0
    warmup_lr: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(step - self.warmup_steps, span)
        return 0.5 * self.lr * (1.0 + math.cos(math.pi * t / span))
