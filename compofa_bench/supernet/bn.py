"""Batch-norm recalibration for a subnet.

A subnet inherits BN running statistics that were accumulated over many different subnets;
recomputing them on a few batches restores its accuracy. This follows OFA's
``set_running_statistics``: each BN normalises with the statistics of the current batch while
the per-batch mean and (biased) variance are averaged over all batches, weighted by batch size
(a cumulative average, i.e. momentum ``None``), and written as the running statistics at the end.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from compofa_bench.errors import SupernetError
from compofa_bench.supernet.dynamic_ops import DynamicBatchNorm2d


class _Running:
    """Batch-size weighted average of per-channel statistics over the first C channels."""

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        mean = x.mean(dim=(0, 2, 3))
        var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
        n = x.size(0)
        if self.mean is None or self.var is None:
            self.mean, self.var = mean * n, var * n
        else:
            if mean.numel() != self.mean.numel():
                raise SupernetError("the subnet changed width between recalibration batches")
            self.mean, self.var = self.mean + mean * n, self.var + var * n
        self.count += n


def _batch_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]  # (images, labels) as data loaders yield them
    raise SupernetError(
        f"recalibration batches must be tensors or (images, labels) pairs, got "
        f"{type(batch).__name__}"
    )


@torch.no_grad()
def recalibrate_bn(module: nn.Module, batches: Iterable[Any]) -> int:
    """Recompute the running mean/var of every BN in ``module`` on ``batches``.

    Works on extracted subnets (plain ``nn.BatchNorm2d``) and on a supernet with an active
    subnet (only the active channel prefix of each dynamic BN is rewritten). Weights, the
    module's train/eval mode and BN momentum are left as they were. Returns the number of
    images seen.
    """
    targets: dict[nn.Module, tuple[nn.BatchNorm2d, _Running]] = {}
    inner = {id(m.bn) for m in module.modules() if isinstance(m, DynamicBatchNorm2d)}
    for m in module.modules():
        if isinstance(m, DynamicBatchNorm2d):
            targets[m] = (m.bn, _Running())
        elif isinstance(m, nn.BatchNorm2d) and id(m) not in inner:
            targets[m] = (m, _Running())
    if not targets:
        return 0

    was_training = {m: m.training for m in module.modules()}
    saved = {
        bn: (
            bn.momentum,
            None if bn.num_batches_tracked is None else bn.num_batches_tracked.clone(),
        )
        for bn, _ in targets.values()
    }
    hooks = [
        m.register_forward_pre_hook(lambda _m, args, r=running: r.update(args[0]))
        for m, (_, running) in targets.items()
    ]
    seen = 0
    try:
        module.eval()
        for m in targets:
            m.train()  # normalise with batch statistics, as OFA does while collecting them
        for bn, _ in targets.values():
            bn.train()
            bn.momentum = 0.0  # leave running stats alone until the final write
        for batch in batches:
            x = _batch_tensor(batch)
            device = next((p.device for p in module.parameters()), x.device)
            module(x.to(device))
            seen += x.size(0)
    finally:
        for h in hooks:
            h.remove()
        for bn, (momentum, tracked) in saved.items():
            bn.momentum = momentum
            if tracked is not None:
                bn.num_batches_tracked.copy_(tracked)
        for m, flag in was_training.items():
            m.training = flag
    if seen == 0:
        raise SupernetError("no batches given for BN recalibration")
    for bn, running in targets.values():
        if running.mean is None or running.var is None:
            continue  # not on the active path
        c = running.mean.numel()
        bn.running_mean[:c].copy_(running.mean / running.count)
        bn.running_var[:c].copy_(running.var / running.count)
    return seen
