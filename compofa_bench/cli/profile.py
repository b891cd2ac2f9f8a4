"""``profile``: measure subnets of a space on one or more devices into a results store."""

from __future__ import annotations

import argparse

from rich.table import Table

from compofa_bench.cli.common import (
    add_net_args,
    add_output_args,
    add_store_arg,
    console,
    help_formatter,
    net_spec,
    print_json,
)
from compofa_bench.cli.timing_args import add_run_args, run_options

EXAMPLES = """\
examples:
  # 20 random CompOFA subnets on this CPU (all cores), into results.db
  compofa-bench profile --device cpu-ort --space compofa --sample 20 --seed 0
  # every CompOFA subnet at 160 px on one thread, quicker protocol
  compofa-bench profile --device cpu-ort-1t --archs all --resolutions 160 --min-seconds 0.3
  # your own archs (JSON list of {"ks","e","d","r"}) on two devices at once
  compofa-bench profile --device phone-a --device phone-b --arch-file archs.json
  # machine-readable summary
  compofa-bench profile --device cpu-ort-1t --sample 5 --json

  # on a shared host: 3 interleaved rounds, waiting up to 30 s for quiet before each arch
  compofa-bench profile --device cpu-ort-1t --sample 20 --rounds 3 --wait-idle 30

A rerun with the same store skips what is already measured for the same device fingerprint,
protocol, arch (resolution included), width and batch, except rows that were unstable or
contended (other processes used the CPUs): those are measured again, up to the protocol's
remeasure (--accept-unstable keeps them). Interrupt with Ctrl-C at any time and rerun to
resume. Exit status 1 when there was something to measure and every workload failed. Subnets are random-init unless --checkpoint is given: latency does not depend
on the values of the weights.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="measure the latency of subnets on devices",
        description="Measure whole subnets (exported and run by each device's adapter) under "
        "a warmup / min-runs / min-seconds / max-seconds protocol, and store every sample, "
        "statistics and an environment fingerprint in an SQLite results store.\n\n" + EXAMPLES,
        formatter_class=help_formatter(),
    )
    p.add_argument(
        "--device",
        action="append",
        required=True,
        metavar="NAME",
        help="device name or .toml path; repeat for several devices (one worker each)",
    )
    p.add_argument("--space", default="compofa", help="search space (default: compofa)")
    sel = p.add_argument_group("which archs (choose one)")
    sel.add_argument("--archs", choices=["all"], help="every arch of the space")
    sel.add_argument("--sample", type=int, metavar="N", help="N distinct random archs")
    sel.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    sel.add_argument("--arch-file", metavar="F", help="JSON list of OFA arch dicts (or JSON lines)")
    p.add_argument(
        "--resolutions",
        metavar="R,R",
        default=None,
        help="resolutions, e.g. 160,224 (default: the space's; --arch-file: each arch's r)",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch size (default: the device's)"
    )
    add_store_arg(p)
    add_net_args(p, checkpoint="supernet weights (optional: latency does not depend on weights)")
    add_protocol_args(p)
    add_run_args(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="measure again even if already stored, and run a batch the memory estimate refuses",
    )
    add_output_args(p, "print a JSON summary", progress=True)
    p.set_defaults(func=cmd_profile)


def add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The device protocol's knobs as flags (``profile`` and ``lut build`` share them)."""
    proto = p.add_argument_group("protocol overrides (defaults come from the device file)")
    proto.add_argument("--warmup-runs", type=int, help="warmup runs (at least)")
    proto.add_argument("--warmup-seconds", type=float, help="warmup seconds (at least)")
    proto.add_argument("--runs", type=int, help="timed runs (at least)")
    proto.add_argument("--min-seconds", type=float, help="timed seconds (at least)")
    proto.add_argument(
        "--max-seconds", type=float, help="timed seconds (at most; wins over --runs)"
    )
    proto.add_argument(
        "--remeasure", type=int, help="re-take an unstable measurement up to N times"
    )
    proto.add_argument("--unstable-threshold", type=float, help="IQR/median that flags unstable")
    proto.add_argument("--cooldown", type=float, help="seconds to sleep between workloads")
    proto.add_argument(
        "--contention-threshold",
        type=float,
        help="share of the measured CPUs used by other processes that marks a row contended",
    )


def protocol_overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "warmup_runs": args.warmup_runs,
        "warmup_min_s": args.warmup_seconds,
        "min_runs": args.runs,
        "min_s": args.min_seconds,
        "max_s": args.max_seconds,
        "batch_size": args.batch_size,
        "remeasure": args.remeasure,
        "unstable_threshold": args.unstable_threshold,
        "cooldown_s": args.cooldown,
        "contention_threshold": args.contention_threshold,
    }


def cmd_profile(args: argparse.Namespace) -> int:
    from compofa_bench import memory
    from compofa_bench.adapters import check_device, open_adapter
    from compofa_bench.cli.common import report_failures
    from compofa_bench.cli.progress import progress_display
    from compofa_bench.devices import load_device
    from compofa_bench.profile import SubnetFactory, profile_archs, select_archs
    from compofa_bench.spaces import check_width, parse_resolutions
    from compofa_bench.spaces import get as get_space
    from compofa_bench.store import ResultStore

    # Everything that can be wrong with the input is checked before the store is touched:
    # a run that fails here leaves no store behind.
    resolutions = parse_resolutions(args.resolutions) if args.resolutions else None
    space = get_space(args.space)
    check_width(space, args.width_mult)
    archs = select_archs(
        args.space,
        all_archs=args.archs == "all",
        sample=args.sample,
        seed=args.seed,
        arch_file=args.arch_file,
        resolutions=resolutions,
    )
    specs = [load_device(d) for d in args.device]
    overrides = protocol_overrides(args)
    protocols = [s.protocol.replace(**overrides) for s in specs]  # validates the overrides
    for s in specs:
        check_device(s)
    run = run_options(args)
    memory.check_fits(
        (
            memory.estimate(a, p.batch_size, args.width_mult, space.base, args.n_classes)
            for a in _memory_probes(archs, space)
            for p in {p.batch_size: p for p in protocols}.values()
        ),
        memory.available_bytes(),
        force=args.force,
    )
    factory = SubnetFactory(net_spec(args, space.base))
    if args.checkpoint is not None:
        factory.load()  # reads and fits the checkpoint now, not after the store exists
    adapters = []
    try:
        for s in specs:
            adapters.append(open_adapter(s))
        show = not args.no_progress and not args.json
        with ResultStore(args.store) as store, progress_display(show) as progress:
            summaries = profile_archs(
                archs,
                specs,
                store,
                space=args.space,
                net=net_spec(args, get_space(args.space).base),
                protocol_overrides=overrides,
                skip_done=not args.force,
                progress=progress,
                build_module=factory,
                adapters=adapters,
                run=run,
            )
    finally:
        for a in adapters:
            a.close()
    from compofa_bench.profile import run_succeeded

    if args.json:
        print_json(
            {"store": args.store, "archs": len(archs), "devices": [s.to_dict() for s in summaries]}
        )
    else:
        print_summary(summaries, args.store)
    failed = [
        (f"{s.device} {f['key']}", f["error"]) for s in summaries for f in s.to_dict()["failed"]
    ]
    rc = report_failures(failed, sum(len(s.outcomes) for s in summaries), "measurement")
    if not run_succeeded(summaries):
        # every workload tried now failed (or the run stopped before the first): a rerun
        # that only skips stored rows succeeds, a run that measured nothing does not
        if not args.json:
            console().print("[red]nothing was measured: every workload failed[/red]")
        return 1
    return rc


def _memory_probes(archs: list, space) -> list:
    """The archs whose memory bounds the run's: all of a short list, else the space's largest
    arch at each resolution (a long --archs all list costs no estimate per arch)."""
    if len(archs) <= 256:
        return archs
    return [space.largest(r) for r in sorted({a.resolution for a in archs})]


def print_summary(summaries: list, store_path: str) -> None:
    from compofa_bench.profile import format_ms

    out = console()
    table = Table(title=f"profile summary ({store_path})")
    for col in (
        "device",
        "ok",
        "unstable",
        "contended",
        "failed",
        "skipped",
        "rounds",
        "noise floor",
        "fastest ms",
        "slowest ms",
        "wall s",
        "timed s",
    ):
        table.add_column(col, justify="right" if col != "device" else "left")
    for s in summaries:
        d = s.to_dict()
        floor = d["noise_floor"]
        table.add_row(
            s.device,
            str(d["ok"]),
            str(len(d["unstable"])),
            str(len(d["contended"])),
            str(len(d["failed"])),
            str(d["skipped"]),
            str(d["rounds"]),
            "-" if floor is None else f"{floor:.1%}",
            format_ms(d["fastest"]["median_ms"]) if d["fastest"] else "-",
            format_ms(d["slowest"]["median_ms"]) if d["slowest"] else "-",
            f"{d['wall_s']:.1f}",
            f"{d['timed_s']:.1f}",
        )
    out.print(table)
    for s in summaries:
        d = s.to_dict()
        if d["fastest"]:
            out.print(f"{s.device}: fastest {d['fastest']['key']}, slowest {d['slowest']['key']}")
        for f in d["failed"][:10]:
            out.print(f"[red]failed[/red] {s.device} {f['key']}: {f['error']}")
        if d["unstable"]:
            shown = ", ".join(d["unstable"][:5]) + (" ..." if len(d["unstable"]) > 5 else "")
            out.print(
                f"[yellow]unstable[/yellow] on {s.device} (IQR/median above threshold): "
                f"{shown}; consider --remeasure 2 or a quieter machine"
            )
        if d["contended"]:
            shown = ", ".join(d["contended"][:5]) + (" ..." if len(d["contended"]) > 5 else "")
            worst = max((r["other_cpu"] or 0.0) for r in d["results"] if r["contended"])
            out.print(
                f"[yellow]contended[/yellow] on {s.device} (other processes used up to "
                f"{worst:.0%} of the measured CPUs): {shown}; these numbers read slow. Rerun "
                "on a quieter host (or with --wait-idle SECONDS) to measure them again"
            )
