"""Weight-shared (dynamic) layers of a once-for-all supernet.

Each op holds the largest weight and runs a prefix slice of it: channels by prefix slicing
(elastic width), kernels by OFA's centre crop followed by learned kernel-transform matrices
(elastic kernel). The active configuration lives in the instance, never in class attributes,
so two supernets in one process cannot disturb each other.

Attribute names mirror the ofa package (``conv``, ``bn``, ``7to5_matrix``, ``fc.reduce``, ...)
so that OFA's state dicts load with identical keys. :class:`DynamicMBConv` is parameterised by
activation, SE, kernel list and expand list, so other bases (ProxylessNAS) reuse it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compofa_bench.errors import SupernetError
from compofa_bench.supernet.geometry import make_divisible, middle_channels, se_channels
from compofa_bench.supernet.static_layers import MBConv, activation, same_padding


def _crop(size: int, sub: int) -> slice:
    """Centre window of ``sub`` within ``size``."""
    start = size // 2 - sub // 2
    return slice(start, start + sub)


class DynamicConv2d(nn.Module):
    """Dense conv whose first ``out`` filters over the first ``in`` inputs are used."""

    def __init__(self, max_in: int, max_out: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.conv = nn.Conv2d(max_in, max_out, kernel, stride, bias=False)

    def active_weight(self, out_c: int, in_c: int) -> torch.Tensor:
        return self.conv.weight[:out_c, :in_c]

    def forward(self, x: torch.Tensor, out_c: int) -> torch.Tensor:
        w = self.active_weight(out_c, x.size(1)).contiguous()
        return F.conv2d(x, w, None, self.stride, same_padding(self.kernel))


class DynamicSeparableConv2d(nn.Module):
    """Depthwise conv with elastic kernel, as OFA does it.

    The ``k``-kernel is derived from the largest by successive steps: centre-crop the next
    larger kernel and map its k*k values through the learned ``{K}to{k}_matrix`` (``F.linear``).
    ``kernel_transform=False`` keeps plain centre cropping (OFA's KERNEL_TRANSFORM_MODE=None).
    """

    def __init__(
        self, max_c: int, kernel_list: Sequence[int], stride: int = 1, kernel_transform: bool = True
    ) -> None:
        super().__init__()
        self.kernel_list = tuple(sorted(set(kernel_list)))
        self.max_kernel = self.kernel_list[-1]
        self.stride = stride
        self.kernel_transform = kernel_transform
        self.conv = nn.Conv2d(max_c, max_c, self.max_kernel, stride, groups=max_c, bias=False)
        if kernel_transform:
            for small, large in zip(self.kernel_list[:-1], self.kernel_list[1:], strict=True):
                # Identity start: before training, a transformed kernel is the plain centre crop.
                self.register_parameter(
                    f"{large}to{small}_matrix", nn.Parameter(torch.eye(small * small))
                )

    def transform_matrix(self, large: int, small: int) -> torch.Tensor:
        return self._parameters[f"{large}to{small}_matrix"]

    def active_weight(self, channels: int, kernel: int) -> torch.Tensor:
        if kernel not in self.kernel_list:
            raise SupernetError(f"kernel {kernel} not in this layer's kernels {self.kernel_list}")
        weight = self.conv.weight[:channels]
        if kernel == self.max_kernel:
            return weight
        if not self.kernel_transform:
            win = _crop(self.max_kernel, kernel)
            return weight[:, :, win, win]
        filt = weight
        for i in range(len(self.kernel_list) - 1, 0, -1):
            large, small = self.kernel_list[i], self.kernel_list[i - 1]
            if large <= kernel:
                break
            win = _crop(large, small)
            flat = filt[:, :, win, win].contiguous().reshape(-1, small * small)
            flat = F.linear(flat, self.transform_matrix(large, small))
            filt = flat.reshape(weight.size(0), weight.size(1), small, small)
        return filt

    def forward(self, x: torch.Tensor, kernel: int) -> torch.Tensor:
        c = x.size(1)
        w = self.active_weight(c, kernel).contiguous()
        return F.conv2d(x, w, None, self.stride, same_padding(kernel), 1, c)


class DynamicBatchNorm2d(nn.Module):
    """BatchNorm over the first C channels of the largest BN."""

    def __init__(self, max_c: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(max_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        c = x.size(1)
        if c == bn.num_features:
            return bn(x)
        factor = 0.0
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        return F.batch_norm(
            x,
            bn.running_mean[:c] if bn.running_mean is not None else None,
            bn.running_var[:c] if bn.running_var is not None else None,
            bn.weight[:c],
            bn.bias[:c],
            bn.training or not bn.track_running_stats,
            factor,
            bn.eps,
        )

    def active_state(self, c: int) -> dict[str, torch.Tensor]:
        """Static ``nn.BatchNorm2d(c)`` state for the first ``c`` channels."""
        bn = self.bn
        out = {"weight": bn.weight[:c], "bias": bn.bias[:c]}
        if bn.running_mean is not None:
            out["running_mean"] = bn.running_mean[:c]
            out["running_var"] = bn.running_var[:c]
            out["num_batches_tracked"] = bn.num_batches_tracked
        return out


class DynamicSE(nn.Module):
    """Squeeze-excite over the first C channels; hidden width ``make_divisible(C // 4, 8)``."""

    def __init__(self, max_c: int) -> None:
        super().__init__()
        mid = se_channels(max_c)
        self.fc = nn.Sequential()
        self.fc.add_module("reduce", nn.Conv2d(max_c, mid, 1, 1, 0, bias=True))
        self.fc.add_module("relu", nn.ReLU())
        self.fc.add_module("expand", nn.Conv2d(mid, max_c, 1, 1, 0, bias=True))
        self.fc.add_module("h_sigmoid", nn.Hardsigmoid())

    def active_state(self, c: int) -> dict[str, torch.Tensor]:
        mid = se_channels(c)
        reduce, expand = self.fc.reduce, self.fc.expand
        return {
            "fc.reduce.weight": reduce.weight[:mid, :c],
            "fc.reduce.bias": reduce.bias[:mid],
            "fc.expand.weight": expand.weight[:c, :mid],
            "fc.expand.bias": expand.bias[:c],
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.size(1)
        s = self.active_state(c)
        y = x.mean(3, keepdim=True).mean(2, keepdim=True)
        y = F.conv2d(y, s["fc.reduce.weight"].contiguous(), s["fc.reduce.bias"])
        y = self.fc.relu(y)
        y = F.conv2d(y, s["fc.expand.weight"].contiguous(), s["fc.expand.bias"])
        return x * self.fc.h_sigmoid(y)


class _Unit(nn.Module):
    """A named holder (conv, bn, act[, se]) so keys read ``depth_conv.conv.conv.weight``."""

    def __init__(self, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class DynamicMBConv(nn.Module):
    """Elastic inverted residual body: kernel from ``kernel_list``, expand ratio from
    ``expand_list``; middle channels ``make_divisible(round(in_c * e), 8)``.

    ``active_kernel`` and ``active_expand`` select the running subnet (set by the supernet's
    ``set_active``). The input width is read from the input tensor, as in OFA.
    """

    def __init__(
        self,
        max_in: int,
        out_c: int,
        kernel_list: Sequence[int],
        expand_list: Sequence[float],
        stride: int,
        act: str,
        use_se: bool,
        kernel_transform: bool = True,
    ) -> None:
        super().__init__()
        self.max_in = max_in
        self.out_c = out_c
        self.kernel_list = tuple(sorted(set(kernel_list)))
        self.expand_list = tuple(sorted(set(expand_list)))
        self.stride = stride
        self.act = act
        self.use_se = use_se
        max_mid = middle_channels(max_in, max(self.expand_list))
        self.max_mid = max_mid
        if max(self.expand_list) == 1:
            self.inverted_bottleneck: _Unit | None = None
        else:
            self.inverted_bottleneck = _Unit(
                conv=DynamicConv2d(max_in, max_mid),
                bn=DynamicBatchNorm2d(max_mid),
                act=activation(act),
            )
        dw = {
            "conv": DynamicSeparableConv2d(max_mid, self.kernel_list, stride, kernel_transform),
            "bn": DynamicBatchNorm2d(max_mid),
            "act": activation(act),
        }
        if use_se:
            dw["se"] = DynamicSE(max_mid)
        self.depth_conv = _Unit(**dw)
        self.point_linear = _Unit(conv=DynamicConv2d(max_mid, out_c), bn=DynamicBatchNorm2d(out_c))
        self.active_kernel = self.kernel_list[-1]
        self.active_expand = self.expand_list[-1]

    def set_active(self, kernel: int, expand: float) -> None:
        if kernel not in self.kernel_list:
            raise SupernetError(f"kernel {kernel} not in the supernet's kernels {self.kernel_list}")
        if expand not in self.expand_list:
            raise SupernetError(
                f"expand ratio {expand} not in the supernet's expand ratios {self.expand_list}"
            )
        self.active_kernel = kernel
        self.active_expand = expand

    def active_mid(self, in_c: int) -> int:
        if self.inverted_bottleneck is None:
            return in_c
        return middle_channels(in_c, self.active_expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.active_mid(x.size(1))
        if self.inverted_bottleneck is not None:
            ib = self.inverted_bottleneck
            x = ib.act(ib.bn(ib.conv(x, mid)))
        dw = self.depth_conv
        x = dw.act(dw.bn(dw.conv(x, self.active_kernel)))
        if self.use_se:
            x = dw.se(x)
        pl = self.point_linear
        return pl.bn(pl.conv(x, self.out_c))

    # ------------------------------------------------------------------ extraction
    def build_static(self, in_c: int) -> MBConv:
        """An empty static block of the active shape."""
        return MBConv(
            in_c,
            self.out_c,
            self.active_mid(in_c),
            self.active_kernel,
            self.stride,
            self.act,
            self.use_se,
            has_expand_conv=self.inverted_bottleneck is not None,
        )

    def active_state_dict(self, in_c: int) -> dict[str, torch.Tensor]:
        """The active weights under :class:`MBConv`'s key names (views; the loader copies)."""
        mid = self.active_mid(in_c)
        sd: dict[str, torch.Tensor] = {}
        if self.inverted_bottleneck is not None:
            ib = self.inverted_bottleneck
            sd["inverted_bottleneck.conv.weight"] = ib.conv.active_weight(mid, in_c)
            sd.update(_prefixed("inverted_bottleneck.bn.", ib.bn.active_state(mid)))
        dw = self.depth_conv
        sd["depth_conv.conv.weight"] = dw.conv.active_weight(mid, self.active_kernel)
        sd.update(_prefixed("depth_conv.bn.", dw.bn.active_state(mid)))
        if self.use_se:
            sd.update(_prefixed("depth_conv.se.", dw.se.active_state(mid)))
        pl = self.point_linear
        sd["point_linear.conv.weight"] = pl.conv.active_weight(self.out_c, mid)
        sd.update(_prefixed("point_linear.bn.", pl.bn.active_state(self.out_c)))
        return sd

    def extract(self, in_c: int) -> MBConv:
        """A static copy of the active block (weights copied, nothing shared)."""
        with torch.device("meta"):  # no random init: every tensor is overwritten below
            block = self.build_static(in_c)
        block = block.to_empty(device=self.point_linear.conv.conv.weight.device)
        with torch.no_grad():
            block.load_state_dict(self.active_state_dict(in_c))
        return block

    # ------------------------------------------------------------------ training support
    @torch.no_grad()
    def reorganize_middle_weights(self, expand_ratio_stage: int = 0) -> torch.Tensor | None:
        """Sort middle channels by importance (L1 of the projection weights), permuting every
        tensor that touches them, as OFA's ``re_organize_middle_weights``.

        With ``expand_ratio_stage > 0`` channels beyond each smaller width stay in their
        width band (OFA's progressive shrinking). Returns the permutation when the block has no
        expand conv (the caller must then permute the previous layer's outputs)."""
        pl_w = self.point_linear.conv.conv.weight
        importance = pl_w.abs().sum(dim=(0, 2, 3))
        if expand_ratio_stage > 0:
            widths = [
                make_divisible(round(self.max_in * e), 8)
                for e in sorted(self.expand_list, reverse=True)
            ]
            right, base = len(importance), -len(widths) * 1e5
            for i in range(expand_ratio_stage + 1):
                left = widths[i]
                importance[left:right] += base
                base += 1e5
                right = left
        idx = torch.sort(importance, dim=0, descending=True)[1]

        self.point_linear.conv.conv.weight.data = pl_w.data.index_select(1, idx)
        _permute_bn(self.depth_conv.bn.bn, idx)
        dw_w = self.depth_conv.conv.conv.weight
        dw_w.data = dw_w.data.index_select(0, idx)
        if self.use_se:
            se_reduce, se_expand = self.depth_conv.se.fc.reduce, self.depth_conv.se.fc.expand
            se_expand.weight.data = se_expand.weight.data.index_select(0, idx)
            se_expand.bias.data = se_expand.bias.data.index_select(0, idx)
            se_reduce.weight.data = se_reduce.weight.data.index_select(1, idx)
            se_importance = se_expand.weight.data.abs().sum(dim=(0, 2, 3))
            se_idx = torch.sort(se_importance, dim=0, descending=True)[1]
            se_expand.weight.data = se_expand.weight.data.index_select(1, se_idx)
            se_reduce.weight.data = se_reduce.weight.data.index_select(0, se_idx)
            se_reduce.bias.data = se_reduce.bias.data.index_select(0, se_idx)
        if self.inverted_bottleneck is None:
            return idx
        _permute_bn(self.inverted_bottleneck.bn.bn, idx)
        ib_w = self.inverted_bottleneck.conv.conv.weight
        ib_w.data = ib_w.data.index_select(0, idx)
        return None


def _prefixed(prefix: str, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in d.items()}


def _permute_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> None:
    bn.weight.data = bn.weight.data.index_select(0, idx)
    bn.bias.data = bn.bias.data.index_select(0, idx)
    if bn.running_mean is not None:
        bn.running_mean.data = bn.running_mean.data.index_select(0, idx)
        bn.running_var.data = bn.running_var.data.index_select(0, idx)
