"""``search``: best subnet per latency (or MACs) target, Pareto frontier, export."""

from __future__ import annotations

import argparse

from rich.table import Table

from compofa_bench import spaces
from compofa_bench.cli.common import (
    add_net_args,
    add_output_args,
    add_store_arg,
    console,
    help_formatter,
    key_column,
    print_json,
    print_table,
    resolutions_arg,
)
from compofa_bench.cli.progress import progress_display
from compofa_bench.cli.timing_args import add_run_args

DESCRIPTION = """\
Find the most accurate subnet under each latency target, in one call.

Accuracy comes from a predictor (--predictor: a file from `predictor train`, or OFA's
acc_predictor.pth) or, until you have one, from MACs as an explicitly labelled proxy
(--accuracy-proxy macs: bigger is ranked better; outputs say "proxy", never "accuracy").
Latency comes from a lookup table (--lut), is measured on a device as the search goes
(--measure-latency --device D, memoized in --store), or is replaced by MACs (--macs: targets
in millions of MACs).

Small spaces (CompOFA: 243 archs x resolutions) are searched exhaustively, which gives the
true optimum per target; large ones (OFA: ~10^19) with OFA's evolutionary search (population
100, parent ratio 0.25, mutation ratio 0.5, mutation prob 0.1). With a table or MACs, 10
generations seed a local search that starts from exact optima of the predictor's first-order
model (knapsack starts); with --measure-latency the evolution runs OFA's 500 generations alone.

OUT gets search.json, pareto.json, pareto.png and per target target_<T>ms/ with arch.json,
result.json and, with --export, the model (plus its latency on --device next to the prediction).
"""

EXAMPLES = """\
examples:
  compofa-bench search --space compofa --lut lookup_tables/cpu.json \\
      --accuracy-proxy macs --latency 5,8,12 --export onnx --device cpu-ort --out out/cpu
  compofa-bench search --space ofa --width-mult 1.2 --lut lookup_tables/note10.json \\
      --predictor acc_predictor.pth --latency 15,20,25,30 --out out/note10 --json
  compofa-bench search --space compofa --macs 200,300 --predictor pred.pt --out out/macs
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="best subnet per latency target (+ export)",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=help_formatter(),
    )
    p.add_argument("--space", default="compofa", help="search space (default: compofa)")
    p.add_argument(
        "--resolutions",
        type=resolutions_arg,
        default=None,
        help="resolutions to search, e.g. 160,176,192,208,224 (default: the space's, "
        "limited to those the table and predictor know)",
    )
    add_net_args(p)
    c = p.add_argument_group("constraint (choose one)")
    c.add_argument("--latency", metavar="MS,..", help="latency targets in ms, e.g. 15,20,25,30")
    c.add_argument("--macs", metavar="MMACS,..", help="MACs targets in millions (no latency)")
    c.add_argument("--lut", metavar="TABLE.json", help="latency lookup table for --latency")
    c.add_argument(
        "--measure-latency",
        action="store_true",
        help="measure latency on --device during the search (memoized in --store)",
    )
    c.add_argument(
        "--allow-width-mismatch", action="store_true", help="use a table measured at another width"
    )
    a = p.add_argument_group("accuracy (choose one)")
    a.add_argument("--predictor", metavar="P", help="predictor file (ours or OFA's .pth)")
    a.add_argument(
        "--accuracy-proxy",
        choices=["macs"],
        help="rank by MACs instead of accuracy (labelled as a proxy)",
    )
    s = p.add_argument_group("search")
    s.add_argument("--method", choices=["auto", "exhaustive", "evolution"], default="auto")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--population", type=int, default=100)
    s.add_argument(
        "--generations",
        type=int,
        default=None,
        help="evolution generations (default: 10 with --lut or --macs, where a local search "
        "follows; 500, OFA's budget, with --measure-latency)",
    )
    s.add_argument("--mutate-prob", type=float, default=0.1)
    e = p.add_argument_group("export")
    e.add_argument(
        "--export", choices=["onnx", "tflite", "tensorrt"], help="export each winner in this format"
    )
    e.add_argument(
        "--checkpoint",
        metavar="C",
        help="supernet weights (OFA, CompOFA or ours); without: random init, "
        "valid for latency only",
    )
    e.add_argument(
        "--calib-data",
        metavar="DATA",
        help="recalibrate BN on these training images (fashion-mnist or an ImageFolder root)",
    )
    e.add_argument("--device", metavar="D", help="measure each exported winner on this device")
    add_store_arg(e)
    e.add_argument(
        "--strict",
        action="store_true",
        help="refuse a --lut table (or its calibration) from another device than --device, "
        "or a calibration fitted on another device than the table's layers (default: a "
        "warning naming both)",
    )
    add_verdict_args(e)
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_output_args(
        p,
        "print one JSON object per target (target_ms, arch, predicted_accuracy, "
        "predicted_latency_ms, search_seconds, ...)",
        progress=True,
    )
    add_run_args(p, default_rounds=3)
    p.set_defaults(func=cmd_search)


def add_verdict_args(g: argparse._ArgumentGroup) -> None:
    """``--tolerance`` and ``--fail-on-miss`` (``search`` and ``demo``)."""
    g.add_argument(
        "--tolerance",
        type=float,
        default=0.10,
        metavar="FRAC",
        help="a re-measured winner slower than its target by more than FRAC is MISSED "
        "(default 0.10)",
    )
    g.add_argument(
        "--fail-on-miss", action="store_true", help="exit with status 3 when a target is MISSED"
    )


def exit_status(doc: dict, fail_on_miss: bool) -> int:
    from compofa_bench.verdict import EXIT_MISSED

    missed = (doc.get("verdict") or {}).get("missed")
    return EXIT_MISSED if fail_on_miss and missed else 0


def cmd_search(args: argparse.Namespace) -> int:
    from compofa_bench import export as X
    from compofa_bench import jobs as J
    from compofa_bench import search as S
    from compofa_bench.errors import SearchError

    if (args.latency is None) == (args.macs is None):
        raise SearchError("give targets with exactly one of --latency MS,.. or --macs MMACS,..")
    if args.latency is not None and not (args.lut or args.measure_latency):
        raise SearchError("--latency needs --lut TABLE.json or --measure-latency --device D")
    if args.macs is not None and (args.lut or args.measure_latency):
        raise SearchError("--macs is its own constraint: drop --lut/--measure-latency")
    if args.lut and args.measure_latency:
        raise SearchError("give exactly one constraint source: --lut, --macs or --measure-latency")
    if args.measure_latency and not args.device:
        raise SearchError("--measure-latency needs --device")
    if (args.predictor is None) == (args.accuracy_proxy is None):
        raise SearchError(
            "give exactly one accuracy source: --predictor P or --accuracy-proxy macs"
        )
    targets = S.parse_targets(args.latency if args.latency is not None else args.macs)
    space = spaces.get(args.space)
    spaces.check_width(space, args.width_mult)
    if args.lut:
        _check_table(args.lut, args.space, args.device, args.strict)
    from compofa_bench.cli.timing_args import run_options
    from compofa_bench.verdict import check_tolerance

    job = J.SearchJob(
        space=args.space,
        targets=tuple(targets),
        out_dir=args.out,
        lut=args.lut,
        macs=args.macs is not None,
        measure_latency=args.measure_latency,
        predictor=args.predictor,
        accuracy_proxy=args.accuracy_proxy,
        resolutions=args.resolutions,
        method=args.method,
        seed=args.seed,
        population_size=args.population,
        generations=args.generations,
        mutate_prob=args.mutate_prob,
        export=args.export,
        device=args.device,
        store=args.store,
        allow_width_mismatch=args.allow_width_mismatch,
        tolerance=check_tolerance(args.tolerance),
        run=run_options(args),
        source=X.SubnetSource(
            base=spaces.get(args.space).base,
            checkpoint=args.checkpoint,
            width_mult=args.width_mult,
            n_classes=args.n_classes,
            calib_data=args.calib_data,
            seed=args.seed,
        ),
    )
    if args.checkpoint is not None:
        # Read and fit the weights now: the search would otherwise run first and fail at export.
        X.SubnetBuilder(job.source).supernet()
    # bars appear on first use: an exhaustive search shows none
    with progress_display(not (args.no_progress or args.json)) as progress:
        doc = J.run_search_job(job, progress=progress)
    if args.json:
        print_json(doc["targets"])
        return exit_status(doc, args.fail_on_miss)
    print_search(doc, args.out)
    return exit_status(doc, args.fail_on_miss)


def _measured_cell(item: dict, predicted_ms: float | None) -> str:
    """Measured latency, with its difference from the prediction when there is one."""
    if "measured_latency_ms" not in item:
        return "-"
    measured = item["measured_latency_ms"]
    if predicted_ms is None:
        return f"{measured:.2f}"
    return f"{measured:.2f} ({predicted_ms / measured - 1:+.0%})"


def _check_table(lut: str, space: str, device: str | None, strict: bool) -> None:
    """Refuse a table of another base than the space; warn (or refuse, --strict) when it
    comes from another device than the one the winners are measured on (its predictions
    describe the other device), or its calibration from another device than its layers."""
    from compofa_bench.cli.lut import warn
    from compofa_bench.devices import load_device
    from compofa_bench.lut import LatencyTable
    from compofa_bench.lut.provenance import check_space, device_mismatches, enforce

    table = LatencyTable.load(lut)
    check_space(table, spaces.get(space), lut)
    name = load_device(device).name if device else None
    warn(enforce(device_mismatches(table, name, lut), strict))


def print_search(doc: dict, out_dir: str) -> None:
    out = console()
    ms = doc["unit"] == "ms"
    proxy = doc["accuracy_is_proxy"]
    out.print(
        f"[bold]{doc['space']}[/bold] {doc['method']} search, resolutions "
        f"{doc['resolutions']}, width {doc['width_mult']:g}, "
        f"{doc['search_seconds'] * 1e3:.1f} ms in all"
    )
    out.print(f"accuracy source:   {doc['accuracy_source']}")
    out.print(f"constraint source: {doc['constraint_source']} ({doc['unit']})")
    out.print(f"weights for export: {doc['weights']}")
    t = Table(title="best per target")
    unit = "ms" if ms else "MMACs"
    cols = [
        "target",
        f"predicted {unit}",
        "MACs proxy (MMACs)" if proxy else "pred. top-1",
        "measured ms",
        "meas./pred.",
        "verdict",
        "parity max|d|",
    ]
    for col in cols:
        t.add_column(col)
    key_column(t, "arch key")
    notes = []
    for item in doc["targets"]:
        target = item.get("target_ms", item.get("target_mmacs"))
        if not item["feasible"]:
            t.add_row(f"{target:g}", "-", "-", "-", "-", "-", "-", "[red]infeasible[/red]")
            notes.append(f"target {target:g}: {item['message']}")
            continue
        cost = item.get("predicted_latency_ms", item.get("mmacs"))
        score = item.get("predicted_accuracy", item.get("proxy_score_mmacs"))
        exp = item.get("export") or {}
        parity = exp.get("parity") or {}
        t.add_row(
            f"{target:g}",
            f"{cost:.2f}",
            f"{score:.1f}" if proxy else f"{score * 100:.2f}%",
            _measured_cell(item, cost if ms else None),
            _ratio(item),
            _verdict_cell(item),
            f"{parity['max_abs_diff']:.2g}" if "max_abs_diff" in parity else "-",
            item["key"],
        )
    print_table(out, t)
    for note in notes:
        out.print(f"[red]{note}[/red]")
    if proxy:
        out.print("[yellow]note: ranked by MACs, a proxy; no accuracy was predicted[/yellow]")
    misses = [
        f"target {i.get('target_ms'):g}: predicted {i['predicted_latency_ms']:.2f} ms, measured "
        f"{i['measured_latency_ms']:.2f} ms on {i.get('measured_device')}"
        for i in doc["targets"]
        if ms
        and "measured_latency_ms" in i
        and "predicted_latency_ms" in i
        and abs(i["predicted_latency_ms"] / i["measured_latency_ms"] - 1) > 0.10
    ]
    for miss in misses:
        out.print(f"[yellow]prediction missed by more than 10%: {miss}[/yellow]", soft_wrap=True)
    out.print(f"wrote {out_dir}/search.json, pareto.json, pareto.png and one folder per target")
    v = doc.get("verdict") or {}
    if v.get("checked"):
        style = "red" if v["missed"] else ("yellow" if v["untrusted"] else "green")
        out.print(f"[{style}]{v['line']}[/{style}]")


def _ratio(item: dict) -> str:
    v = item.get("verdict")
    return f"{v['measured_over_predicted']:.2f}x" if v else "-"


def _verdict_cell(item: dict) -> str:
    v = item.get("verdict")
    if not v:
        return "-"
    style = "red" if v["status"] == "MISSED" else ("yellow" if not v["trusted"] else "green")
    return f"[{style}]{v['label']}[/{style}]"
