"""``predictor train|show``: accuracy predictors."""

from __future__ import annotations

import argparse

from compofa_bench.cli.common import console, help_formatter, print_json

TRAIN_DESCRIPTION = """\
Train an accuracy predictor (OFA's MLP: 3 hidden layers of 400, ReLU, linear head) on measured
accuracies, with Adam, a held-out split and early stopping on held-out RMSE. Prints RMSE and
Kendall tau on the held-out split and stores them, with the encoder config, in the file.

DATA is an acc.csv as `compofa-bench evaluate` writes it: header space,key,resolution,top1,arch
(arch = OFA dict as JSON, top1 a fraction in [0, 1]).
"""

EXAMPLES = """\
examples:
  compofa-bench predictor train --data runs/eval/acc.csv --out predictors/compofa.pt
  compofa-bench predictor show predictors/compofa.pt
  compofa-bench predictor show acc_predictor.pth      # OFA's file works too
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predictor", help="train and inspect accuracy predictors")
    ps = p.add_subparsers(dest="predictor_command", metavar="ACTION", required=True)
    t = ps.add_parser(
        "train",
        help="train a predictor on acc.csv",
        description=TRAIN_DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=help_formatter(),
    )
    t.add_argument("--data", required=True, metavar="acc.csv")
    t.add_argument("--out", required=True, metavar="P", help="predictor file to write")
    t.add_argument("--space", help="rows of this space only (when the file mixes spaces)")
    t.add_argument("--val-fraction", type=float, default=0.2, help="held-out share (0.2)")
    t.add_argument("--epochs", type=int, default=500, help="maximum epochs (500)")
    t.add_argument("--patience", type=int, default=30, help="early-stopping patience (30)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--hidden", default="400,400,400", help="hidden sizes (400,400,400)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true", help="print the validation figures as JSON")
    t.set_defaults(func=cmd_train)
    s = ps.add_parser(
        "show",
        help="encoder, source and validation figures of a predictor",
        epilog=EXAMPLES,
        formatter_class=help_formatter(),
    )
    s.add_argument("path", metavar="P")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)


def cmd_train(args: argparse.Namespace) -> int:
    from compofa_bench import predictor as P
    from compofa_bench.errors import PredictorError

    try:
        hidden = tuple(int(x) for x in args.hidden.split(",") if x.strip())
    except ValueError:
        raise PredictorError(f"--hidden {args.hidden!r}: use sizes like 400,400,400") from None
    if not hidden or min(hidden) < 1:
        raise PredictorError("--hidden needs at least one positive size")
    data = P.read_acc_csv(args.data, args.space)
    cfg = P.TrainConfig(
        hidden=hidden,
        lr=args.lr,
        batch_size=args.batch_size,
        max_epochs=args.epochs,
        patience=args.patience,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    if args.json:
        pred = P.train_predictor(data, cfg)
    else:
        from compofa_bench.cli.progress import progress_display
        from compofa_bench.progress import ProgressEvent

        with progress_display() as progress:
            assert progress is not None
            pred = P.train_predictor(data, cfg, progress)
            n = pred.info["epochs_run"]  # early stopping: the bar ends full
            progress(ProgressEvent("train predictor", n, n, "done", finished=True))
    path = pred.save(args.out)
    info = {"path": str(path), **pred.info, "encoder": pred.encoder.to_dict()}
    if args.json:
        print_json(info)
        return 0
    out = console()
    i = pred.info
    out.print(
        f"trained on {i['n_train']} archs of {i['space']}, held out {i['n_val']}; "
        f"best epoch {i['best_epoch']} of {i['epochs_run']}"
    )
    out.print(
        f"held-out RMSE {i['val_rmse'] * 100:.3f} top-1 points, Kendall tau "
        f"{i['val_kendall_tau']:.3f}, Spearman {i['val_spearman']:.3f} "
        f"(train RMSE {i['train_rmse'] * 100:.3f})"
    )
    out.print(f"wrote {path}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from compofa_bench import predictor as P

    pred = P.load(args.path)
    info = {
        "path": args.path,
        "source": pred.source,
        "hidden": list(pred.hidden),
        "encoder": pred.encoder.to_dict(),
        "input_dim": pred.encoder.dim,
        **pred.info,
    }
    if args.json:
        print_json(info)
        return 0
    out = console()
    out.print(f"[bold]{args.path}[/bold]: {pred.label}")
    enc = pred.encoder
    res = (
        "OFA buckets (r-112)//16"
        if enc.resolution_mode == "ofa"
        else f"one-hot over {list(enc.resolutions)}"
    )
    out.print(
        f"MLP {enc.dim}-{'-'.join(map(str, pred.hidden))}-1; kernels {list(enc.kernels)}, "
        f"expands {list(enc.expands)}, stages {list(enc.stage_sizes)}, resolution {res}"
    )
    if "val_rmse" in pred.info:
        out.print(
            f"held-out RMSE {pred.info['val_rmse'] * 100:.3f} points, Kendall tau "
            f"{pred.info['val_kendall_tau']:.3f}"
            + (f", Spearman {pred.info['val_spearman']:.3f}" if "val_spearman" in pred.info else "")
            + f" ({pred.info['n_val']} archs)"
        )
    return 0
