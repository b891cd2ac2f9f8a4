"""Reading OFA and CompOFA supernet checkpoints.

OFA publishes raw state dicts (``ofa_mbv3_d234_e346_k357_w1.0``); CompOFA publishes
``.pth.tar`` files holding ``{"state_dict": ..., "epoch": ...}``, sometimes with a DDP
``module.`` prefix and with the older ``mobile_inverted_conv`` name for a block's body. Older
OFA files also name dynamic sub-modules without their inner ``.bn``/``.conv``/``.linear``
wrapper. Every key is mapped onto the supernet's own key names, then shapes are checked; any
difference is reported in one :class:`CheckpointError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compofa_bench.errors import CheckpointError

#: How many keys of each kind an error message lists before summarising.
MAX_LISTED = 8

#: Rewrites tried, in order, when a key is not one of the model's (OFA's own fallbacks).
_ALTERNATES = (
    (".bn.bn.", ".bn."),
    (".conv.conv.weight", ".conv.weight"),
    (".linear.linear.", ".linear."),
    (".linear.", ".linear.linear."),
    ("bn.", "bn.bn."),
    ("conv.weight", "conv.conv.weight"),
)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, loaded safely (``weights_only=True``) on CPU."""
    from compofa_bench import torchfile

    obj = torchfile.load(path)
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj: Any, where: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``{"state_dict": sd}`` or ``sd`` -> ``sd`` with any DDP ``module.`` prefix removed."""
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    elif (
        isinstance(obj, Mapping)
        and str(obj.get("format", "")).startswith("compofa-bench-train/")
        and isinstance(obj.get("model"), Mapping)
    ):  # final.pt / checkpoint.pt of `train`: the supernet's weights are under "model"
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{where} holds no state dict (got {type(obj).__name__})")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{where}: entry {key!r} is {type(value).__name__}, not a tensor; "
                "is this a supernet state dict?"
            )
        out[key.removeprefix("module.")] = value
    return out


def map_keys(
    state_dict: Mapping[str, torch.Tensor], model_keys: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Checkpoint keys renamed to the model's; returns (mapped, unexpected keys)."""
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        new = key.replace(".mobile_inverted_conv.", ".conv.")
        if new not in model_keys:
            for old, rep in _ALTERNATES:
                if old in new and new.replace(old, rep) in model_keys:
                    new = new.replace(old, rep)
                    break
        if new in model_keys:
            mapped[new] = value
        else:
            unexpected.append(key)
    return mapped, unexpected


def load_into(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load ``state_dict`` into ``model`` or raise one CheckpointError listing every problem."""
    sd = unwrap_state_dict(state_dict, "state dict")
    own = model.state_dict()
    mapped, unexpected = map_keys(sd, set(own))
    # Files saved by old PyTorch versions carry no BN batch counters; they are not weights.
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in mapped.items()
        if v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
        hint = _width_hint(mapped, own)
        raise CheckpointError("checkpoint does not fit the supernet: " + "; ".join(parts) + hint)
    full = dict(own)
    full.update(mapped)
    model.load_state_dict(full, strict=True)


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    rest = len(items) - MAX_LISTED
    return shown + (f", ... and {rest} more" if rest > 0 else "")


def _width_hint(mapped: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> str:
    key = "first_conv.conv.weight"
    if key in mapped and key in own and mapped[key].shape != own[key].shape:
        return (
            f" (stem has {mapped[key].shape[0]} channels in the checkpoint, {own[key].shape[0]} "
            "in the supernet: wrong --width-mult?)"
        )
    return ""
