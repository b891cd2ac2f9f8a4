"""``train``: run a training recipe (teacher, OFA progressive shrinking, CompOFA, fOFA)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from compofa_bench.cli.common import console, help_formatter, print_json, resolutions_arg

DESCRIPTION = """\
Train a once-for-all supernet with a recipe from trainers/ (teacher, ofa-ps, compofa,
compofa-ek, fofa, fofa-n4, fofa-sandwich). Each recipe is a list of phases; --scale multiplies
every phase's epochs, so the same recipe runs as a smoke test or the paper's schedule.

The run directory holds checkpoint.pt (written at every epoch end and on SIGTERM/Ctrl-C),
teacher.pt (after a teacher phase), final.pt, recipe.json, metrics.jsonl and, at the end,
train_curves.png (loss and batch accuracy per step). Progress shows one bar per phase (its
ETA) and one per epoch (loss, batch accuracy, lr, images/s).
n_classes comes from the data (10 for Fashion-MNIST).

Examples:
  compofa-bench train --recipe compofa --data fashion-mnist --out runs/demo \\
      --scale 0.01 --resolutions 32,48,64 --batch-size 64 --subset 6000
  compofa-bench train --recipe compofa --data fashion-mnist --out runs/demo --resume
  compofa-bench train --recipe trainers/compofa.toml --data /data/imagenet --out runs/c \\
      --teacher runs/teacher/final.pt
  torchrun --nproc-per-node 8 -m compofa_bench train --recipe fofa --data /data/imagenet \\
      --out runs/fofa --amp bf16 --workers 8
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a supernet with a recipe (OFA, CompOFA, fOFA)",
        description=DESCRIPTION,
        formatter_class=help_formatter(),
    )
    p.add_argument(
        "--recipe", required=True, help="recipe file or bundled name (compofa, ofa-ps, fofa, ...)"
    )
    p.add_argument(
        "--data", required=True, help="'fashion-mnist' or an ImageFolder root with train/ and val/"
    )
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every phase's epochs (and warmup) by this (default 1.0)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per process per step (default: the recipe's)",
    )
    p.add_argument(
        "--micro-batches",
        type=int,
        default=1,
        help="split each batch into this many micro-batches (less memory, same result)",
    )
    p.add_argument(
        "--subset",
        type=int,
        default=None,
        help="train on a fixed random subset of this many images",
    )
    p.add_argument(
        "--resolutions",
        type=resolutions_arg,
        default=None,
        help="override the recipe's image sizes, e.g. 32,48,64 or 128-224:4",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="a trained teacher (teacher.pt/final.pt): skip the recipe's teacher phases",
    )
    p.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    p.add_argument(
        "--data-on-device",
        action="store_true",
        help="Fashion-MNIST: hold the training set on the device and augment per batch there "
        "(no data loader; the fast path on a GPU)",
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument(
        "--amp", choices=("none", "bf16", "fp16"), default="none", help="mixed precision (GPU)"
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory format (default: on GPU only)",
    )
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many optimizer steps in total (checkpointed)",
    )
    p.add_argument("--log-every", type=int, default=10, help="metrics.jsonl row every N steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    p.add_argument("--force", action="store_true", help="train a batch the memory estimate refuses")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from compofa_bench.train import recipe as recipe_mod
    from compofa_bench.train.trainer import Interrupted, TrainConfig, train

    recipe = recipe_mod.load(args.recipe)
    _check_memory(recipe, args)
    config = TrainConfig(
        data=args.data,
        out=args.out,
        scale=args.scale,
        batch_size=args.batch_size,
        micro_batches=args.micro_batches,
        subset=args.subset,
        workers=args.workers,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        resolutions=args.resolutions,
        seed=args.seed,
        teacher_checkpoint=args.teacher,
        max_steps=args.max_steps,
        log_every=args.log_every,
        data_on_device=args.data_on_device,
        quiet=args.quiet or args.json,
    )
    from compofa_bench.cli.progress import progress_display

    # under torchrun only rank 0 draws (the trainer reports on rank 0 only anyway)
    show = not config.quiet and int(os.environ.get("RANK", "0")) == 0
    try:
        with progress_display(show) as progress:
            result = train(recipe, config, resume=args.resume, progress=progress)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 143
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports for all
    curves = _plot_curves(result.out, recipe.name)
    summary = {
        "out": str(result.out),
        "finished": result.final_path is not None,
        "final": None if result.final_path is None else str(result.final_path),
        "phase": result.position.phase,
        "global_step": result.position.global_step,
        "last_loss": result.last_loss,
        "curves": None if curves is None else str(curves),
    }
    if args.json:
        print_json(summary)
    elif result.final_path is not None:
        console().print(f"done: {result.final_path} ({result.position.global_step} steps)")
    else:
        console().print(
            f"stopped after {result.position.global_step} steps (--max-steps); "
            f"continue with --resume"
        )
    return 0


def _plot_curves(out: Path, name: str) -> Path | None:
    """``train_curves.png`` in the run directory, from its metrics.jsonl (None when empty)."""
    from compofa_bench.train.curves import plot_curves, read_metrics
    from compofa_bench.train.trainer import METRICS

    if not (out / METRICS).is_file():
        return None
    rows = read_metrics(out / METRICS)
    if not rows:
        return None
    return plot_curves({name: rows}, out / "train_curves.png", title=f"{name}: {out}")


def _check_memory(recipe, args: argparse.Namespace) -> None:
    """Refuse a per-rank batch whose training memory (largest subnet, largest resolution)
    cannot fit on the device before any data or model is built; ``--force`` skips this."""
    import torch

    from compofa_bench import memory, spaces

    if args.resolutions:
        recipe = recipe.with_resolutions(args.resolutions)
    batch = args.batch_size if args.batch_size is not None else recipe.batch_size
    if batch >= 1:  # the micro-batch is what is in memory at once
        batch = max(1, batch // max(args.micro_batches, 1))
    space = spaces.get(recipe.space)
    arch = space.largest(max(recipe.resolutions))
    need = memory.estimate(arch, batch, recipe.width_mult, space.base, 10, training=True)
    device = (
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if device.startswith("cuda") and torch.cuda.is_available():
        index = torch.device(device).index or 0
        available = int(torch.cuda.mem_get_info(index)[0])
    else:
        available = memory.available_bytes()
    memory.check_fits([need], available, force=args.force)
