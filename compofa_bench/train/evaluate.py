"""Top-1 accuracy of subnets of a trained supernet, written as ``acc.csv``.

For every arch and resolution: extract the subnet, recalibrate its BatchNorm statistics on
training images (as OFA does before every evaluation), then measure top-1 on the validation
split. The CSV (``space,key,resolution,top1,arch``; ``arch`` is OFA's dict as compact JSON
with ``"r"``, ``top1`` a fraction) is what ``predictor train`` learns from.

The CSV is rewritten atomically after every arch, and rows already present are skipped, so an
interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compofa_bench import data as data_mod
from compofa_bench import spaces
from compofa_bench.errors import DataError, TrainError
from compofa_bench.fileio import atomic_path
from compofa_bench.spaces import Arch, SearchSpace
from compofa_bench.train import checkpoint as ckpt

HEADER = ("space", "key", "resolution", "top1", "arch")
#: Keep cached evaluation tensors under this many bytes per resolution; stream beyond it.
_CACHE_BYTES = 1 << 30


@dataclass(frozen=True)
class EvalConfig:
    data: str
    val_subset: int | None = 2000
    calib_images: int = 2000
    batch_size: int = 200
    seed: int = 0
    device: str = "auto"
    workers: int = 0


@dataclass(frozen=True)
class AccRow:
    space: str
    arch: Arch
    top1: float

    def as_csv(self) -> list[str]:
        return [
            self.space,
            self.arch.key(),
            str(self.arch.resolution),
            f"{self.top1:.6f}",
            json.dumps(self.arch.to_ofa("r"), separators=(",", ":")),
        ]


def load_supernet(
    path: str | Path, n_classes: int, device: torch.device, base: str = "mbv3"
) -> nn.Module:
    """A supernet with the weights of a training checkpoint (``final.pt``/``checkpoint.pt``)
    or an OFA/CompOFA ``.pth`` file of supernet ``base`` (width read from stem and classifier)."""
    from compofa_bench import supernet

    p = Path(path)
    state = ckpt.read(p)  # weights-only: nothing in the file runs
    if not ckpt.is_training_checkpoint(state):  # not ours: an OFA/CompOFA weight file
        from compofa_bench.supernet.checkpoint import unwrap_state_dict

        sd = unwrap_state_dict(state, str(p))
        net = supernet.build(base, width_mult=_ofa_file_width(sd, base), n_classes=n_classes)
        net.load_ofa_state_dict(sd)
        return net.to(device)
    ckpt.check_keys(state, p, ("n_classes", "base", "width_mult", "model"))
    if state["n_classes"] != n_classes:
        raise DataError(
            f"checkpoint {p} was trained for {state['n_classes']} classes but the data has "
            f"{n_classes}"
        )
    net = supernet.build(
        base=state["base"], width_mult=state["width_mult"], n_classes=n_classes, dropout_rate=0.0
    )
    net.load_state_dict(state["model"])
    return net.to(device)


def _ofa_file_width(sd: dict[str, torch.Tensor], base: str) -> float:
    """OFA files do not record their width: find the base's usual width whose stem fits
    (e.g. ProxylessNAS w1.3 has 40 stem channels). Unknown widths fall back to 1.0 and the
    load reports the mismatch."""
    from compofa_bench import supernet

    stem = sd.get("first_conv.conv.weight")
    head = next(
        (v for k, v in sd.items() if k.startswith("classifier") and k.endswith("weight")), None
    )
    if stem is None or head is None:
        return 1.0
    widths = sorted({w for n in spaces.names() for w in spaces.get(n).width_mults} | {1.0})
    arch = next(spaces.get(n) for n in spaces.names() if spaces.get(n).base == base).largest()
    for w in widths:
        specs = supernet.layer_specs(arch, w, base)
        if (specs[0].out_c, specs[-1].in_c) == (stem.shape[0], head.shape[1]):
            return w
    return 1.0


def read_done(path: Path) -> dict[tuple[str, str], AccRow | list[str]]:
    """Rows of an existing acc.csv keyed by (space, key); a missing file gives none."""
    if not path.exists():
        return {}
    try:
        rows = list(csv.reader(io.StringIO(path.read_text())))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TrainError(f"cannot read {path}: {exc}") from None
    if not rows:
        return {}
    if tuple(rows[0]) != HEADER:
        raise TrainError(
            f"{path} exists but is not an acc.csv (header {rows[0]}); choose another --out"
        )
    return {(r[0], r[1]): r for r in rows[1:] if len(r) == len(HEADER)}


def _write_atomic(path: Path, rows: Sequence[list[str]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(HEADER)
        w.writerows(rows)


class _Images:
    """Validation and calibration batches per resolution, cached in memory when small."""

    def __init__(self, spec: data_mod.DataSpec, cfg: EvalConfig, device: torch.device) -> None:
        self.spec, self.cfg, self.device = spec, cfg, device
        self._cache: dict[tuple[str, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _loader(self, split: str, resolution: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if split == "val":
            ds = data_mod.val_dataset(self.spec, resolution)
            idx = data_mod.subset_indices(len(ds), self.cfg.val_subset, self.cfg.seed)
        else:
            ds = data_mod.calib_dataset(self.spec, resolution)
            # OFA recalibrates on a random subset of training images.
            idx = data_mod.subset_indices(len(ds), self.cfg.calib_images, self.cfg.seed + 1)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, idx.tolist()),
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=self.cfg.workers,
        )
        for images, labels in loader:
            x = data_mod.resize_batch(images, resolution)
            yield data_mod.normalize(x, self.spec.mean, self.spec.std), labels

    def batches(
        self, split: str, resolution: int
    ) -> Sequence[tuple[torch.Tensor, torch.Tensor]] | Iterator:
        key = (split, resolution)
        if key in self._cache:
            return self._cache[key]
        n = self.cfg.val_subset if split == "val" else self.cfg.calib_images
        if n is not None and n * 3 * resolution * resolution * 4 <= _CACHE_BYTES:
            self._cache[key] = [
                (x.to(self.device), y.to(self.device)) for x, y in self._loader(split, resolution)
            ]
            return self._cache[key]
        return ((x.to(self.device), y.to(self.device)) for x, y in self._loader(split, resolution))


@torch.no_grad()
def top1(
    module: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | Iterator
) -> float:
    module.eval()
    correct = total = 0
    for x, y in batches:
        pred = module(x).argmax(dim=1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    if total == 0:
        raise DataError("the validation split is empty")
    return correct / total


def evaluate(
    checkpoint: str | Path,
    space: SearchSpace,
    archs: Sequence[Arch],
    config: EvalConfig,
    out: Path,
    on_item: Callable[[AccRow, bool], None] | None = None,
) -> list[AccRow]:
    """Evaluate ``archs`` (each at its own resolution) and keep ``out`` up to date.

    ``on_item(row, skipped)`` is called after each arch (``skipped`` when it was already in
    ``out``). Returns the rows of ``archs`` in order.
    """
    from compofa_bench.supernet import recalibrate_bn

    for a in archs:
        space.validate(a, check_resolution=False)
    spec = data_mod.resolve(config.data)
    device = torch.device(
        "cuda"
        if config.device == "auto" and torch.cuda.is_available()
        else ("cpu" if config.device == "auto" else config.device)
    )
    done = read_done(out)
    rows = [r for r in done.values()]
    net = load_supernet(checkpoint, spec.n_classes, device, base=space.base)
    images = _Images(spec, config, device)
    results: list[AccRow] = []
    for arch in archs:
        prior = done.get((space.name, arch.key()))
        if prior is not None:
            row = AccRow(space.name, arch, float(prior[3]))
            results.append(row)
            if on_item is not None:
                on_item(row, True)
            continue
        sub = net.extract(arch)
        recalibrate_bn(sub, (x for x, _ in images.batches("train", arch.resolution)))
        acc = top1(sub, images.batches("val", arch.resolution))
        row = AccRow(space.name, arch, acc)
        rows.append(row.as_csv())
        _write_atomic(out, rows)
        done[(space.name, arch.key())] = row.as_csv()
        results.append(row)
        if on_item is not None:
            on_item(row, False)
    if not out.exists():
        _write_atomic(out, rows)
    return results


def select_archs(
    space: SearchSpace, resolutions: Sequence[int], sample: int | None, seed: int
) -> list[Arch]:
    """All structures of ``space`` (or ``sample`` of them), each at every resolution."""
    if sample is None:
        structures = list(space.enumerate(resolutions=[resolutions[0]]))
    else:
        rng = np.random.default_rng(seed)
        one = space.with_resolutions([resolutions[0]])
        structures = one.sample_many(sample, rng)
    return [a.with_resolution(r) for r in resolutions for a in structures]


@torch.no_grad()
def top1_in_place(
    net: nn.Module,
    arch: Arch,
    calib: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    batch_size: int = 2000,
) -> float:
    """Top-1 of ``arch`` run inside the supernet (``set_active``), after recalibrating the BN
    statistics of its active channels on ``calib``.

    Equivalent to extracting the subnet and recalibrating the copy (the recalibration rewrites
    exactly the channels the subnet uses, and every subnet is recalibrated before it is
    measured), minus the cost of building ~50 modules per subnet: the in-place form is what
    makes 243 subnets x 2 resolutions x several supernets a matter of seconds on a GPU. It
    overwrites the supernet's running statistics: use a copy that is not trained further.
    Inputs are already resized and normalized, on the supernet's device.
    """
    from compofa_bench.supernet import recalibrate_bn

    net.set_active(arch)
    recalibrate_bn(net, calib.split(batch_size))
    net.eval()
    correct = torch.zeros((), dtype=torch.int64, device=val_y.device)
    for x, y in zip(val_x.split(batch_size), val_y.split(batch_size), strict=True):
        correct += (net(x).argmax(dim=1) == y).sum()
    if val_y.numel() == 0:
        raise DataError("the validation split is empty")
    return int(correct) / int(val_y.numel())
