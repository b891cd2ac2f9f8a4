"""Training throughput of one CompOFA compound step: compofa-bench vs the ofa package.

One step = teacher forward (no grad) + 4 compound subnets sampled from the 243, each forward +
backward with label-smoothed CE + KD, then one SGD step (Nesterov, no decay on BN/bias). Both
sides use synthetic ImageNet-shaped batches (no data loading), so the numbers compare network +
loss + optimizer only. Reported: images/s (batch x steps / seconds) per side and their ratio,
measured side by side in one process, alternating rounds.

    python benchmarks/train_throughput.py                       # CUDA, batch 256, 224 px
    python benchmarks/train_throughput.py --amp bf16 --channels-last --seconds 40
    python benchmarks/train_throughput.py --device cpu --batch 8 --resolution 64   # smoke only

Without CUDA and without --device cpu it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ours(device, batch, res, amp, channels_last):
    from compofa_bench import spaces, supernet
    from compofa_bench.train.losses import distillation_loss
    from compofa_bench.train.optim import build_sgd
    from compofa_bench.train.sampling import step_subnets

    space = spaces.get("compofa", resolutions=(res,))
    net = supernet.build(n_classes=1000).to(device)
    teacher = supernet.build(n_classes=1000).to(device)
    teacher.set_active(space.largest(res))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net, teacher = net.to(memory_format=fmt), teacher.to(memory_format=fmt)
    opt = build_sgd(net, 0.1, 0.9, True, 3e-5)
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else None
    step_no = [0]

    def step():
        archs = step_subnets(space, "uniform", 4, res, 0, 1, step_no[0])
        step_no[0] += 1
        opt.zero_grad(set_to_none=True)
        with torch.no_grad(), ctx() if ctx else _null():
            soft = teacher(x)
        for a in archs:
            net.set_active(a)
            with ctx() if ctx else _null():
                logits = net(x)
            distillation_loss(logits, y, 0.1, soft, 1.0).backward()
        opt.step()

    return step


def reference(device, batch, res, amp, channels_last):
    import random

    import torch.nn.functional as F
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3
    from ofa.utils.pytorch_utils import (
        cross_entropy_loss_with_soft_target,
        cross_entropy_with_label_smoothing,
    )

    def make():
        return OFAMobileNetV3(
            n_classes=1000,
            dropout_rate=0.1,
            width_mult=1.0,
            ks_list=[3, 5, 7],
            expand_ratio_list=[3, 4, 6],
            depth_list=[2, 3, 4],
        ).to(device)

    net, teacher = make(), make()
    kernels = (3, 5, 3, 3, 5)  # CompOFA's fixed kernels per stage
    teacher.set_active_subnet(ks=[k for k in kernels for _ in range(4)], e=6, d=4)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net, teacher = net.to(memory_format=fmt), teacher.to(memory_format=fmt)
    decay = [p for n, p in net.named_parameters() if "bn" not in n and "bias" not in n]
    no_decay = [p for n, p in net.named_parameters() if "bn" in n or "bias" in n]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 3e-5}, {"params": no_decay, "weight_decay": 0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 1000, (batch,), device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=amp)) if amp else None
    rng = random.Random(0)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad(), ctx() if ctx else _null():
            soft = F.softmax(teacher(x).float(), dim=1)
        for _ in range(4):
            d = [rng.choice((2, 3, 4)) for _ in range(5)]
            e = [dict(((2, 3), (3, 4), (4, 6)))[di] for di in d for _ in range(4)]
            net.set_active_subnet(ks=[k for k in kernels for _ in range(4)], e=e, d=d)
            with ctx() if ctx else _null():
                out = net(x)
            loss = cross_entropy_with_label_smoothing(out.float(), y, 0.1) + (
                cross_entropy_loss_with_soft_target(out.float(), soft)
            )
            loss.backward()
        opt.step()

    return step


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def time_steps(step, device, n):
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument(
        "--ofa-native",
        action="store_true",
        help="run OFA's step as OFA's own training runs it (fp32, contiguous), while ours uses "
        "--amp/--channels-last: the comparison a user who switches trainers sees",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="bound the timed part to about this many seconds: steps per round are chosen "
        "from the warm-up's step time (at least 2)",
    )
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "CUDA is not available here: this benchmark measures GPU training throughput and "
            "reports nothing without a GPU (use --device cpu for a smoke run)."
        )
        return 0
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    sides = {
        "compofa-bench": ours(device, args.batch, args.resolution, amp, args.channels_last),
        "ofa": reference(
            device,
            args.batch,
            args.resolution,
            None if args.ofa_native else amp,
            False if args.ofa_native else args.channels_last,
        ),
    }
    per_step = {}
    for name, step in sides.items():
        time_steps(step, device, max(1, args.warmup - 1))
        per_step[name] = time_steps(step, device, 1)
    steps = args.steps
    if args.seconds is not None:
        # rounds x (both sides) x steps must fit the bound, priced at the warm-up's pace.
        steps = max(2, int(args.seconds / (args.rounds * sum(per_step.values()))))
    ips: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):  # alternate so drift hits both sides alike
        for name, step in sides.items():
            ips[name].append(args.batch * steps / time_steps(step, device, steps))
        # Each round on stderr as it ends: a run cut by a time limit still shows what it had.
        line = ", ".join(f"{k} {v[-1]:.1f}" for k, v in ips.items())
        print(f"round {r + 1}/{args.rounds}: images/s {line}", file=sys.stderr, flush=True)
    med = {k: float(np.median(v)) for k, v in ips.items()}
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": args.batch,
        "resolution": args.resolution,
        "amp": args.amp,
        "channels_last": args.channels_last,
        "ofa_native": args.ofa_native,
        "subnets_per_step": 4,
        "steps_per_round": steps,
        "images_per_s": med,
        "ratio_ours_over_ofa": med["compofa-bench"] / med["ofa"],
        "rounds": ips,
    }
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
