"""``demo``: the main job end to end on one device (default: this machine's CPU)."""

from __future__ import annotations

import argparse

from rich.table import Table

from compofa_bench.cli.common import console, print_json, resolutions_arg
from compofa_bench.cli.progress import progress_display
from compofa_bench.cli.search import add_verdict_args
from compofa_bench.cli.timing_args import add_run_args

EPILOG = """\
examples:
  compofa-bench demo                                   # CompOFA on this CPU, a few minutes
  compofa-bench demo --sample 12                       # a larger sample
  compofa-bench demo --latency 8,12 --out out/mine     # your own targets (ms)
  compofa-bench demo --fail-on-miss                    # exit 3 when a target is MISSED

Why cpu-ort-1t, pinned: one ONNX Runtime thread pinned to the core other processes use least
is what a shared host disturbs least (another busy process keeps the other core), and the
contention of every measurement is judged on that core alone. Each end-to-end measurement
takes 3 interleaved rounds. The closing lines say whether the table holds and each winner
met its target within --tolerance, or that the host was too busy to tell.

Outputs (under --out): results.db (every measurement), lut.json (the lookup table),
lut_validation.png, search/search.json, search/pareto.png and one folder per target with the
arch (OFA dict), the exported model and its re-measured latency. A rerun resumes.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="profile -> lookup table -> validate -> search -> export -> re-measure",
        description="Run the whole pipeline on one device: profile a sample of the space, build "
        "its per-layer latency lookup table, validate the table against the end-to-end "
        "measurements, search the best subnet for each latency target, export each winner and "
        "measure it again on the device.\n\nAccuracy source: with --predictor, that predictor; "
        "otherwise the predictor the project ships (predictors/fashion-mnist/: predicted "
        "Fashion-MNIST top-1 of the CompOFA supernet trained by "
        "benchmarks/train_reproduction.py, at 32/40 px; the search's 160/224 px enter by rank "
        "order, smallest to smallest), labelled as such; with --accuracy-proxy macs, or when "
        "no real predictor is shipped, MACs, reported as a proxy (more MACs = presumed more "
        "accurate). There is no ImageNet accuracy here.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--device",
        default="cpu-ort-1t",
        help="device name or TOML path (default cpu-ort-1t, pinned to the quietest core)",
    )
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin a one-thread CPU device to the quietest core",
    )
    p.add_argument("--space", default="compofa", help="search space (default compofa)")
    p.add_argument(
        "--resolutions",
        type=resolutions_arg,
        default=(160, 224),
        help="resolutions (default 160,224)",
    )
    p.add_argument("--sample", type=int, default=8, help="archs profiled end to end (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--latency",
        default=None,
        help="targets in ms, e.g. 8,12,16 (default: 3 spread over the space)",
    )
    p.add_argument(
        "--predictor",
        default=None,
        help="accuracy predictor file (default: the shipped Fashion-MNIST predictor)",
    )
    p.add_argument(
        "--accuracy-proxy",
        choices=("macs",),
        default=None,
        help="rank by MACs (a proxy, labelled so) instead of a predictor",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="trained supernet (train's final.pt, 10 classes): exported winners carry its "
        "weights, BN recalibrated on Fashion-MNIST (default: random weights, latency only)",
    )
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    add_verdict_args(p.add_argument_group("verdict"))
    add_run_args(p, default_rounds=3)
    p.add_argument("--json", action="store_true", help="print the final search document as JSON")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from compofa_bench.cli.profile import print_summary
    from compofa_bench.cli.search import print_search
    from compofa_bench.jobs import DemoConfig, run_demo
    from compofa_bench.search import parse_targets

    cfg = DemoConfig(
        out_dir=args.out,
        device=args.device,
        space=args.space,
        resolutions=tuple(args.resolutions),
        sample=args.sample,
        seed=args.seed,
        targets=tuple(parse_targets(args.latency)) if args.latency else None,
        predictor=args.predictor,
        accuracy_proxy=args.accuracy_proxy,
        checkpoint=args.checkpoint,
        rounds=args.rounds,
        tolerance=args.tolerance,
        pin_quietest=not args.no_pin,
        wait_idle_s=args.wait_idle,
        wait=not args.no_wait,
        accept_unstable=args.accept_unstable,
    )
    from compofa_bench.cli.search import exit_status
    from compofa_bench.cli.timing_args import run_options

    run_options(args)  # bad --rounds / --wait-idle: one error line before anything runs
    out = console()

    def step(msg: str) -> None:
        if not args.json:
            out.rule(f"[bold]{msg}")

    with progress_display(not args.json) as progress:
        result = run_demo(cfg, step=step, progress=progress)
    rc = exit_status(result.search, args.fail_on_miss)
    if args.json:
        print_json(
            {
                **result.search,
                "table_verdict": result.table_verdict,
                "pinned_cpu": result.pinned_cpu,
            }
        )
        return rc
    out.rule("[bold]results")
    out.print(f"accuracy source: {result.accuracy_note}")
    print_summary(result.profile, cfg.store)
    v = result.validation["uncalibrated"]
    t = Table(title=f"lookup table {cfg.lut} vs {result.validation['n']} end-to-end measurements")
    for col in ("layers", "RMSPE %", "within ±5%", "within ±10%", "Spearman"):
        t.add_column(col, justify="right")
    t.add_row(
        str(result.table_summary["entries"]),
        f"{v['rmspe'] * 100:.1f}",
        f"{v['within_5pct'] * 100:.0f}%",
        f"{v['within_10pct'] * 100:.0f}%",
        f"{v['spearman']:.3f}",
    )
    out.print(t)
    print_search(result.search, str(cfg.out_dir) + "/search")
    tv = result.table_verdict or {}
    style = "yellow" if not tv.get("trusted", True) else ("green" if tv.get("holds") else "red")
    out.print(f"[{style}]{tv.get('line', '')}[/{style}]")
    return rc
