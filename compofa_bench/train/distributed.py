"""torch.distributed plumbing for torchrun (NCCL on GPU, gloo on CPU).

Why no DistributedDataParallel: a supernet step runs several subnets, each touching a
different subset of parameters (and prefix slices of shared tensors). DDP would need
``find_unused_parameters=True`` — a graph traversal per backward — and would all-reduce after
every subnet's backward. Instead the n subnets' gradients accumulate locally and are averaged
across ranks with one coalesced all-reduce per optimizer step. Every rank samples the same
subnets (seeded from the step), so the set of parameters with gradients agrees on all ranks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass(frozen=True)
class Context:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> Context:
    """Join the process group torchrun describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Context(rank, world, local_rank, dev)


def shutdown(ctx: Context) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def _average(tensors: list[torch.Tensor], ctx: Context) -> None:
    """Average ``tensors`` in place across ranks: one flat buffer, one all-reduce (one
    collective per step instead of one per tensor)."""
    if not ctx.distributed or not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat.div_(ctx.world_size)
    for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors), strict=True):
        t.copy_(synced)


def average_gradients(model: nn.Module, ctx: Context) -> None:
    _average([p.grad for p in model.parameters() if p.grad is not None], ctx)


def average_buffers(model: nn.Module, ctx: Context) -> None:
    """Average BN running statistics (each rank saw different images) before a checkpoint."""
    _average([b for b in model.buffers() if b.is_floating_point()], ctx)


def broadcast_state(model: nn.Module, ctx: Context) -> None:
    """Rank 0's parameters and buffers everywhere (as DDP does at construction)."""
    if not ctx.distributed:
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)


def any_flag(flag: bool, ctx: Context) -> bool:
    """True on every rank when any rank raised ``flag`` (a stop request)."""
    if not ctx.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier()
