"""The training loop end to end on Fashion-MNIST at 32 px: two gloo ranks agree with each
other and with one process; SIGTERM + --resume equals an uninterrupted run; a short run
lowers the loss of the largest and the smallest subnet."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from compofa_bench import data, spaces
from compofa_bench.train import recipe as R
from compofa_bench.train.trainer import FINAL, METRICS, TrainConfig, Trainer

pytestmark = pytest.mark.skipif(
    not (data.FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)

# A teacher phase, then a compound phase distilling from it with re-sorted channels: the
# state a resume must restore includes the teacher, the optimizer and the phase position.
KD_RECIPE = """
name = "tiny-compofa"
space = "compofa"
resolutions = [32]
batch_size = 8
reference_batch_size = 8
dropout_rate = 0.1
seed = 11

[[phase]]
name = "teacher"
is_teacher = true
space = "compofa"
sampling = "largest"
epochs = {teacher_epochs}
lr = 0.01

[[phase]]
name = "compound"
space = "compofa"
subnets_per_step = 2
epochs = {compound_epochs}
warmup_epochs = 0.5
lr = 0.01
kd = "teacher"
kd_ratio = 1.0
reorganize = true
"""


def _recipe(tmp_path: Path, teacher_epochs: float, compound_epochs: float) -> Path:
    p = tmp_path / "tiny.toml"
    p.write_text(KD_RECIPE.format(teacher_epochs=teacher_epochs, compound_epochs=compound_epochs))
    return p


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, recipe_path: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    cfg = TrainConfig(
        data="fashion-mnist", out=Path(out), batch_size=4, subset=16, device="cpu", quiet=True
    )
    trainer = Trainer(R.load(recipe_path), cfg)
    trainer.run()
    torch.save(trainer.model.state_dict(), Path(out) / f"rank{rank}.pt")


def _params(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if v.is_floating_point() and "running" not in k}


@pytest.mark.slow
def test_two_gloo_ranks_equal_each_other_and_one_process(tmp_path):
    recipe_path = _recipe(tmp_path, teacher_epochs=0.5, compound_epochs=1)  # 1 + 2 steps
    out = tmp_path / "ddp"
    torch.multiprocessing.spawn(
        _rank_worker, args=(2, _free_port(), str(recipe_path), str(out)), nprocs=2, join=True
    )
    r0 = _params(torch.load(out / "rank0.pt", weights_only=True))
    r1 = _params(torch.load(out / "rank1.pt", weights_only=True))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)

    # One process over the same global batch of 8, split into the ranks' two halves; one
    # thread as in the ranks, so that convolutions reduce in the same order.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    single = Trainer(
        R.load(recipe_path),
        TrainConfig(
            data="fashion-mnist",
            out=tmp_path / "single",
            batch_size=8,
            micro_batches=2,
            subset=16,
            device="cpu",
            quiet=True,
        ),
    )
    try:
        single.run()
    finally:
        torch.set_num_threads(threads)
    s = _params(single.model.state_dict())
    for k in s:
        torch.testing.assert_close(s[k], r0[k], rtol=1e-4, atol=1e-6, msg=k)
    # The comparison is not vacuous: training changed the weights.
    fresh = _params(single.teacher_state)
    moved = sum(not torch.equal(fresh[k], s[k]) for k in s)
    assert moved > 10


def _train_cli(recipe_path: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "compofa_bench",
        "train",
        "--recipe",
        str(recipe_path),
        "--data",
        "fashion-mnist",
        "--out",
        str(out),
        "--subset",
        "16",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--quiet",
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigterm_then_resume_equals_uninterrupted(tmp_path):
    recipe_path = _recipe(tmp_path, teacher_epochs=1, compound_epochs=2)  # 2 + 4 steps
    out = tmp_path / "killed"
    proc = _train_cli(recipe_path, out)
    metrics = out / METRICS
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "rerun with --resume" in err
    assert not (out / FINAL).exists()
    stopped = json.loads(metrics.read_text().splitlines()[-1])
    assert stopped["phase"] == "compound" and stopped["global_step"] < 6

    # Resume and the uninterrupted reference both run as CLI processes, like the killed run, so
    # all three share thread settings (in-process state left by other tests cannot differ).
    resumed = _train_cli(recipe_path, out, "--resume")
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, err
    straight = _train_cli(recipe_path, tmp_path / "straight")
    _, err = straight.communicate(timeout=240)
    assert straight.returncode == 0, err
    a = torch.load(out / FINAL, weights_only=True)
    b = torch.load(tmp_path / "straight" / FINAL, weights_only=True)
    assert a["position"] == b["position"]
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-5, atol=1e-7, msg=k)

    # Resuming with a different global batch is refused, naming the option.
    with pytest.raises(Exception, match="batch_size"):
        Trainer(
            R.load(recipe_path),
            TrainConfig(
                data="fashion-mnist", out=out, subset=16, batch_size=4, device="cpu", quiet=True
            ),
            resume=True,
        )


@pytest.mark.slow
def test_short_run_lowers_loss_of_largest_and_smallest(tmp_path):
    # 12 sandwich steps (largest + smallest) on a fixed batch of 32 training images: enough
    # to show learning on a noisy 2-core machine; the loss is measured on those images
    # without augmentation, with batch statistics (no BN recalibration needed).
    recipe = R.parse(
        {
            "name": "lossdown",
            "space": "compofa",
            "resolutions": [32],
            "batch_size": 32,
            "reference_batch_size": 32,
            "dropout_rate": 0.0,
            "seed": 2,
            "phase": [
                {
                    "name": "sandwich",
                    "space": "compofa",
                    "sampling": "sandwich",
                    "subnets_per_step": 2,
                    "epochs": 12,
                    "lr": 0.05,
                }
            ],
        }
    )
    trainer = Trainer(
        recipe,
        TrainConfig(
            data="fashion-mnist", out=tmp_path / "run", subset=32, device="cpu", quiet=True
        ),
    )
    space = spaces.get("compofa", resolutions=(32,))
    plain = data.FashionMNIST(data.FASHION_MNIST_DIR, "train", train_augment=False)
    idx = trainer.indices.tolist()
    x = torch.stack([plain[i][0] for i in idx])
    y = torch.tensor([plain[i][1] for i in idx])
    x = data.normalize(data.resize_batch(x, 32), data.FMNIST_MEAN, data.FMNIST_STD)

    def losses() -> list[float]:
        out = []
        for arch in (space.largest(32), space.smallest(32)):
            trainer.model.set_active(arch)
            trainer.model.train()
            with torch.no_grad():
                out.append(torch.nn.functional.cross_entropy(trainer.model(x), y).item())
        return out

    before = losses()
    trainer.run()
    after = losses()
    assert after[0] < before[0] - 0.3, (before, after)
    assert after[1] < before[1] - 0.3, (before, after)
