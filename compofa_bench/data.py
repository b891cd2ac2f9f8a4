"""Training and validation data for the supernet trainer and ``evaluate``.

Two sources: an ImageFolder tree (ImageNet layout, ``train/`` and ``val/``) with OFA's
augmentation, and Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package for tests and
the demo.

Every training sample is drawn with its own seed, derived from the run seed, the epoch and the
sample's position in the epoch. Augmentation therefore does not depend on worker processes or on
where a run was interrupted, which is what lets ``--resume`` continue bit-for-bit and lets a
single process reproduce a multi-rank step.

Loaders yield images at a fixed *base size* (28 for Fashion-MNIST, the recipe's largest
resolution for ImageFolder); the trainer resizes each batch to the step's resolution, so one
loader serves elastic resolution.
"""

from __future__ import annotations

import functools
import gzip
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from compofa_bench.errors import DataError, MissingDependencyError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HINT = "install it with: apt install dataset-fashion-mnist"

#: ImageNet statistics, used by OFA for every dataset.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Fashion-MNIST statistics (grey, repeated to 3 channels).
FMNIST_MEAN = (0.2860,) * 3
FMNIST_STD = (0.3530,) * 3


def sample_seed(run_seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one training sample, a pure function of its coordinates."""
    ss = np.random.SeedSequence([run_seed & 0xFFFFFFFF, epoch, position])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> 1)


# =============================================================================== sources


@dataclass(frozen=True)
class DataSpec:
    """What ``--data`` names, resolved: ``fashion-mnist`` or an ImageFolder root."""

    kind: str  # "fashion-mnist" | "imagefolder"
    root: Path
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def resolve(data: str | Path) -> DataSpec:
    """Resolve ``--data``: ``fashion-mnist`` (the Debian package's folder), a folder holding
    the same four Fashion-MNIST ``.gz`` files, or an ImageFolder root. Raise
    :class:`DataError` saying what to install or provide."""
    text = str(data)
    if text in ("fashion-mnist", "fmnist"):
        root = FASHION_MNIST_DIR
        missing = [f for f in _FMNIST_FILES.values() if not (root / f).is_file()]
        if missing:
            raise DataError(
                f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}); "
                f"{FASHION_MNIST_HINT}"
            )
        return DataSpec("fashion-mnist", root, 10, FMNIST_MEAN, FMNIST_STD)
    root = Path(text)
    if root.is_dir() and all((root / f).is_file() for f in _FMNIST_FILES.values()):
        # A folder holding the package's four IDX files (a copy on a host without the package).
        return DataSpec("fashion-mnist", root, 10, FMNIST_MEAN, FMNIST_STD)
    if not root.is_dir():
        raise DataError(
            f"--data {text!r}: not a directory; give 'fashion-mnist' or an ImageFolder root "
            "with train/ and val/ subdirectories"
        )
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(
                f"--data {root}: missing {split}/ (ImageFolder layout: {split}/CLASS/*.jpg)"
            )
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"--data {root}: train/ has no class subdirectories")
    return DataSpec("imagefolder", root, len(classes), IMAGENET_MEAN, IMAGENET_STD)


_FMNIST_FILES = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("val", "images"): "t10k-images-idx3-ubyte.gz",
    ("val", "labels"): "t10k-labels-idx1-ubyte.gz",
}


@functools.lru_cache(maxsize=8)  # tests and evaluate reopen the same files
def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}; {FASHION_MNIST_HINT}") from None
    if len(raw) < 8:
        raise DataError(f"{path} is truncated")
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    if magic >> 8 != 0x08 or ndim not in (1, 3):  # 0x08: unsigned bytes
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#x})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path}: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


# =============================================================================== datasets


class FashionMNIST(Dataset):
    """Fashion-MNIST as float tensors ``3x28x28`` in [0, 1]; grey repeated to 3 channels.

    Indexing takes ``(index, seed)`` for training (random pad-crop and flip, the small-image
    analogue of OFA's RandomResizedCrop + flip) or a plain ``index`` for validation.
    """

    base_size = 28

    def __init__(self, root: Path, split: str, train_augment: bool) -> None:
        images = _read_idx(root / _FMNIST_FILES[(split, "images")])
        labels = _read_idx(root / _FMNIST_FILES[(split, "labels")])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
        self.images = torch.from_numpy(images.copy())
        self.labels = torch.from_numpy(labels.astype(np.int64))
        self.augment = train_augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        img = self.images[index].to(torch.float32).div_(255.0)
        if self.augment and seed is not None:
            g = torch.Generator().manual_seed(seed)
            pad = 2
            padded = torch.nn.functional.pad(img, (pad, pad, pad, pad))
            dy, dx = (int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=g))
            img = padded[dy : dy + 28, dx : dx + 28]
            if torch.rand((), generator=g) < 0.5:
                img = img.flip(-1)
        return img.unsqueeze(0).expand(3, -1, -1).contiguous(), int(self.labels[index])


class ImageFolderSeeded(Dataset):
    """torchvision ImageFolder whose training transform is seeded per sample.

    torchvision's v1 transforms draw from torch's global RNG; seeding it inside ``__getitem__``
    makes a sample's augmentation a function of its seed alone, in any worker.
    """

    def __init__(self, root: Path, split: str, size: int, train_augment: bool) -> None:
        try:
            from torchvision import datasets, transforms
        except ImportError as exc:  # pragma: no cover - torchvision is a core dependency
            raise MissingDependencyError("torchvision", "dev", "ImageFolder data") from exc
        if train_augment:
            # OFA: RandomResizedCrop(scale 0.08-1), flip, ColorJitter(32/255, saturation 0.5).
            tf = transforms.Compose(
                [
                    transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
                    transforms.RandomHorizontalFlip(),
                    transforms.ColorJitter(brightness=32.0 / 255.0, saturation=0.5),
                    transforms.ToTensor(),
                ]
            )
        else:
            # OFA validation: resize to size/0.875, centre crop.
            tf = transforms.Compose(
                [
                    transforms.Resize(int(np.ceil(size / 0.875))),
                    transforms.CenterCrop(size),
                    transforms.ToTensor(),
                ]
            )
        try:
            self.inner = datasets.ImageFolder(str(root / split), transform=tf)
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"cannot read ImageFolder {root / split}: {exc}") from None
        self.base_size = size
        self.augment = train_augment

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        if self.augment and seed is not None:
            torch.manual_seed(seed)
        img, label = self.inner[index]
        return img, int(label)


def train_dataset(spec: DataSpec, base_size: int) -> Dataset:
    if spec.kind == "fashion-mnist":
        return FashionMNIST(spec.root, "train", train_augment=True)
    return ImageFolderSeeded(spec.root, "train", base_size, train_augment=True)


def val_dataset(spec: DataSpec, resolution: int) -> Dataset:
    if spec.kind == "fashion-mnist":
        return FashionMNIST(spec.root, "val", train_augment=False)
    return ImageFolderSeeded(spec.root, "val", resolution, train_augment=False)


def calib_dataset(spec: DataSpec, resolution: int) -> Dataset:
    """Training images without random augmentation, for BN recalibration."""
    if spec.kind == "fashion-mnist":
        return FashionMNIST(spec.root, "train", train_augment=False)
    return ImageFolderSeeded(spec.root, "train", resolution, train_augment=False)


# =============================================================================== order


def subset_indices(n: int, subset: int | None, seed: int) -> np.ndarray:
    """Indices of a fixed, seeded subset of ``n`` samples (all when ``subset`` is None)."""
    if subset is None or subset >= n:
        return np.arange(n)
    if subset <= 0:
        raise DataError(f"subset size must be positive, got {subset}")
    rng = np.random.default_rng([seed, 0x5EB5E7])
    return np.sort(rng.choice(n, size=subset, replace=False))


class StepSampler(Sampler):
    """Yields ``(index, seed)`` for one rank's share of each global batch of an epoch.

    The epoch's order is a seeded permutation of ``indices``; global batch ``s`` covers
    positions ``[s*B, (s+1)*B)`` and rank ``r`` of ``W`` takes the ``r``-th of ``W`` equal
    slices. Incomplete last batches are dropped (every step has the same batch size, so all
    ranks do the same number of steps). ``start_step`` skips batches already trained.
    """

    def __init__(
        self,
        indices: np.ndarray,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
    ) -> None:
        if global_batch % world_size:
            raise DataError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.indices = indices
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start_step = start_step

    @property
    def steps(self) -> int:
        return len(self.indices) // self.global_batch

    def __len__(self) -> int:
        return (self.steps - self.start_step) * (self.global_batch // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = self.indices[rng.permutation(len(self.indices))]
        per_rank = self.global_batch // self.world_size
        for step in range(self.start_step, self.steps):
            base = step * self.global_batch + self.rank * per_rank
            for pos in range(base, base + per_rank):
                yield int(order[pos]), sample_seed(self.seed, self.epoch, pos)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s


def resize_batch(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize a batch to ``resolution`` (bilinear, antialiased when shrinking)."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images
    shrink = resolution < images.shape[-1]
    return torch.nn.functional.interpolate(
        images,
        size=(resolution, resolution),
        mode="bilinear",
        align_corners=False,
        antialias=shrink,
    )


# =============================================================================== on the device


class DeviceFashionMNIST:
    """Fashion-MNIST held whole on the training device as ``uint8`` tensors (47 MB), with the
    training augmentation done per batch on that device.

    The per-sample path (:class:`FashionMNIST` through a ``DataLoader``) costs tens of
    microseconds of Python per image: on a GPU that trains a 32-px supernet at tens of thousands
    of images per second, the loader would be the bottleneck. Here a batch is one gather.

    Augmentation is the same kind as :class:`FashionMNIST`'s (2-pixel pad, random 28x28 crop,
    horizontal flip) but drawn per *global batch* from a generator seeded by
    ``(seed, epoch, step)`` and then sliced by rank: a function of the position alone, so resume
    and N ranks reproduce one process, as with the loader path (the draws differ from it).
    """

    base_size = 28
    pad = 2

    def __init__(self, root: Path, device: torch.device) -> None:
        images = _read_idx(root / _FMNIST_FILES[("train", "images")])
        labels = _read_idx(root / _FMNIST_FILES[("train", "labels")])
        if len(images) != len(labels):
            raise DataError(f"Fashion-MNIST train: {len(images)} images but {len(labels)} labels")
        p = self.pad
        padded = np.zeros((len(images), 28 + 2 * p, 28 + 2 * p), dtype=np.uint8)
        padded[:, p : p + 28, p : p + 28] = images
        self.device = device
        self.images = torch.from_numpy(padded).to(device)
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(device)

    def __len__(self) -> int:
        return len(self.labels)

    def batches(
        self,
        indices: np.ndarray,
        global_batch: int,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_step: int = 0,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's ``(images 3x28x28 float in [0,1], labels)`` for each remaining step of
        ``epoch``, in :class:`StepSampler`'s order."""
        if global_batch % world_size:
            raise DataError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        rng = np.random.default_rng([seed, epoch])
        order = indices[rng.permutation(len(indices))]
        per_rank = global_batch // world_size
        ar = torch.arange(28, device=self.device)
        for step in range(start_step, len(indices) // global_batch):
            g = np.random.default_rng([seed & 0xFFFFFFFF, epoch, step, 0xA06])
            lo = step * global_batch + rank * per_rank
            sl = slice(lo, lo + per_rank)
            offs = g.integers(0, 2 * self.pad + 1, size=(global_batch, 2))[
                rank * per_rank : (rank + 1) * per_rank
            ]
            flip = (g.random(global_batch) < 0.5)[rank * per_rank : (rank + 1) * per_rank]
            idx = torch.from_numpy(order[sl]).to(self.device)
            dy = torch.from_numpy(offs[:, 0]).to(self.device)
            dx = torch.from_numpy(offs[:, 1]).to(self.device)
            fl = torch.from_numpy(flip).to(self.device)
            rows = dy[:, None] + ar[None, :]
            # A flip is a crop read right to left: fold it into the column indices.
            cols = dx[:, None] + torch.where(fl[:, None], 27 - ar[None, :], ar[None, :])
            img = self.images[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
            x = img.to(torch.float32).div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
            yield x, self.labels[idx]

    def plain(self, indices: np.ndarray) -> torch.Tensor:
        """Unaugmented ``3x28x28`` images at ``indices`` (BN recalibration)."""
        p = self.pad
        idx = torch.from_numpy(np.asarray(indices)).to(self.device)
        img = self.images[idx, p : p + 28, p : p + 28].to(torch.float32).div_(255.0)
        return img.unsqueeze(1).expand(-1, 3, -1, -1)


def fashion_mnist_test(root: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10k test images (``3x28x28`` float in [0,1]) and labels, on ``device``."""
    images = _read_idx(root / _FMNIST_FILES[("val", "images")])
    labels = _read_idx(root / _FMNIST_FILES[("val", "labels")])
    x = torch.from_numpy(images.copy()).to(device).to(torch.float32).div_(255.0)
    return x.unsqueeze(1).expand(-1, 3, -1, -1), torch.from_numpy(labels.astype(np.int64)).to(
        device
    )
