"""``evaluate``: top-1 of subnets of a trained supernet, written as acc.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from compofa_bench import spaces
from compofa_bench.cli.common import console, help_formatter, print_json, resolutions_arg

DESCRIPTION = """\
Measure top-1 accuracy of subnets of a trained supernet. For each arch and resolution the
subnet is extracted, its BatchNorm statistics recalibrated on training images, and top-1
measured on the validation split. Writes acc.csv with header space,key,resolution,top1,arch
(arch = OFA dict as JSON with "r"; top1 a fraction), the input of `predictor train`.
Rerunning with the same --out skips rows already there.

Examples:
  compofa-bench evaluate --checkpoint runs/demo/final.pt --space compofa --archs all \\
      --resolutions 32,64 --data fashion-mnist --out runs/demo/acc.csv
  compofa-bench evaluate --checkpoint runs/ofa/final.pt --space ofa --sample 500 \\
      --data /data/imagenet --out acc.csv --val-subset 10000
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1 of subnets of a trained supernet -> acc.csv",
        description=DESCRIPTION,
        formatter_class=help_formatter(),
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="final.pt/checkpoint.pt of `train`, or an OFA/CompOFA .pth",
    )
    p.add_argument("--space", required=True, help="search space (see `space list`)")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--archs",
        choices=("all",),
        default=None,
        help="every structure of the space (needs an enumerable space)",
    )
    which.add_argument("--sample", type=int, default=None, help="N random structures")
    p.add_argument(
        "--resolutions",
        type=resolutions_arg,
        default=None,
        help="evaluate every arch at each of these sizes (default: the space's)",
    )
    p.add_argument("--data", required=True, help="'fashion-mnist' or an ImageFolder root")
    p.add_argument("--out", required=True, type=Path, help="acc.csv to write (resumable)")
    p.add_argument(
        "--val-subset", type=int, default=2000, help="validation images (0 = all; default 2000)"
    )
    p.add_argument(
        "--calib-images",
        type=int,
        default=2000,
        help="training images for BN recalibration (default 2000, as OFA)",
    )
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="seed for --sample and the subsets")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--force", action="store_true", help="run a batch the memory estimate refuses")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from compofa_bench import torchfile
    from compofa_bench.errors import TrainError
    from compofa_bench.train.evaluate import EvalConfig, evaluate, select_archs

    torchfile.check_path(args.checkpoint)  # before the data: a missing file is the quicker news
    space = spaces.get(args.space)
    res = args.resolutions or space.resolutions
    if args.sample is not None and args.sample <= 0:
        raise TrainError(f"--sample must be positive, got {args.sample}")
    if args.sample is None and not space.is_enumerable(limit=100_000):
        raise TrainError(f"space {space.name} is too large for --archs all; use --sample N")
    archs = select_archs(space, res, args.sample, args.seed)
    from compofa_bench import memory

    # A lower bound: the narrowest width the checkpoint can have, 10 classes.
    memory.check_fits(
        [memory.estimate(space.largest(r), args.batch_size, min(space.width_mults), space.base, 10)
         for r in sorted({a.resolution for a in archs})],
        memory.available_bytes(),
        force=args.force,
    )  # fmt: skip
    cfg = EvalConfig(
        data=args.data,
        val_subset=args.val_subset or None,
        calib_images=args.calib_images,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
    )
    with Progress(
        TextColumn("evaluate"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        disable=args.json,
    ) as progress:
        task = progress.add_task("evaluate", total=len(archs), info="")

        def on_item(row, skipped: bool) -> None:
            tag = "kept" if skipped else f"top1 {row.top1:.4f}"
            progress.update(task, advance=1, info=f"{row.arch.key()}  {tag}")

        rows = evaluate(args.checkpoint, space, archs, cfg, args.out, on_item=on_item)
    if args.json:
        print_json(
            [{"key": r.arch.key(), "resolution": r.arch.resolution, "top1": r.top1} for r in rows]
        )
        return 0
    by_res: dict[int, list[float]] = {}
    for r in rows:
        by_res.setdefault(r.arch.resolution, []).append(r.top1)
    for r_, accs in sorted(by_res.items()):
        console().print(
            f"r{r_}: {len(accs)} archs, top1 min {min(accs):.4f} / median "
            f"{sorted(accs)[len(accs) // 2]:.4f} / max {max(accs):.4f}"
        )
    console().print(f"wrote {args.out}")
    return 0
