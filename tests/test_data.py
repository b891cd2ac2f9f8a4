"""Data sources: Fashion-MNIST from the Debian package, ImageFolder, seeded order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compofa_bench import data
from compofa_bench.errors import DataError

needs_fmnist = pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


@needs_fmnist
def test_fashion_mnist_loads_with_ten_classes():
    spec = data.resolve("fashion-mnist")
    assert spec.n_classes == 10
    ds = data.FashionMNIST(spec.root, "val", train_augment=False)
    assert len(ds) == 10_000
    img, label = ds[0]
    assert img.shape == (3, 28, 28) and 0 <= label < 10
    assert torch.equal(img[0], img[1]) and img.min() >= 0.0 and img.max() <= 1.0
    assert set(ds.labels.tolist()) == set(range(10))


@needs_fmnist
def test_augmentation_is_a_function_of_the_seed():
    ds = data.FashionMNIST(data.FASHION_MNIST_DIR, "train", train_augment=True)
    a, _ = ds[(5, 123)]
    b, _ = ds[(5, 123)]
    assert torch.equal(a, b)
    others = [ds[(5, s)][0] for s in range(8)]
    assert any(not torch.equal(a, o) for o in others)


def test_missing_fashion_mnist_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(DataError, match="apt install dataset-fashion-mnist"):
        data.resolve("fashion-mnist")


def test_bad_paths(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        data.resolve(tmp_path / "nothing")
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="val/"):
        data.resolve(tmp_path)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog", "eel"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                arr = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    spec = data.resolve(tmp_path)
    assert spec.n_classes == 3 and spec.kind == "imagefolder"
    train = data.train_dataset(spec, 32)
    x1, y1 = train[(0, 7)]
    x2, _ = train[(0, 7)]
    assert x1.shape == (3, 32, 32) and torch.equal(x1, x2) and y1 == 0
    val = data.val_dataset(spec, 36)
    x, y = val[5]
    assert x.shape == (3, 36, 36) and y == 2


def test_ranks_split_each_global_batch():
    idx = np.arange(100)
    one = list(data.StepSampler(idx, 16, 0, 1, seed=3, epoch=2))
    r0 = list(data.StepSampler(idx, 16, 0, 2, seed=3, epoch=2))
    r1 = list(data.StepSampler(idx, 16, 1, 2, seed=3, epoch=2))
    assert len(one) == 96  # 6 full batches, the rest dropped
    for step in range(6):
        assert (
            one[16 * step : 16 * step + 16]
            == r0[8 * step : 8 * step + 8] + r1[8 * step : 8 * step + 8]
        )
    resumed = list(data.StepSampler(idx, 16, 0, 1, seed=3, epoch=2, start_step=4))
    assert resumed == one[64:]
    other_epoch = list(data.StepSampler(idx, 16, 0, 1, seed=3, epoch=3))
    assert [i for i, _ in other_epoch] != [i for i, _ in one]
    assert len({s for _, s in one}) == len(one)


def test_subset_is_fixed_and_sized():
    a = data.subset_indices(1000, 50, seed=1)
    assert len(a) == 50 and np.array_equal(a, data.subset_indices(1000, 50, seed=1))
    assert len(data.subset_indices(10, None, 0)) == 10
    with pytest.raises(DataError):
        data.subset_indices(10, 0, 0)


def test_resize_batch():
    x = torch.rand(2, 3, 28, 28)
    assert data.resize_batch(x, 32).shape == (2, 3, 32, 32)
    assert data.resize_batch(x, 28) is x
