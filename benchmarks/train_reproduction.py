"""Small-scale reproduction of the CompOFA and fOFA claims on Fashion-MNIST, end to end.

Trains five runs through the project's own trainer and recipes (trainers/*.toml), every
schedule multiplied by ONE factor ``s`` (``--scale``, or chosen to fit ``--time-budget-s``):

  teacher        the largest MobileNetV3 (K7 D4 E6) alone, labels only         (180 s epochs)
  ofa-ps         OFA progressive shrinking from that teacher: kernel, depth x2,
                 expand x2                                                      (+410 s epochs)
  compofa        CompOFA's own schedule: its teacher (kernels 3,5,3,3,5), then
                 the compound phases                       (180 + 150 = 330 s: ~half of OFA's 590)
  fofa           fOFA: no teacher; warmup of the largest, then in-place
                 distillation, upper-attentive sampling n=3                     (5 + 150 s epochs)
  compofa-same   CompOFA's compound phases stretched to OFA's budget (410 s epochs after the
                 same CompOFA teacher: 590 s in all, as OFA)

After each run, every one of the 243 CompOFA subnets is evaluated at two resolutions on the
10k test images, after BN recalibration on training images, into ``<run>/acc.csv`` (the
supernets of ofa-ps and fofa hold the CompOFA space as a subset). Then the accuracy predictor is
trained on compofa's acc.csv, ``search`` runs with it under MACs targets, and the searched
subnets' true accuracies are compared with the measured Pareto front.

Resolution: Fashion-MNIST images are 28 px; MobileNetV3 downsamples 32x, so 32 px is the
smallest input whose last feature map is still 1x1 (the project's minimum resolution too).
Training draws 32, 36 or 40 px per batch (elastic resolution, as OFA's 128-224 is elastic);
evaluation uses 32 and 40. Upsampling 28 px by 14-43% adds no information but keeps the
network's geometry meaningful, and 40 px costs ~1.6x the MACs of 32 px, so resolution is a
real gene of the trade-off.

Outputs (``--out``): ``plan.json``; per run ``runs/<name>/`` (checkpoints, metrics.jsonl,
acc.csv); ``summary.json`` (rewritten after each run: a timeout loses only the run in flight);
``claims.json`` and ``claims.md`` (the table of claims); ``acc_vs_macs.png`` (one colour per
run), ``pareto.png`` (the fronts), ``train_curves.png``; ``predictor/`` (the predictor, its
search and ``searched_vs_front.json``).

    # the real run: one GPU, the whole reproduction in the budget (plan printed first)
    python benchmarks/train_reproduction.py --device cuda --data fashion-mnist \\
        --time-budget-s 270 --out runs/repro
    # a fixed factor instead of a budget (no time guard beyond warnings)
    python benchmarks/train_reproduction.py --device cuda --scale 0.02 --out runs/repro
    # seconds: 1 step per phase, 3 subnets evaluated (CI runs this)
    python benchmarks/train_reproduction.py --smoke --device cpu --out /tmp/repro-smoke
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compofa_bench import data as data_mod
from compofa_bench import spaces, supernet
from compofa_bench.fileio import atomic_path, atomic_write_json, atomic_write_text
from compofa_bench.spaces import Arch
from compofa_bench.train import evaluate as E
from compofa_bench.train import recipe as R
from compofa_bench.train import trainer as T

TRAIN_RES = (32, 36, 40)
EVAL_RES = (32, 40)
#: Fraction of the time budget the plan fills; the rest absorbs estimation error.
PLAN_FILL = 0.80
#: "Same accuracy": within this many top-1 points (mean over all evaluated subnets).
SAME_ACC_PTS = 0.5
#: The run whose acc.csv trains the predictor: it always gets every subnet the budget allows.
PREDICTOR_SOURCE = "compofa"


# =============================================================================== the runs


@dataclass(frozen=True)
class Method:
    name: str
    recipe: str  # bundled recipe name
    description: str
    teacher_from: str | None = None  # a run whose teacher.pt/final.pt is the frozen teacher
    stretch: float = 1.0  # multiplies the epochs of the non-teacher phases
    supernet: bool = True  # evaluate the 243 CompOFA subnets (else: the largest alone)


def ofa_post_teacher_epochs() -> float:
    return sum(p.epochs for p in R.load("ofa-ps").phases if not p.is_teacher)


def compofa_post_teacher_epochs() -> float:
    return sum(p.epochs for p in R.load("compofa").phases if not p.is_teacher)


METHODS: tuple[Method, ...] = (
    Method("teacher", "teacher", "the largest net (K7 D4 E6) alone: OFA's teacher", supernet=False),
    Method("ofa-ps", "ofa-ps", "OFA progressive shrinking, teacher above", teacher_from="teacher"),
    Method("compofa", "compofa", "CompOFA, its own schedule (~half OFA's epochs)"),
    Method("fofa", "fofa", "fOFA, no teacher, in-place distillation"),
    Method(
        "compofa-same",
        "compofa",
        "CompOFA compound phases stretched to OFA's budget, compofa's teacher",
        teacher_from="compofa",
        stretch=ofa_post_teacher_epochs() / compofa_post_teacher_epochs(),
    ),
)


def method_recipe(m: Method, resolutions: Sequence[int], batch: int) -> R.Recipe:
    """The recipe as this run gives it to the trainer, before ``--scale``: non-teacher phases
    stretched. Teacher phases stay in it (they name the teacher's architecture); the trainer
    skips them when a teacher checkpoint is given."""
    r = R.load(m.recipe).with_resolutions(tuple(resolutions))
    r = dataclasses.replace(r, batch_size=batch)
    if m.stretch != 1.0:
        r = dataclasses.replace(
            r,
            phases=tuple(
                p
                if p.is_teacher
                else dataclasses.replace(
                    p, epochs=p.epochs * m.stretch, warmup_epochs=p.warmup_epochs * m.stretch
                )
                for p in r.phases
            ),
        )
    return r


def trained_phases(m: Method, recipe: R.Recipe) -> list[R.Phase]:
    """The phases this run trains itself (a given teacher skips the teacher phases)."""
    return [p for p in recipe.phases if not (p.is_teacher and m.teacher_from is not None)]


def budget_epochs(m: Method) -> float:
    """Epochs at --scale 1 that this method's result costs, the teacher it uses included."""
    return sum(p.epochs for p in method_recipe(m, TRAIN_RES, 64).phases)


# =============================================================================== timing model


@dataclass(frozen=True)
class StepCosts:
    """Seconds per optimizer step of ``batch`` images on this device, measured."""

    subnet_s: float  # one subnet forward + backward (averaged over random subnets)
    teacher_s: float  # one teacher forward without grad
    update_s: float  # optimizer step and the rest of a step
    eval_s: float  # one subnet at one resolution: BN recalibration + test set
    amp: str
    channels_last: bool
    batch: int

    @property
    def compound_step_s(self) -> float:
        """A CompOFA compound step (4 subnets + the teacher): the price used to compare."""
        return 4 * self.subnet_s + self.teacher_s + self.update_s

    def step_s(self, phase: R.Phase) -> float:
        t = phase.subnets_per_step * self.subnet_s + self.update_s
        return t + (self.teacher_s if phase.kd == "teacher" else 0.0)


def phase_plan(m: Method, batch: int, spe: int, scale: float) -> list[dict[str, Any]]:
    out = []
    for p in trained_phases(m, method_recipe(m, TRAIN_RES, batch).scaled(scale)):
        total, _ = T.phase_steps(p, spe)
        out.append({"phase": p.name, "epochs": p.epochs, "steps": total, "phase_obj": p})
    return out


def plan_seconds(
    methods: Sequence[Method],
    costs: StepCosts,
    spe: int,
    scale: float,
    batch: int,
    n_eval: int,
    n_eval_others: int | None = None,
) -> dict[str, dict[str, float]]:
    plan = {}
    for m in methods:
        rows = phase_plan(m, batch, spe, scale)
        train = sum(r["steps"] * costs.step_s(r["phase_obj"]) for r in rows)
        evals = eval_count(m, n_eval, n_eval_others) * len(EVAL_RES)
        plan[m.name] = {
            "train_s": train,
            "eval_s": evals * costs.eval_s,
            "steps": sum(r["steps"] for r in rows),
        }
    return plan


def eval_count(m: Method, n_eval: int, n_eval_others: int | None) -> int:
    """Subnets (per resolution) evaluated for ``m``: the teacher has one; the predictor's
    source every one the budget allows; the others at most ``n_eval_others`` when given."""
    if not m.supernet:
        return 1
    if m.name == PREDICTOR_SOURCE or n_eval_others is None:
        return n_eval
    return min(n_eval, n_eval_others)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_costs(
    device: torch.device,
    batch: int,
    amp: str,
    channels_last: bool,
    calib_images: int,
    val_images: int,
    repeats: int,
) -> StepCosts:
    """Time the pieces of a training step and one evaluation on this device, at the largest
    training resolution (a conservative price for the mean)."""
    from compofa_bench.train.losses import distillation_loss
    from compofa_bench.train.optim import build_sgd

    res = max(TRAIN_RES)
    space = spaces.get("ofa", (res,))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = supernet.build(n_classes=10).to(device).to(memory_format=fmt)
    opt = build_sgd(net, 0.01, 0.9, True, 3e-5)
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    rng = np.random.default_rng(0)
    archs = [space.sample(rng).with_resolution(res) for _ in range(repeats + 2)]

    def autocast():
        return torch.autocast(device.type, dtype=dtype) if dtype else _Null()

    def sub_pass(a: Arch) -> None:
        net.set_active(a)
        with autocast():
            out = net(x)
        distillation_loss(out, y, 0.1, out.detach(), 1.0).backward()

    def teach() -> None:
        net.set_active(space.largest(res))
        with torch.no_grad(), autocast():
            net(x)

    def timed(fn: Any, items: Sequence[Any]) -> float:
        fn(items[0])  # warm-up (kernel selection, allocator)
        _sync(device)
        t0 = time.perf_counter()
        for it in items[1:]:
            fn(it)
        _sync(device)
        return (time.perf_counter() - t0) / max(1, len(items) - 1)

    net.train()
    subnet_s = timed(sub_pass, archs)
    teacher_s = timed(lambda _i: teach(), list(range(repeats + 1)))
    update_s = timed(lambda _i: opt.step(), list(range(repeats + 1)))
    calib = torch.randn(calib_images, 3, res, res, device=device).contiguous(memory_format=fmt)
    vx = torch.randn(val_images, 3, res, res, device=device).contiguous(memory_format=fmt)
    vy = torch.randint(0, 10, (val_images,), device=device)
    c_space = spaces.get("compofa", (res,))
    c_archs = [c_space.sample(rng).with_resolution(res) for _ in range(max(2, repeats // 2) + 1)]
    eval_s = timed(
        lambda a: E.top1_in_place(net, a, calib, vx, vy, EVAL_BATCH[device.type]), c_archs
    )
    # Step bookkeeping outside these pieces (sampling, resize, logging): about one update.
    return StepCosts(subnet_s, teacher_s, 2 * update_s, eval_s, amp, channels_last, batch)


EVAL_BATCH = {"cuda": 5000, "cpu": 500}


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> bool:
        return False


# =============================================================================== evaluation


def eval_archs(m: Method, limit: int | None) -> list[Arch]:
    """The CompOFA subnets at each evaluation resolution, largest and smallest first (so a
    budget cut still reports them); the teacher: OFA's largest net alone."""
    if not m.supernet:
        sp = spaces.get("ofa", EVAL_RES)
        return [sp.largest(r) for r in EVAL_RES]
    sp = spaces.get("compofa", EVAL_RES)
    structures = list(sp.enumerate(resolutions=[EVAL_RES[0]]))
    big, small = sp.largest(EVAL_RES[0]), sp.smallest(EVAL_RES[0])
    rest = [a for a in structures if a not in (big, small)]
    if limit is not None and limit < len(structures):
        # An even spread over the enumeration (every depth pattern gets a share).
        pick = np.linspace(0, len(rest) - 1, max(0, limit - 2)).round().astype(int)
        rest = [rest[i] for i in sorted(set(pick.tolist()))]
    ordered = [big, small, *rest]
    return [a.with_resolution(r) for a in ordered for r in EVAL_RES]


class EvalData:
    """Calibration and test images per evaluation resolution, resized and normalized, on the
    device (OFA recalibrates BN on a fixed random subset of training images)."""

    def __init__(
        self,
        spec: data_mod.DataSpec,
        device: torch.device,
        calib_images: int,
        val_images: int | None,
        channels_last: bool,
        seed: int,
    ) -> None:
        train = data_mod.DeviceFashionMNIST(spec.root, device)
        idx = data_mod.subset_indices(len(train), calib_images, seed + 1)
        calib = train.plain(idx)
        vx, vy = data_mod.fashion_mnist_test(spec.root, device)
        if val_images is not None and val_images < len(vy):
            vi = torch.from_numpy(data_mod.subset_indices(len(vy), val_images, seed)).to(device)
            vx, vy = vx[vi], vy[vi]
        fmt = torch.channels_last if channels_last else torch.contiguous_format

        def prep(x: torch.Tensor, r: int) -> torch.Tensor:
            y = data_mod.normalize(data_mod.resize_batch(x, r), spec.mean, spec.std)
            return y.contiguous(memory_format=fmt)

        self.calib = {r: prep(calib, r) for r in EVAL_RES}
        self.val_x = {r: prep(vx, r) for r in EVAL_RES}
        self.val_y = vy


def evaluate_run(
    checkpoint: Path,
    archs: Sequence[Arch],
    space_name: str,
    data: EvalData,
    device: torch.device,
    channels_last: bool,
    out_csv: Path,
    log: Any,
) -> list[tuple[Arch, float]]:
    net = E.load_supernet(checkpoint, 10, device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    rows: list[tuple[Arch, float]] = []
    t0 = time.perf_counter()
    for i, a in enumerate(archs):
        r = a.resolution
        acc = E.top1_in_place(
            net, a, data.calib[r], data.val_x[r], data.val_y, EVAL_BATCH[device.type]
        )
        rows.append((a, acc))
        if (i + 1) % 100 == 0 or i + 1 == len(archs):
            el = time.perf_counter() - t0
            log(
                f"  eval {i + 1}/{len(archs)}  last top-1 {acc:.4f}  "
                f"{(i + 1) / el:.1f} subnets/s  eta {el / (i + 1) * (len(archs) - i - 1):.0f}s"
            )
    write_acc_csv(out_csv, space_name, rows)
    return rows


def write_acc_csv(path: Path, space_name: str, rows: Sequence[tuple[Arch, float]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(E.HEADER)
        for a, acc in rows:
            w.writerow(E.AccRow(space_name, a, acc).as_csv())


def read_acc_csv(path: Path) -> list[tuple[Arch, float]]:
    from compofa_bench import predictor as P

    d = P.read_acc_csv(path)
    return list(zip(d.archs, d.top1.tolist(), strict=True))


def acc_stats(rows: Sequence[tuple[Arch, float]], m: Method) -> dict[str, Any]:
    sp = spaces.get("compofa" if m.supernet else "ofa", EVAL_RES)
    by = {(a.key()): acc for a, acc in rows}
    out: dict[str, Any] = {"n_evaluated": len(rows), "by_resolution": {}}
    for r in EVAL_RES:
        accs = [acc for a, acc in rows if a.resolution == r]
        out["by_resolution"][str(r)] = {
            "largest": by.get(sp.largest(r).key()),
            "smallest": by.get(sp.smallest(r).key()) if m.supernet else None,
            "mean": float(np.mean(accs)) if accs else None,
            "min": float(np.min(accs)) if accs else None,
            "max": float(np.max(accs)) if accs else None,
        }
    accs = [acc for _, acc in rows]
    out["mean"] = float(np.mean(accs))
    out["largest"] = max(
        (v["largest"] for v in out["by_resolution"].values() if v["largest"] is not None),
        default=None,
    )
    smallest = [v["smallest"] for v in out["by_resolution"].values() if v["smallest"] is not None]
    out["smallest"] = min(smallest) if smallest else None
    return out


@functools.cache  # the plots ask for the same subnets after every run
def macs_of(a: Arch) -> float:
    return supernet.count_macs(a, n_classes=10) / 1e6


def pareto(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (lower MACs, higher accuracy), by MACs."""
    front: list[tuple[float, float]] = []
    for c, s in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or s > front[-1][1]:
            front.append((c, s))
    return front


# =============================================================================== the driver


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with self.path.open("a") as fh:
            fh.write(line + "\n")

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


#: Batch sizes ``--batch-size auto`` tries on CUDA (lr scales linearly; 2048 is the
#: recipes' reference batch, OFA's 32 GPUs x 64).
AUTO_BATCHES = (512, 1024, 2048)
#: ... keeping the largest whose step costs at most this many times the smallest's.
AUTO_BATCH_SLOWDOWN = 1.6


def choose_speed(args: argparse.Namespace, device: torch.device, log: Log) -> StepCosts:
    """Measure the step pieces for each AMP/channels-last combination asked for (``auto``
    tries both on CUDA) and keep the fastest training step; then, for ``--batch-size auto``,
    the batch size.

    A 32-40 px supernet step on a GPU is bound by kernel launches and Python, not arithmetic:
    a bigger batch then costs little more per step and trains on more images in the same
    time. Auto keeps the largest batch whose step is at most 1.6x the smallest's (at least
    2.5x the images per second for 2048, at most 1.6x fewer steps)."""
    amps = ["bf16", "none"] if args.amp == "auto" else [args.amp]
    cls = [True, False] if args.channels_last == "auto" else [args.channels_last == "on"]
    if device.type != "cuda":
        amps = ["none"] if args.amp == "auto" else amps
        # Channels-last stays in the race on CPU: oneDNN's depthwise convolutions ran 1.6-2.6x
        # faster in NHWC on the 2-core VM (batch 64: 230 vs 452 ms per subnet step).
    repeats = 2 if args.smoke else 6
    auto = args.batch_size == "auto"
    if auto:
        # CPU: images/s hardly depend on the batch, so the smaller batch buys 4x the optimizer
        # steps. At the ~0.002 scale a 2-hour CPU budget allows, the teacher reached 74.1%
        # top-1 at batch 64 against 63.6% at 256 in the same ~120 s (benchmarks/RESULTS.md).
        batches = list(AUTO_BATCHES) if device.type == "cuda" else [64]
    else:
        batches = [int(args.batch_size)]
    first = batches[len(batches) // 2]

    def measure(b: int, amp: str, cl: bool) -> StepCosts:
        c = measure_costs(device, b, amp, cl, args.calib_images, args.val_images or 10000, repeats)
        log(
            f"speed batch {b} amp={amp} channels_last={cl}: subnet fwd+bwd "
            f"{c.subnet_s * 1e3:.1f} ms, teacher fwd {c.teacher_s * 1e3:.1f} ms, update "
            f"{c.update_s * 1e3:.1f} ms per step; compound step {c.compound_step_s * 1e3:.1f} "
            f"ms = {4 * b / c.compound_step_s:.0f} subnet-images/s; one subnet evaluated in "
            f"{c.eval_s * 1e3:.1f} ms"
        )
        return c

    best = min(
        (measure(first, amp, cl) for amp in amps for cl in cls),
        key=lambda c: c.compound_step_s,
    )
    by_batch = {first: best}
    for b in batches:
        if b not in by_batch:
            by_batch[b] = measure(b, best.amp, best.channels_last)
    base = by_batch[min(by_batch)].compound_step_s
    ok = [b for b, c in by_batch.items() if c.compound_step_s <= AUTO_BATCH_SLOWDOWN * base]
    return by_batch[max(ok)]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument(
        "--data",
        default="fashion-mnist",
        help="'fashion-mnist' (Debian's package) or a folder holding its four .gz files",
    )
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="wall seconds for everything; the scale is chosen to fill ~80%% of it",
    )
    ap.add_argument(
        "--scale",
        type=float,
        default=None,
        help="fixed schedule factor (the upper bound when --time-budget-s is given too)",
    )
    ap.add_argument(
        "--batch-size",
        default="auto",
        help="images per step, or 'auto' (default): on CUDA the largest of 512/1024/2048 "
        "whose measured step costs at most 1.6x the 512 one's; 64 on CPU",
    )
    ap.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--calib-images", type=int, default=2000, help="BN recalibration images")
    ap.add_argument("--val-images", type=int, default=None, help="test images (default: all 10000)")
    ap.add_argument("--subset", type=int, default=None, help="training images (default all)")
    ap.add_argument(
        "--eval-others",
        type=int,
        default=None,
        help=f"evaluate at most this many subnets (largest and smallest included) for the "
        f"supernet runs other than {PREDICTOR_SOURCE}, which trains the predictor and always "
        f"gets every subnet the budget allows (default: the same for all; a CPU budget "
        f"needs it)",
    )
    ap.add_argument("--methods", default=",".join(m.name for m in METHODS))
    ap.add_argument("--plan-only", action="store_true", help="measure, print the plan, stop")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="seconds: 128 images, 1 step per phase, 3 subnets at 2 resolutions (CI)",
    )
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if args.smoke:
        args.subset = args.subset or 128
        args.batch_size = "16"
        args.calib_images = min(args.calib_images, 32)
        args.val_images = args.val_images or 100
        if args.scale is None and args.time_budget_s is None:
            args.scale = 1e-9  # every phase: its minimum of one step
    if args.scale is None and args.time_budget_s is None:
        ap.error("give --time-budget-s or --scale (or --smoke)")
    if args.eval_others is not None and args.eval_others < 2:
        ap.error(
            f"--eval-others must be at least 2 (the largest and the smallest subnet), not "
            f"{args.eval_others}"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if args.smoke and device.type == "cpu":
        # Tiny tensors: threads only add wake-ups (and spin badly on a shared, busy machine).
        torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    wanted = [s.strip() for s in args.methods.split(",") if s.strip()]
    methods = [m for m in METHODS if m.name in wanted]
    for m in methods:
        if m.teacher_from and m.teacher_from not in wanted:
            print(f"error: {m.name} needs the run {m.teacher_from}", file=sys.stderr)
            return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "log.txt")
    spec = data_mod.resolve(args.data)
    if spec.kind != "fashion-mnist":
        print(f"error: --data {args.data} is not Fashion-MNIST", file=sys.stderr)
        return 2
    if args.batch_size != "auto" and not args.batch_size.isdigit():
        ap.error(f"--batch-size must be a number or 'auto', not {args.batch_size!r}")
    n_train = args.subset or 60000
    eval_limit = 3 if args.smoke else None
    n_eval = 3 if args.smoke else spaces.get("compofa").structure_count()
    others = args.eval_others

    # ------------------------------------------------------------------ plan
    log(
        f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"torch {torch.__version__}; measuring step costs"
    )
    if args.smoke:
        # Nominal prices: the smoke run proves the code path, and timing it would cost more
        # than the run itself.
        costs = StepCosts(0.05, 0.02, 0.01, 0.05, "none", False, int(args.batch_size))
    else:
        costs = choose_speed(args, device, log)
    args.batch_size = costs.batch
    spe = T.steps_per_epoch(n_train, args.batch_size)
    unit = plan_seconds(methods, costs, spe, 1.0, args.batch_size, n_eval, others)
    train_at_1 = sum(v["train_s"] for v in unit.values())
    eval_total = sum(v["eval_s"] for v in unit.values())
    fixed_s = log.elapsed() + 15.0 + 10.0 * len(methods)  # predictor+search, loads, plots
    scale = args.scale if args.scale is not None else math.inf
    if args.time_budget_s is not None:
        room = PLAN_FILL * args.time_budget_s - fixed_s - eval_total
        if room <= 0:
            log(
                f"warning: the budget leaves no time to train after evaluation "
                f"({eval_total:.0f}s) and overheads ({fixed_s:.0f}s): evaluating fewer subnets"
            )
            eval_limit = max(3, int(n_eval * PLAN_FILL * args.time_budget_s / 2 / eval_total))
            n_eval = eval_limit
            unit = plan_seconds(methods, costs, spe, 1.0, args.batch_size, n_eval, others)
            eval_total = sum(v["eval_s"] for v in unit.values())
            room = PLAN_FILL * args.time_budget_s - fixed_s - eval_total
        scale = min(scale, max(room, 1e-9) / train_at_1)
    plan = plan_seconds(methods, costs, spe, scale, args.batch_size, n_eval, others)
    plan_doc = {
        "scale": scale,
        "batch_size": args.batch_size,
        "steps_per_epoch": spe,
        "train_resolutions": TRAIN_RES,
        "eval_resolutions": EVAL_RES,
        "amp": costs.amp,
        "channels_last": costs.channels_last,
        "costs": dataclasses.asdict(costs),
        "time_budget_s": args.time_budget_s,
        "methods": {},
    }
    log(
        f"PLAN: scale s = {scale:.5g} of every paper schedule; batch {args.batch_size}, "
        f"{spe} steps/epoch, amp {costs.amp}, channels-last {costs.channels_last}, train "
        f"{list(TRAIN_RES)} px, eval {n_eval} CompOFA subnets x {list(EVAL_RES)} px"
        + (f" ({others} for runs other than {PREDICTOR_SOURCE})" if others else "")
    )
    for m in methods:
        rows = phase_plan(m, args.batch_size, spe, scale)
        phases = ", ".join(f"{r['phase']} {r['epochs']:.3g}ep/{r['steps']}st" for r in rows)
        p = plan[m.name]
        log(f"  {m.name:13s} {phases}  ~{p['train_s']:.0f}s train + {p['eval_s']:.0f}s eval")
        plan_doc["methods"][m.name] = {
            "phases": [{k: v for k, v in r.items() if k != "phase_obj"} for r in rows],
            **p,
        }
    total_plan = sum(p["train_s"] + p["eval_s"] for p in plan.values()) + fixed_s
    log(
        f"  expected total ~{total_plan:.0f}s"
        + (f" of the {args.time_budget_s:.0f}s budget" if args.time_budget_s else "")
    )
    atomic_write_json(out / "plan.json", plan_doc)
    if args.plan_only:
        return 0

    # ------------------------------------------------------------------ runs
    eval_data = EvalData(
        spec, device, args.calib_images, args.val_images, costs.channels_last, args.seed
    )
    summary_path = out / "summary.json"
    summary: dict[str, Any] = {"plan": plan_doc, "methods": {}}
    run_scale: dict[str, float] = {}
    spent_plan = spent_real = 0.0
    spent_eval_plan = spent_eval_real = 0.0
    for mi, m in enumerate(methods):
        run_dir = out / "runs" / m.name
        s = scale
        if args.time_budget_s is not None and spent_plan > 0:
            # The guard: if the runs so far took longer than planned, shrink what is left
            # (fewer epochs, complete schedules) rather than overrun. Flagged in the claims.
            slow = spent_real / spent_plan
            slow_eval = max(1.0, spent_eval_real / max(1e-9, spent_eval_plan))
            left = args.time_budget_s - log.elapsed() - 15.0
            rest = methods[mi:]
            ev = sum(plan[x.name]["eval_s"] * slow_eval for x in rest)
            need = ev + sum(plan[x.name]["train_s"] * slow for x in rest)
            if need > left:
                s = scale * max(0.05, (left - ev) / max(1e-9, need - ev))
                log(
                    f"GUARD: training so far took {slow:.2f}x its planned time; the rest "
                    f"would overrun: {m.name} runs at s = {s:.5g}"
                )
        run_scale[m.name] = s
        recipe = method_recipe(m, TRAIN_RES, args.batch_size)
        teacher_ckpt = None
        if m.teacher_from is not None:
            src = out / "runs" / m.teacher_from
            teacher_ckpt = next(
                (src / f for f in (T.TEACHER, T.FINAL) if (src / f).is_file()),
                src / T.CHECKPOINT,
            )
        t_start = time.perf_counter()
        result_path = run_dir / T.FINAL
        log(f"== {m.name}: {m.description} (s = {s:.5g})")
        truncated = False
        if result_path.is_file():
            log(f"  {result_path} exists: reusing it")
            train_s = None
        else:
            total_steps = plan_seconds([m], costs, spe, s, args.batch_size, n_eval, others)[m.name][
                "steps"
            ]
            cfg = T.TrainConfig(
                data=args.data,
                out=run_dir,
                scale=s,
                subset=args.subset,
                device=args.device,
                amp=costs.amp,
                channels_last=costs.channels_last,
                seed=args.seed,
                teacher_checkpoint=teacher_ckpt,
                log_every=max(1, int(total_steps) // 400),
                quiet=not sys.stdout.isatty(),
                data_on_device=True,
                epoch_checkpoints=False,  # phase ends only: each write is ~100 MB
            )
            trainer = _trainer(recipe, cfg, run_dir, log)
            deadline = None
            if args.time_budget_s is not None:
                # The hard stop: this run may use the budget minus the evaluations still to
                # come and the predictor; past it, the trainer checkpoints and stops, and the
                # checkpoint is evaluated as it is (flagged "truncated").
                later_eval = sum(plan[x.name]["eval_s"] for x in methods[mi:])
                deadline = log.t0 + args.time_budget_s - 15.0 - 1.5 * later_eval
            ticker = _Ticker(log, m.name, int(total_steps), deadline)
            try:
                trainer.run(on_step=ticker)
            except T.Interrupted:
                if not ticker.stopped:
                    raise  # a real Ctrl-C/SIGTERM: stop the whole script
                truncated = True
                result_path = run_dir / T.CHECKPOINT
                log(f"  DEADLINE: {m.name} stopped at step {ticker.n}/{ticker.total}")
            _sync(device)
            train_s = time.perf_counter() - t_start
        t_eval = time.perf_counter()
        limit = eval_count(m, n_eval, others) if (eval_limit or others) else None
        archs = eval_archs(m, limit)
        rows = evaluate_run(
            result_path,
            archs,
            "compofa" if m.supernet else "ofa",
            eval_data,
            device,
            costs.channels_last,
            run_dir / "acc.csv",
            log,
        )
        eval_s = time.perf_counter() - t_eval
        spent_eval_plan += plan[m.name]["eval_s"]
        spent_eval_real += eval_s
        if train_s is not None:
            spent_plan += plan_seconds([m], costs, spe, s, args.batch_size, n_eval, others)[m.name][
                "train_s"
            ]
            spent_real += train_s
        stats = acc_stats(rows, m)
        if m.teacher_from is not None:
            teacher_epochs = summary["methods"][m.teacher_from]["teacher_epochs"]
        else:
            own = method_recipe(m, TRAIN_RES, args.batch_size).scaled(s).phases
            teacher_epochs = sum(p.epochs for p in own if p.is_teacher)
        trained = trained_phases(m, method_recipe(m, TRAIN_RES, args.batch_size).scaled(s))
        steps = sum(T.phase_steps(p, spe)[0] for p in trained)
        subnet_images = sum(
            T.phase_steps(p, spe)[0] * p.subnets_per_step * args.batch_size for p in trained
        )
        summary["methods"][m.name] = {
            "description": m.description,
            "recipe": m.recipe,
            "scale": s,
            "degraded": s != scale or truncated,
            "truncated": truncated,
            "teacher_from": m.teacher_from,
            "phases": [
                {"phase": p.name, "epochs": p.epochs, "steps": T.phase_steps(p, spe)[0]}
                for p in trained
            ],
            "epochs_own": sum(p.epochs for p in trained),
            # The teacher's epochs as its run trained them (that run's s, which a guard may
            # have made differ from this one's).
            "teacher_epochs": teacher_epochs,
            "epochs_with_teacher": sum(p.epochs for p in trained)
            + (teacher_epochs if m.teacher_from is not None else 0.0),
            "paper_epochs_with_teacher": budget_epochs(m),
            "steps": steps,
            "images_seen": steps * args.batch_size,
            "subnet_images": subnet_images,
            "train_s": train_s,
            "eval_s": eval_s,
            "accuracy": stats,
        }
        atomic_write_json(summary_path, summary)
        log(
            f"  {m.name}: train {train_s if train_s is None else round(train_s, 1)}s, eval "
            f"{eval_s:.1f}s; top-1 largest {_pct(stats['largest'])}, smallest "
            f"{_pct(stats['smallest'])}, mean {_pct(stats['mean'])} over {len(rows)}"
        )
        write_reports(out, methods, summary, log)

    # ------------------------------------------------------------------ predictor
    if "compofa" in summary["methods"]:
        try:
            command = "python benchmarks/train_reproduction.py " + " ".join(
                sys.argv[1:] if argv is None else argv
            )
            summary["predictor"] = predictor_and_search(out, args.smoke, log, command)
        except Exception as exc:  # the training results stand even if this part fails
            log(f"predictor/search failed: {type(exc).__name__}: {exc}")
            summary["predictor"] = {"error": f"{type(exc).__name__}: {exc}"}
        atomic_write_json(summary_path, summary)
        write_reports(out, methods, summary, log)
    log(f"done in {log.elapsed():.0f}s; {out / 'claims.md'}")
    return 0


def _trainer(recipe: R.Recipe, cfg: T.TrainConfig, run_dir: Path, log: Log) -> T.Trainer:
    """A trainer for ``run_dir``: an interrupted earlier attempt with the same settings is
    continued exactly; one with other settings (another scale) is moved aside."""
    from compofa_bench.errors import TrainError

    if (run_dir / T.CHECKPOINT).is_file():
        try:
            return T.Trainer(recipe, cfg, resume=True)
        except TrainError as exc:
            stale = run_dir.with_name(f"{run_dir.name}.stale-{int(time.time())}")
            log(f"  cannot resume {run_dir} ({exc}); moved to {stale}")
            run_dir.rename(stale)
    return T.Trainer(recipe, cfg)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


class _Ticker:
    """A progress line every few seconds for logs that are not terminals: phase, step, loss,
    batch accuracy, images/s, ETA of the run. Past ``deadline`` (perf_counter seconds) it asks
    the trainer to stop as a SIGTERM does: finish the step, checkpoint, raise Interrupted."""

    def __init__(self, log: Log, name: str, total_steps: int, deadline: float | None = None):
        self.log, self.name, self.total = log, name, max(1, total_steps)
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.n = 0
        self.deadline = deadline
        self.stopped = False

    def __call__(self, row: dict[str, Any]) -> None:
        self.n += 1
        now = time.perf_counter()
        if self.deadline is not None and now > self.deadline and not self.stopped:
            self.stopped = True
            os.kill(os.getpid(), signal.SIGTERM)
        if now - self.last < 5.0 and self.n < self.total:
            return
        self.last = now
        el = now - self.t0
        self.log(
            f"  {self.name} {row['phase']} ep {row['epoch'] + 1} step {self.n}/{self.total} "
            f"loss {row['loss']:.3f} acc {row['acc']:.3f} lr {row['lr']:.3g} "
            f"{row['images_per_s']:.0f} img/s  eta {el / self.n * (self.total - self.n):.0f}s"
        )


# =============================================================================== reports


def write_reports(out: Path, methods: Sequence[Method], summary: dict[str, Any], log: Log) -> None:
    done = summary["methods"]
    claims = claims_table(done)
    doc = {"claims": claims, "methods": done, "predictor": summary.get("predictor")}
    atomic_write_json(out / "claims.json", doc)
    atomic_write_text(out / "claims.md", claims_markdown(doc, summary["plan"]))
    try:
        plot_all(out, [m for m in methods if m.name in done], done)
    except Exception as exc:  # a plot never costs the numbers
        log(f"plotting failed: {type(exc).__name__}: {exc}")


def _acc(done: dict[str, Any], name: str, key: str) -> float | None:
    return done.get(name, {}).get("accuracy", {}).get(key)


def claims_table(done: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim, the figures that test it, and whether it holds here."""
    out = []

    def compare(claim: str, a: str, b: str, budget_note: str) -> None:
        if a not in done or b not in done:
            return
        da, db = done[a], done[b]
        d_mean = 100 * (_acc(done, a, "mean") - _acc(done, b, "mean"))
        d_large = _delta(_acc(done, a, "largest"), _acc(done, b, "largest"))
        d_small = _delta(_acc(done, a, "smallest"), _acc(done, b, "smallest"))
        ratio_ep = db["epochs_with_teacher"] / max(1e-12, da["epochs_with_teacher"])
        ta = (da["train_s"] or 0) + (_teacher_s(done, a) or 0)
        tb = (db["train_s"] or 0) + (_teacher_s(done, b) or 0)
        out.append(
            {
                "claim": claim,
                "method": a,
                "baseline": b,
                "epochs_ratio_baseline_over_method": ratio_ep,
                "wall_ratio_baseline_over_method": (tb / ta) if ta > 0 else None,
                "delta_mean_pts": d_mean,
                "delta_largest_pts": d_large,
                "delta_smallest_pts": d_small,
                "holds": d_mean >= -SAME_ACC_PTS,
                "test": f"mean top-1 over all evaluated subnets within {SAME_ACC_PTS} points "
                f"of the baseline or better; {budget_note}",
                "degraded": bool(da.get("degraded") or db.get("degraded")),
            }
        )

    compare(
        "CompOFA reaches OFA's accuracy in about half of OFA's epochs",
        "compofa",
        "ofa-ps",
        "epochs include each method's teacher",
    )
    compare(
        "CompOFA at OFA's budget (for reference: what the extra epochs buy)",
        "compofa-same",
        "ofa-ps",
        "same epochs",
    )
    compare(
        "fOFA needs no teacher and 1.5-1.8x fewer epochs than CompOFA at the same accuracy",
        "fofa",
        "compofa",
        "fOFA trains no teacher; epochs include CompOFA's teacher",
    )
    return out


def _teacher_s(done: dict[str, Any], name: str) -> float | None:
    src = done[name].get("teacher_from")
    return None if src is None or src not in done else done[src]["train_s"]


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else 100 * (a - b)


def claims_markdown(doc: dict[str, Any], plan: dict[str, Any]) -> str:
    done = doc["methods"]
    lines = [
        "# CompOFA / fOFA reproduction on Fashion-MNIST",
        "",
        f"Schedule factor s = {plan['scale']:.5g} (every paper schedule x s); batch "
        f"{plan['batch_size']}, train {plan['train_resolutions']} px, eval "
        f"{plan['eval_resolutions']} px, amp {plan['amp']}, channels-last "
        f"{plan['channels_last']}.",
        "",
        "| run | s | epochs (own) | epochs incl. teacher | steps | images seen | train s | "
        "eval s | largest | smallest | mean | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in done.items():
        a = d["accuracy"]
        lines.append(
            f"| {name}{' (degraded)' if d['degraded'] else ''} | {d['scale']:.4g} | "
            f"{d['epochs_own']:.3g} | {d['epochs_with_teacher']:.3g} | {d['steps']} | "
            f"{d['images_seen']:,} | {_num(d['train_s'])} | {_num(d['eval_s'])} | "
            f"{_pct(a['largest'])} | {_pct(a['smallest'])} | {_pct(a['mean'])} | "
            f"{a['n_evaluated']} |"
        )
    lines += [
        "",
        "Largest/smallest: the CompOFA space's largest (kernels 3,5,3,3,5, D4, E6) and smallest "
        "subnet, best/worst over the evaluation resolutions; the teacher row is OFA's K7 D4 E6 "
        "net. Mean: over all evaluated (subnet, resolution) pairs.",
        "",
        "| claim | method vs baseline | epochs ratio | wall ratio | Δ mean | Δ largest | "
        "Δ smallest | holds here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["claims"]:
        lines.append(
            f"| {c['claim']} | {c['method']} vs {c['baseline']} | "
            f"{c['epochs_ratio_baseline_over_method']:.2f}x | "
            f"{_num(c['wall_ratio_baseline_over_method'], 2)}x | {c['delta_mean_pts']:+.2f} | "
            f"{_num(c['delta_largest_pts'], 2, True)} | {_num(c['delta_smallest_pts'], 2, True)} | "
            f"{'yes' if c['holds'] else 'NO'}{' (degraded run)' if c['degraded'] else ''} |"
        )
    lines += [
        "",
        f"Δ in top-1 points; 'holds' = {doc['claims'][0]['test']}." if doc["claims"] else "",
    ]
    p = doc.get("predictor")
    if p and "error" not in p:
        lines += [
            "",
            "## Accuracy predictor and search",
            "",
            f"Trained on `{p['trained_on']}`: held-out RMSE {100 * p['val_rmse']:.3f} points, "
            f"Spearman {p['val_spearman']:.3f}, Kendall tau {p['val_kendall_tau']:.3f} "
            f"({p['n_val']} held-out subnets).",
            "",
            "| MMACs target | searched subnet | MMACs | predicted | true | best true under target "
            "| gap (pts) |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in p["targets"]:
            lines.append(
                f"| {t['target_mmacs']:.2f} | {t['key']} | {_num(t['mmacs'], 2)} | "
                f"{_pct(t['predicted'])} | {_pct(t['true'])} | {_pct(t['front_best'])} | "
                f"{_num(t['gap_pts'], 2)} |"
            )
    return "\n".join(lines) + "\n"


def _num(x: float | None, nd: int = 1, sign: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def plot_all(out: Path, methods: Sequence[Method], done: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compofa_bench.train.curves import plot_curves, read_metrics

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig1, ax1 = plt.subplots(figsize=(8, 5.5))
    fig2, ax2 = plt.subplots(figsize=(8, 5.5))
    for i, m in enumerate(methods):
        if not m.supernet:
            continue
        path = out / "runs" / m.name / "acc.csv"
        if not path.is_file():
            continue
        rows = read_acc_csv(path)
        pts = [(macs_of(a), 100 * acc) for a, acc in rows]
        c = colours[i % len(colours)]
        for r, marker in zip(EVAL_RES, ("o", "^"), strict=False):
            sel = [(macs_of(a), 100 * acc) for a, acc in rows if a.resolution == r]
            if sel:
                ax1.scatter(
                    *zip(*sel, strict=True),
                    s=9,
                    color=c,
                    marker=marker,
                    alpha=0.6,
                    label=f"{m.name} {r}px",
                )
        front = pareto(pts)
        ax2.step(*zip(*front, strict=True), where="post", color=c, label=m.name)
        ax2.scatter(*zip(*front, strict=True), s=10, color=c)
    for ax, fig, name, title in (
        (ax1, fig1, "acc_vs_macs.png", "CompOFA subnets: top-1 vs MACs"),
        (ax2, fig2, "pareto.png", "Pareto fronts (top-1 vs MACs)"),
    ):
        ax.set_xlabel("MMACs (Fashion-MNIST head, 10 classes)")
        ax.set_ylabel("top-1 on the Fashion-MNIST test set (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    runs = {}
    for m in methods:
        mp = out / "runs" / m.name / T.METRICS
        if mp.is_file():
            runs[m.name] = read_metrics(mp)
    if runs:
        plot_curves(runs, out / "train_curves.png", title="training curves (Fashion-MNIST)")


# =============================================================================== predictor


def predictor_and_search(out: Path, smoke: bool, log: Log, command: str) -> dict[str, Any]:
    """Train the predictor on compofa's acc.csv, search with it under MACs targets, and score
    the winners by their measured accuracy against the measured Pareto front."""
    from compofa_bench import predictor as P
    from compofa_bench.export import SubnetSource
    from compofa_bench.jobs import SearchJob, run_search_job

    acc_path = out / "runs" / "compofa" / "acc.csv"
    data = P.read_acc_csv(acc_path)
    cfg = P.TrainConfig(max_epochs=5 if smoke else 500, patience=30)
    t0 = time.perf_counter()
    pred = P.train_predictor(data, cfg)
    pred.source = "Fashion-MNIST top-1 of the CompOFA supernet (benchmarks/train_reproduction.py)"
    pred.info["trained_on"] = "runs/compofa/acc.csv: 243 CompOFA subnets x 32/40 px"
    pred.info["command"] = command
    if smoke:
        # Written by a seconds-long run of a few steps: it ranks noise. The demo refuses to
        # use it by default (demo.accuracy_source).
        pred.source += " [SMOKE PLACEHOLDER: not a trained result]"
        pred.info["placeholder"] = True
    pdir = out / "predictor"
    pdir.mkdir(parents=True, exist_ok=True)
    ppath = pred.save(pdir / "predictor.pt")
    (pdir / "acc.csv").write_bytes(acc_path.read_bytes())
    atomic_write_text(
        pdir / "README.md",
        "# Fashion-MNIST accuracy predictor\n\n"
        + (
            "**SMOKE PLACEHOLDER** (a few training steps): not a trained result.\n\n"
            if smoke
            else ""
        )
        + "`predictor.pt`: OFA's MLP over the CompOFA encoding (resolutions 32/40 px), trained "
        "by `compofa-bench predictor train` logic on `acc.csv`, the measured top-1 of "
        f"{len({a.key() for a in data.archs}) // len(EVAL_RES)} CompOFA subnets at 32 and 40 px "
        "on the Fashion-MNIST test set (Debian's "
        "dataset-fashion-mnist), BN recalibrated, from the `compofa` run (CompOFA's own "
        f"schedule x s) of:\n\n    {command}\n\n"
        f"Held-out ({pred.info['n_val']} subnets): RMSE {100 * pred.info['val_rmse']:.3f} top-1 "
        f"points, Spearman {pred.info['val_spearman']:.3f}.\n",
    )
    log(
        f"predictor: held-out RMSE {100 * pred.info['val_rmse']:.3f} points, Spearman "
        f"{pred.info['val_spearman']:.3f} on {pred.info['n_val']} subnets "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    true = {(a.key()): acc for a, acc in zip(data.archs, data.top1.tolist(), strict=True)}
    macs = {a.key(): macs_of(a) for a in data.archs}
    lo, hi = min(macs.values()), max(macs.values())
    targets = tuple(round(lo + f * (hi - lo), 3) for f in (0.1, 0.3, 0.5, 0.7, 0.9))
    job = SearchJob(
        space="compofa",
        targets=targets,
        out_dir=str(pdir / "search"),
        macs=True,
        predictor=str(ppath),
        resolutions=EVAL_RES,
        seed=0,
        source=SubnetSource(n_classes=10),
    )
    doc = run_search_job(job)
    rows = []
    for t in doc["targets"]:
        if t.get("arch") is None:
            continue
        key = t["key"]
        under = [v for k, v in true.items() if macs[k] <= t["target_mmacs"] + 1e-9]
        front_best = max(under) if under else None
        rows.append(
            {
                "target_mmacs": t["target_mmacs"],
                "key": key,
                "mmacs": macs.get(key, t["mmacs"]),
                "predicted": t["predicted_accuracy"],
                "true": true.get(key),
                "front_best": front_best,
                "gap_pts": None
                if key not in true or front_best is None
                else 100 * (front_best - true[key]),
            }
        )
        log(
            f"  search <= {t['target_mmacs']:.2f} MMACs: {key} predicted "
            f"{_pct(t['predicted_accuracy'])}, true {_pct(true.get(key))}, best measured "
            f"under the target {_pct(front_best)}"
        )
    res = {
        "trained_on": str(acc_path),
        "predictor": str(ppath),
        "val_rmse": pred.info["val_rmse"],
        "val_spearman": pred.info["val_spearman"],
        "val_kendall_tau": pred.info["val_kendall_tau"],
        "n_val": pred.info["n_val"],
        "targets": rows,
    }
    atomic_write_json(pdir / "searched_vs_front.json", res)
    return res


if __name__ == "__main__":
    sys.exit(main())
