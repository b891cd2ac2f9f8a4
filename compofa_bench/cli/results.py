"""``results show|export|devices``: read a results store."""

from __future__ import annotations

import argparse
import json
import sys

from rich.table import Table

from compofa_bench.cli.common import console, help_formatter, print_json


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default="results.db", help="results store (default: results.db)")
    p.add_argument("--device", help="only this device")
    p.add_argument("--space", help="only this space")
    p.add_argument("--kind", choices=["network", "layer"], help="only networks or layers")
    p.add_argument("--status", choices=["ok", "failed"], help="only ok or failed ones")
    p.add_argument("--fingerprint", dest="fingerprint_hash", help="only this stable fingerprint")


def register(sub: argparse._SubParsersAction) -> None:
    p_res = sub.add_parser(
        "results",
        help="show and export measurements from a results store",
        description="Read a results store written by `profile` or `lut build`.\n\nexamples:\n"
        "  compofa-bench results show --store results.db --limit 20\n"
        "  compofa-bench results export --format csv --out latency.csv\n"
        "  compofa-bench results export --format json --samples > all.json\n"
        "  compofa-bench results devices",
        formatter_class=help_formatter(),
    )
    rs = p_res.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    p = rs.add_parser("show", help="a table of measurements (latest last)")
    _filters(p)
    p.add_argument("--limit", type=int, default=50, help="show the last N rows (default 50)")
    p.add_argument("--sort", choices=["id", "median"], default="id", help="row order")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)
    p = rs.add_parser("export", help="write measurements as CSV or JSON")
    _filters(p)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--out", default=None, help="output file (default: stdout)")
    p.add_argument("--samples", action="store_true", help="include per-run samples (JSON list)")
    p.set_defaults(func=cmd_export)
    p = rs.add_parser("devices", help="devices and fingerprints in the store")
    p.add_argument("--store", default="results.db")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices)


def _filter_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {k: getattr(args, k) for k in ("device", "space", "kind", "status", "fingerprint_hash")}


def cmd_show(args: argparse.Namespace) -> int:
    from compofa_bench.profile import format_ms
    from compofa_bench.store import ResultStore

    with ResultStore(args.store, readonly=True) as store:
        rows = store.rows(**_filter_kwargs(args))
    rows = rows[-args.limit :] if args.limit else rows
    if args.sort == "median":
        rows.sort(key=lambda r: (r["median_ms"] is None, r["median_ms"] or 0.0))
    if args.json:
        for r in rows:
            r["arch"] = json.loads(r.pop("arch_json")) if r.get("arch_json") else None
        print_json(rows)
        return 0
    table = Table(title=f"{args.store}: {len(rows)} measurement(s)")
    for col in (
        "id",
        "device",
        "workload",
        "batch",
        "median ms",
        "95% CI ms",
        "p90 ms",
        "cv",
        "runs",
        "status",
    ):
        if col in ("device", "workload"):
            table.add_column(col, overflow="fold")  # keys are worth reading whole
        else:
            table.add_column(col, justify="right")
    for r in rows:
        status = r["status"] if r["status"] == "failed" else ("unstable" if r["unstable"] else "ok")
        style = {"failed": "red", "unstable": "yellow"}.get(status)
        ci = (
            f"{format_ms(r['ci95_low_ms'])}-{format_ms(r['ci95_high_ms'])}"
            if r["ci95_low_ms"] is not None
            else "-"
        )
        table.add_row(
            str(r["id"]),
            r["device"],
            r["workload_key"],
            str(r["batch_size"]),
            format_ms(r["median_ms"]),
            ci,
            format_ms(r["p90_ms"]),
            f"{r['cv']:.3f}" if r["cv"] is not None else "-",
            str(r["count"] or "-"),
            f"[{style}]{status}[/{style}]" if style else status,
        )
    console().print(table)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from compofa_bench.store import SUMMARY_COLUMNS, ResultStore

    columns = (*SUMMARY_COLUMNS, "samples_json") if args.samples else SUMMARY_COLUMNS
    with ResultStore(args.store, readonly=True) as store:
        text = store.export(args.out, args.format, columns, **_filter_kwargs(args))
    if text is not None:
        sys.stdout.write(text)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    from compofa_bench.store import ResultStore

    with ResultStore(args.store, readonly=True) as store:
        rows = store.devices()
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"{args.store}: devices")
    for col in ("device", "adapter", "fingerprint", "ok", "failed", "last"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["device"],
            r["adapter"],
            r["fingerprint_hash"],
            str(r["ok"]),
            str(r["failed"]),
            r["last"],
        )
    console().print(table)
    return 0
