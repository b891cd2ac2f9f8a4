"""The base-agnostic elastic supernet: fixed stem and head around elastic stages.

A base (MobileNetV3 in :mod:`mbv3`, ProxylessNAS later) builds the modules and supplies its
layer geometry; this class handles what every base shares: selecting a subnet
(:meth:`set_active`), running it, extracting it as a standalone static net, loading OFA/CompOFA
checkpoints and reorganising middle channels for training.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compofa_bench.errors import ArchError, SupernetError
from compofa_bench.spaces import Arch
from compofa_bench.supernet.dynamic_ops import DynamicMBConv
from compofa_bench.supernet.geometry import LayerSpec
from compofa_bench.supernet.static_layers import LinearHead, Residual, StaticNet, build_layer


@dataclass(frozen=True)
class SupernetConfig:
    """What a supernet was built with (``net.config``)."""

    base: str
    width_mult: float
    n_classes: int
    dropout_rate: float
    kernel_list: tuple[int, ...]
    expand_list: tuple[int, ...]
    depth_list: tuple[int, ...]
    stage_sizes: tuple[int, ...]


class ElasticSupernet(nn.Module):
    """Weight-shared supernet.

    Modules (names as in the ofa package, so state-dict keys match): ``first_conv``,
    ``blocks`` (``blocks[:n_fixed]`` static, then one :class:`DynamicMBConv` per layer slot,
    each wrapped in :class:`Residual`), then the head modules named in ``head_order``.
    ``head_names`` maps geometry kinds (``Conv_1``, ``AvgPool2D``, ...) to those names.
    """

    def __init__(
        self,
        config: SupernetConfig,
        first_conv: nn.Module,
        fixed_blocks: Sequence[nn.Module],
        elastic_blocks: Sequence[Residual],
        head: Sequence[tuple[str, nn.Module]],
        head_names: Mapping[str, str],
        specs_fn: Callable[[Arch], list[LayerSpec]],
    ) -> None:
        super().__init__()
        self.config = config
        self.first_conv = first_conv
        self.blocks = nn.ModuleList([*fixed_blocks, *elastic_blocks])
        for name, module in head:
            self.add_module(name, module)
        self.head_order: tuple[str, ...] = tuple(name for name, _ in head)
        self.head_names = dict(head_names)
        self.n_fixed = len(fixed_blocks)
        starts = [
            self.n_fixed + sum(config.stage_sizes[:i]) for i in range(len(config.stage_sizes))
        ]
        self.stage_blocks: tuple[tuple[int, ...], ...] = tuple(
            tuple(range(s, s + n)) for s, n in zip(starts, config.stage_sizes, strict=True)
        )
        self._specs_fn = specs_fn
        self.active_depths: list[int] = list(config.stage_sizes)

    # ------------------------------------------------------------------ selection
    def elastic_block(self, slot: int) -> DynamicMBConv:
        conv = self.blocks[self.n_fixed + slot].conv
        assert isinstance(conv, DynamicMBConv)
        return conv

    def check_arch(self, arch: Arch) -> Arch:
        """Raise :class:`ArchError` unless the supernet can run ``arch``."""
        cfg = self.config
        if not isinstance(arch, Arch):
            raise ArchError(f"expected an Arch, got {type(arch).__name__}")
        if arch.stage_sizes != cfg.stage_sizes:
            raise ArchError(
                f"arch has stage layout {list(arch.stage_sizes)}; the {cfg.base} supernet has "
                f"{list(cfg.stage_sizes)}"
            )
        for stage, slot, layer in arch.active_layers():
            if arch.ks[slot] not in cfg.kernel_list:
                raise ArchError(
                    f"ks[{slot}] (stage {stage}, layer {layer}): kernel {arch.ks[slot]} not in "
                    f"the supernet's kernels {list(cfg.kernel_list)}"
                )
            if arch.e[slot] not in cfg.expand_list:
                raise ArchError(
                    f"e[{slot}] (stage {stage}, layer {layer}): expand ratio {arch.e[slot]} not "
                    f"in the supernet's expand ratios {list(cfg.expand_list)}"
                )
        return arch

    def set_active(self, arch: Arch) -> None:
        """Make ``forward`` run the subnet ``arch`` (its resolution is the caller's business:
        feed inputs of that size)."""
        self.check_arch(arch)
        for slot in range(sum(self.config.stage_sizes)):
            self.elastic_block(slot).set_active(arch.ks[slot], arch.e[slot])
        self.active_depths = list(arch.d)

    def set_max(self) -> None:
        """Activate the largest subnet."""
        cfg = self.config
        for slot in range(sum(cfg.stage_sizes)):
            self.elastic_block(slot).set_active(max(cfg.kernel_list), max(cfg.expand_list))
        self.active_depths = list(cfg.stage_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_conv(x)
        for block in self.blocks[: self.n_fixed]:
            x = block(x)
        for depth, idx in zip(self.active_depths, self.stage_blocks, strict=True):
            for i in idx[:depth]:
                x = self.blocks[i](x)
        for name in self.head_order:
            module = getattr(self, name)
            if isinstance(module, LinearHead):
                x = torch.flatten(x, 1)
            x = module(x)
        return x

    # ------------------------------------------------------------------ geometry
    def layer_specs(self, arch: Arch) -> list[LayerSpec]:
        self.check_arch(arch)
        return self._specs_fn(arch)

    # ------------------------------------------------------------------ extraction
    def extract(self, arch: Arch | None = None) -> StaticNet:
        """A standalone static subnet with the weights of ``arch`` (default: the active one)
        copied in. It keeps no reference to the supernet and has the supernet's train/eval mode.
        """
        if arch is None:
            arch = self.active_arch()
        specs = self.layer_specs(arch)
        n = sum(self.config.stage_sizes)
        saved = [
            (self.elastic_block(s).active_kernel, self.elastic_block(s).active_expand)
            for s in range(n)
        ]
        try:
            return self._extract(arch, specs)
        finally:
            for s, (k, e) in enumerate(saved):
                self.elastic_block(s).set_active(k, e)

    def _extract(self, arch: Arch, specs: list[LayerSpec]) -> StaticNet:
        device = next(self.parameters()).device
        blocks_specs = [s for s in specs if s.kind == "expanded_conv"]
        first_conv = _materialize(
            lambda: build_layer(specs[0]), self.first_conv.state_dict(), device
        )
        blocks: list[nn.Module] = [
            _materialize(lambda s=s: build_layer(s), self.blocks[i].state_dict(), device)
            for i, s in enumerate(blocks_specs[: self.n_fixed])
        ]
        active = [slot for _, slot, _ in arch.active_layers()]
        for spec, slot in zip(blocks_specs[self.n_fixed :], active, strict=True):
            src = self.blocks[self.n_fixed + slot]
            dyn = src.conv
            dyn.set_active(arch.ks[slot], arch.e[slot])
            body = _materialize(
                lambda d=dyn, c=spec.in_c: d.build_static(c),
                dyn.active_state_dict(spec.in_c),
                device,
            )
            blocks.append(Residual(body, src.shortcut))
        head: list[tuple[str, nn.Module]] = []
        # The classifier always sees the pooled vector here: pooling is a head module of its own
        # even where the geometry folds it into Logits (in_hw > 1).
        head_specs = {
            self.head_names[s.kind]: replace(s, in_hw=1) if s.kind == "Logits" else s
            for s in specs
            if s.kind in self.head_names
        }
        for name in self.head_order:
            if name not in head_specs:
                # A head module with no layer of its own in the geometry (ProxylessNAS's global
                # pooling, which its tables fold into Logits): weight-free, so a copy will do.
                head.append((name, copy.deepcopy(getattr(self, name))))
                continue
            module = _materialize(
                lambda s=head_specs[name]: build_layer(s, self.config.dropout_rate),
                getattr(self, name).state_dict(),
                device,
            )
            head.append((name, module))
        net = StaticNet(first_conv, blocks, head, resolution=arch.resolution)
        _copy_bn_settings(self, net)
        return net.train(self.training)

    def active_arch(self, resolution: int = 224) -> Arch:
        """The subnet that ``forward`` currently runs, as an Arch."""
        n = sum(self.config.stage_sizes)
        ks = tuple(self.elastic_block(s).active_kernel for s in range(n))
        e = tuple(int(self.elastic_block(s).active_expand) for s in range(n))
        return Arch(ks, e, tuple(self.active_depths), resolution, self.config.stage_sizes)

    # ------------------------------------------------------------------ checkpoints
    def load_ofa_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load an OFA/CompOFA state dict (old key names and ``module.`` prefixes accepted).
        Raises :class:`CheckpointError` listing missing/unexpected keys and shape mismatches."""
        from compofa_bench.supernet.checkpoint import load_into

        load_into(self, state_dict)

    def load_checkpoint(self, path: str | Path) -> None:
        """Load a ``.pth``/``.pth.tar`` file (raw state dict or ``{"state_dict": ...}``)."""
        from compofa_bench.supernet.checkpoint import read_checkpoint

        self.load_ofa_state_dict(read_checkpoint(path))

    # ------------------------------------------------------------------ training support
    def reorganize_middle_weights(self, expand_ratio_stage: int = 0) -> None:
        """Sort every elastic block's middle channels by importance (OFA's
        ``re_organize_middle_weights``); the largest subnet computes the same function."""
        for slot in range(sum(self.config.stage_sizes)):
            if self.elastic_block(slot).reorganize_middle_weights(expand_ratio_stage) is not None:
                raise SupernetError("reorganizing a block without expand conv is not supported")


def _materialize(
    make: Callable[[], nn.Module], state: Mapping[str, torch.Tensor], device: torch.device
) -> nn.Module:
    """Build a module without random init (on the meta device), then put copies of ``state``
    in place of its tensors.

    Skipping init and ``load_state_dict`` makes extraction several times faster; every tensor
    is a fresh copy, so the result shares no storage with the supernet."""
    with torch.device("meta"):
        module = make()
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    if expected != given:
        raise SupernetError(f"internal: extracted layer shapes differ: {expected} vs {given}")
    for key, tensor in state.items():
        owner_name, _, attr = key.rpartition(".")
        owner = module.get_submodule(owner_name)
        value = tensor.detach().to(device=device, copy=True)
        if attr in owner._parameters:
            owner._parameters[attr] = nn.Parameter(value)
        else:
            owner._buffers[attr] = value
    return module


def _copy_bn_settings(src: nn.Module, dst: nn.Module) -> None:
    """Extracted BNs keep the supernet's momentum/eps (all BNs share them, as in OFA)."""
    bns = [m for m in src.modules() if isinstance(m, nn.BatchNorm2d)]
    if not bns:
        return
    momentum, eps = bns[0].momentum, bns[0].eps
    for m in dst.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum, m.eps = momentum, eps


def check_build_args(
    base: str,
    width_mult: float,
    n_classes: int,
    dropout_rate: float,
    depth_list: Sequence[int],
    max_depth: int,
) -> None:
    """Validate the arguments every base's builder takes (SupernetError naming the bad one)."""
    if width_mult <= 0:
        raise SupernetError(f"width_mult must be positive, got {width_mult}")
    if n_classes < 1:
        raise SupernetError(f"n_classes must be >= 1, got {n_classes}")
    if not 0 <= dropout_rate < 1:
        raise SupernetError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
    if max(depth_list) != max_depth:
        raise SupernetError(f"{base} stages hold {max_depth} blocks at most")
