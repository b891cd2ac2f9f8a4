"""``results show|export|devices|compare|plot|prune|retry``: read and tend a results store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.table import Table

from compofa_bench.cli.common import console, help_formatter, key_column, print_json, print_table
from compofa_bench.errors import StoreError

DESCRIPTION = """\
Read a results store written by `profile` or `lut build`, compare devices, plot, export, tidy.

examples:
  compofa-bench results show --store results.db --limit 20
  compofa-bench results compare --store results.db --device cpu-ort-1t --device tflite-local \\
      --plot compare.png
  compofa-bench results compare --store phone-a.db --store phone-b.db --json
  compofa-bench results plot --store results.db --out latency_vs_macs.png
  compofa-bench results export --format csv --out latency.csv
  compofa-bench results export --format json --samples > all.json
  compofa-bench results export --format csv --samples --out samples.csv   # one row per run
  compofa-bench results prune --failed --duplicates            # dry run: says what would go
  compofa-bench results retry --remeasure 2                    # measure unstable rows again
  compofa-bench results devices

Into pandas in one line:  pd.read_csv("latency.csv")  or  pd.read_json("all.json")
"""


def _filters(p: argparse.ArgumentParser, store: bool = True) -> None:
    if store:
        p.add_argument("--store", default="results.db", help="results store (default: results.db)")
    p.add_argument("--device", help="only this device")
    p.add_argument("--space", help="only this space")
    p.add_argument("--kind", choices=["network", "layer"], help="only networks or layers")
    p.add_argument("--status", choices=["ok", "failed"], help="only ok or failed ones")
    p.add_argument("--fingerprint", dest="fingerprint_hash", help="only this stable fingerprint")


def register(sub: argparse._SubParsersAction) -> None:
    p_res = sub.add_parser(
        "results",
        help="show, compare, plot, export and tidy measurements in a results store",
        description=DESCRIPTION,
        formatter_class=help_formatter(),
    )
    rs = p_res.add_subparsers(dest="results_command", metavar="ACTION", required=True)
    p = rs.add_parser(
        "show",
        help="a table of measurements (latest last)",
        formatter_class=help_formatter(),
        description="A row is flagged unstable when IQR/median (the 'iqr/med' column) exceeds "
        "its protocol's unstable_threshold (0.10 by default); rows from a tool that reports "
        "only a summary have no IQR and are flagged by their cv instead. cv (std/mean) is "
        "shown for reference: a few outliers raise it without moving the median.",
    )
    _filters(p)
    p.add_argument("--limit", type=int, default=50, help="show the last N rows (default 50)")
    p.add_argument("--sort", choices=["id", "median"], default="id", help="row order")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = rs.add_parser(
        "export",
        help="write measurements as CSV or JSON",
        formatter_class=help_formatter(),
        description="CSV: one row per measurement (arch_json stays a JSON string there). JSON: "
        "the same rows with arch, samples_ms (with --samples) and the other JSON columns as "
        "real nested values. CSV with --samples: long format, one row per timed run "
        "(id, device, fingerprint_hash, protocol_hash, kind, workload_key, resolution, "
        "batch_size, run, latency_ms). No parquet: pyarrow is too heavy a dependency for "
        "this; pd.read_csv(...).to_parquet(...) converts where pandas and pyarrow are "
        "installed.\n\nexamples:\n"
        "  compofa-bench results export --format csv --out latency.csv\n"
        "  compofa-bench results export --format csv --samples --out samples.csv\n"
        "  compofa-bench results export --format json --samples --out all.json",
    )
    _filters(p)
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--out", default=None, help="output file (default: stdout)")
    p.add_argument(
        "--samples",
        action="store_true",
        help="per-run samples (JSON: a samples_ms list per row; CSV: one row per timed run)",
    )
    p.set_defaults(func=cmd_export)

    p = rs.add_parser("devices", help="devices and fingerprints in the store")
    p.add_argument("--store", default="results.db")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices)

    p = rs.add_parser(
        "compare",
        help="compare devices, fingerprints or stores on the workloads they share",
        formatter_class=help_formatter(),
        description="Each side is one (device, fingerprint) in one store. Give the sides by "
        "repeating --store, --device or --fingerprint (a flag given once applies to every "
        "side); with one store and none of them, every device in the store is a side. Reports "
        "per workload the latency ratio to the first side and, per side against the first, "
        "Spearman and Kendall rank correlation and the workloads whose rank moves most.\n\n"
        "examples:\n"
        "  compofa-bench results compare --store r.db --device cpu-ort-1t --device tflite-local\n"
        "  compofa-bench results compare --store a.db --store b.db --plot cmp.png --json\n"
        "  compofa-bench results compare --store r.db --fingerprint 1f2e... --fingerprint 9a0b...",
    )
    p.add_argument("--store", action="append", help="a store per side (default: results.db)")
    p.add_argument("--device", action="append", help="a device per side")
    p.add_argument("--fingerprint", action="append", help="a fingerprint hash per side")
    p.add_argument("--space", help="only this space")
    p.add_argument("--kind", choices=["network", "layer"], default="network")
    p.add_argument("--batch-size", type=int, help="only this batch size")
    p.add_argument("--top", type=int, default=5, help="rank movers to list (default 5)")
    p.add_argument(
        "--limit", type=int, default=30, help="workload rows to print (default 30; 0: all)"
    )
    p.add_argument("--plot", metavar="PNG", help="write a scatter plot per pair")
    p.add_argument("--json", action="store_true", help="print JSON (every workload)")
    p.set_defaults(func=cmd_compare)

    p = rs.add_parser(
        "plot",
        help="latency vs MACs per device, one colour per resolution",
        formatter_class=help_formatter(),
        description="One panel per device (device@fingerprint when a device has several): the "
        "latest median of each measured arch against its MACs, coloured by resolution.\n\n"
        "example:\n  compofa-bench results plot --store results.db --out latency_vs_macs.png",
    )
    p.add_argument("--store", default="results.db", help="results store (default: results.db)")
    p.add_argument("--device", help="only this device")
    p.add_argument("--space", help="only this space")
    p.add_argument("--fingerprint", dest="fingerprint_hash", help="only this fingerprint")
    p.add_argument("--out", default="latency_vs_macs.png", help="PNG to write")
    p.set_defaults(func=cmd_plot)

    p = rs.add_parser(
        "prune",
        help="drop failed, duplicate or old-fingerprint rows (dry run unless --yes)",
        formatter_class=help_formatter(),
        description="Lists the rows each rule selects and deletes them only with --yes.\n"
        "  --failed            failed measurements\n"
        "  --duplicates        ok rows with a later ok row of the same identity (look-ups read\n"
        "                      only the latest; `results retry` leaves such pairs)\n"
        "  --fingerprint H     rows of fingerprint H (repeat for several)\n"
        "  --old-fingerprints  rows of a device whose latest row has another fingerprint\n\n"
        "example:\n  compofa-bench results prune --failed --duplicates --yes",
    )
    p.add_argument("--store", default="results.db", help="results store (default: results.db)")
    p.add_argument("--device", help="only rows of this device")
    p.add_argument("--failed", action="store_true", help="failed rows")
    p.add_argument("--duplicates", action="store_true", help="superseded ok rows")
    p.add_argument(
        "--fingerprint", action="append", default=[], metavar="H", help="rows of fingerprint H"
    )
    p.add_argument(
        "--old-fingerprints", action="store_true", help="rows of a device's older fingerprints"
    )
    p.add_argument("--yes", action="store_true", help="delete (default: only say what would go)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_prune)

    p = rs.add_parser(
        "retry",
        help="measure unstable rows again (same device, protocol and arch)",
        formatter_class=help_formatter(),
        description="Finds each workload whose latest ok row is unstable and measures it again "
        "through `profile`'s library call with the stored protocol, so the new row replaces "
        "the old one in every look-up (prune the old ones with `results prune --duplicates`). "
        "The device is found by the stored device name; give --device-file for a device that "
        "is not built in or in ~/.config/compofa-bench/devices. Refuses when the device's "
        "fingerprint has changed (--any-fingerprint to measure anyway).\n\n"
        "example:\n  compofa-bench results retry --store results.db --remeasure 2",
    )
    p.add_argument("--store", default="results.db", help="results store (default: results.db)")
    p.add_argument("--device", help="only rows of this device")
    p.add_argument("--space", help="only this space")
    p.add_argument("--fingerprint", dest="fingerprint_hash", help="only this fingerprint")
    p.add_argument("--device-file", help="device TOML to measure with (default: by stored name)")
    p.add_argument("--remeasure", type=int, help="re-take a still unstable one up to N times")
    p.add_argument("--cooldown", type=float, help="seconds to sleep between workloads")
    p.add_argument("--any-fingerprint", action="store_true", help="measure on a changed device")
    p.add_argument("--dry-run", action="store_true", help="only list what would be measured")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_retry)


def _filter_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {k: getattr(args, k) for k in ("device", "space", "kind", "status", "fingerprint_hash")}


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _write_plot(draw: Any, path: str) -> None:
    try:
        draw()
    except OSError as exc:
        raise StoreError(f"cannot write plot {path}: {exc.strerror or exc}") from None


# ----------------------------------------------------------------------------- show


def cmd_show(args: argparse.Namespace) -> int:
    from compofa_bench.profile import format_ms
    from compofa_bench.store import SUMMARY_COLUMNS, ResultStore, nested

    with ResultStore(args.store, readonly=True) as store:
        rows = store.rows((*SUMMARY_COLUMNS, "protocol_json"), **_filter_kwargs(args))
    rows = rows[-args.limit :] if args.limit else rows
    if args.sort == "median":
        rows.sort(key=lambda r: (r["median_ms"] is None, r["median_ms"] or 0.0))
    for r in rows:  # the spread the unstable flag is decided on
        r["iqr_over_median"] = (
            r["iqr_ms"] / r["median_ms"] if r["iqr_ms"] is not None and r["median_ms"] else None
        )
    if args.json:
        out = [nested(r) for r in rows]
        for r in out:
            r.pop("protocol", None)
        print_json(out)
        return 0
    table = Table(title=f"{args.store}: {len(rows)} measurement(s)")
    for col in ("id", "device"):
        table.add_column(col, justify="right" if col == "id" else "left")
    key_column(table, "workload")
    for col in ("batch", "median ms", "95% CI ms", "p90 ms", "iqr/med", "cv", "runs",
                "other cpu", "status"):  # fmt: skip
        table.add_column(col, justify="right")
    thresholds = set()
    for r in rows:
        status = r["status"]
        if status == "ok":
            # contended: other processes used the measured CPUs (see compofa_bench.host_load)
            marks = [m for m in ("unstable", "contended") if r.get(m)]
            status = "+".join(marks) or "ok"
        if r["status"] == "ok" and r["protocol_json"]:
            thresholds.add(json.loads(r["protocol_json"]).get("unstable_threshold"))
        style = "red" if status == "failed" else ("yellow" if status != "ok" else None)
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
            _ratio(r["iqr_over_median"]),
            _ratio(r["cv"]),
            str(r["count"] or "-"),
            f"{r['other_cpu']:.0%}" if r.get("other_cpu") is not None else "-",
            f"[{style}]{status}[/{style}]" if style else status,
        )
    out = console()
    print_table(out, table)
    if thresholds:
        shown = ", ".join(f"{t:g}" for t in sorted(t for t in thresholds if t is not None))
        out.print(
            f"unstable: iqr/med above the protocol's threshold ({shown}); rows without an IQR "
            "(summary-only tools) are judged by cv"
        )
    return 0


# ----------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from compofa_bench.store import SUMMARY_COLUMNS, ResultStore

    fmt = args.format
    columns: tuple[str, ...] = SUMMARY_COLUMNS
    if args.samples:
        if fmt == "csv":
            fmt = "samples-csv"
        else:
            columns = (*SUMMARY_COLUMNS, "samples_json")
    with ResultStore(args.store, readonly=True) as store:
        text = store.export(args.out, fmt, columns, **_filter_kwargs(args))
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
        table.add_column(col, no_wrap=True)
    for r in rows:
        table.add_row(
            r["device"],
            r["adapter"],
            r["fingerprint_hash"],
            str(r["ok"]),
            str(r["failed"]),
            r["last"],
        )
    print_table(console(), table)
    return 0


# ----------------------------------------------------------------------------- compare


def _sides(args: argparse.Namespace) -> list[Any]:
    from compofa_bench.compare import load_side
    from compofa_bench.store import ResultStore

    stores = args.store or ["results.db"]
    devices, fps = args.device or [None], args.fingerprint or [None]
    n = max(len(stores), len(devices), len(fps))
    common = {"kind": args.kind, "batch_size": args.batch_size, "space": args.space}
    if n == 1 and devices == [None] and fps == [None]:
        # one store, no sides named: every (device, fingerprint) in it is a side
        with ResultStore(stores[0], readonly=True) as store:
            found = [d for d in store.devices() if d["ok"]]
        if len(found) < 2:
            raise StoreError(
                f"{stores[0]} holds {len(found)} device/fingerprint(s) with ok rows: compare needs "
                "two sides (repeat --store, --device or --fingerprint)"
            )
        return [
            load_side(stores[0], device=d["device"], fingerprint_hash=d["fingerprint_hash"],
                      **common)
            for d in found
        ]  # fmt: skip
    for flag, values in (("--store", stores), ("--device", devices), ("--fingerprint", fps)):
        if len(values) not in (1, n):
            raise StoreError(
                f"{flag} given {len(values)} times: give it once or once per side ({n})"
            )
    if n < 2:
        raise StoreError(
            "compare needs two or more sides: repeat --store, --device or --fingerprint"
        )

    def pick(values: list[Any], i: int) -> Any:
        return values[0] if len(values) == 1 else values[i]

    return [
        load_side(pick(stores, i), device=pick(devices, i), fingerprint_hash=pick(fps, i), **common)
        for i in range(n)
    ]


def cmd_compare(args: argparse.Namespace) -> int:
    from compofa_bench.compare import compare
    from compofa_bench.profile import format_ms

    sides = _sides(args)
    result = compare(sides, top=args.top)
    if args.plot:
        from compofa_bench.report import plot_compare

        _write_plot(lambda: plot_compare(result, args.plot, label_moves=args.top), args.plot)
        result["plot"] = args.plot
    if args.json:
        print_json(result)
        return 0
    out = console()
    labels = [s["label"] for s in result["sides"]]
    t = Table(title=f"{result['common']} workloads measured on every side")
    for col in ("side", "device", "fingerprint", "store", "workloads"):
        t.add_column(col, no_wrap=True)
    for s in result["sides"]:
        t.add_row(s["label"], s["device"], s["fingerprint_hash"], s["store"], str(s["workloads"]))
    print_table(out, t)
    t = Table(title="rank agreement and latency ratio (b / a)")
    for col in ("a", "b", "n", "Spearman", "Kendall", "ratio geomean", "ratio min", "ratio max"):
        t.add_column(col, justify="left" if col in ("a", "b") else "right", no_wrap=True)
    for p in result["pairs"]:
        t.add_row(p["a"], p["b"], str(p["n"]), f"{p['spearman']:.3f}", f"{p['kendall']:.3f}",
                  f"{p['ratio_geomean']:.3f}", f"{p['ratio_min']:.3f}", f"{p['ratio_max']:.3f}")  # fmt: skip
    print_table(out, t)
    for p in result["pairs"]:
        if not p["rank_moves"]:
            out.print(f"{p['a']} vs {p['b']}: every workload keeps its rank")
            continue
        t = Table(title=f"rank moves most, {p['a']} -> {p['b']} (rank 1 = fastest)")
        key_column(t, "workload")
        for col in ("rank a", "rank b", "move"):
            t.add_column(col, justify="right")
        for m in p["rank_moves"]:
            t.add_row(m["key"], f"{m['rank_a']:g}", f"{m['rank_b']:g}", f"{m['move']:+g}")
        print_table(out, t)
    wl = sorted(result["workloads"], key=lambda w: w["median_ms"][labels[0]])
    shown = wl if args.limit == 0 else wl[: args.limit]
    t = Table(title=f"per workload, by {labels[0]} latency ({len(shown)} of {len(wl)})")
    key_column(t, "workload")
    t.add_column("res", justify="right")
    for lab in labels:
        t.add_column(f"{lab} ms", justify="right", no_wrap=True)
    for lab in labels[1:]:
        t.add_column(f"{lab} / {labels[0]}", justify="right", no_wrap=True)
    for w in shown:
        t.add_row(
            w["key"],
            str(w["resolution"] or "-"),
            *(format_ms(w["median_ms"][lab]) for lab in labels),
            *(f"{w['ratio'][lab]:.3f}" for lab in labels[1:]),
        )
    print_table(out, t)
    if len(shown) < len(wl):
        out.print(f"({len(wl) - len(shown)} more: --limit 0 for all, --json for everything)")
    if args.plot:
        out.print(f"wrote {args.plot}")
    return 0


# ----------------------------------------------------------------------------- plot


def cmd_plot(args: argparse.Namespace) -> int:
    from compofa_bench.compare import latency_macs_points
    from compofa_bench.report import plot_latency_vs_macs

    series = latency_macs_points(
        args.store, device=args.device, space=args.space, fingerprint_hash=args.fingerprint_hash
    )
    if not series:
        raise StoreError(f"{args.store} holds no ok arch measurements to plot")
    title = f"{args.store}: measured latency vs MACs"
    _write_plot(lambda: plot_latency_vs_macs(series, args.out, title=title), args.out)
    n = sum(len(v) for v in series.values())
    console().print(f"wrote {args.out}: {n} archs on {len(series)} device(s)")
    return 0


# ----------------------------------------------------------------------------- prune / retry


def cmd_prune(args: argparse.Namespace) -> int:
    from compofa_bench.store import ResultStore

    if not (args.failed or args.duplicates or args.fingerprint or args.old_fingerprints):
        raise StoreError(
            "say what to prune: --failed, --duplicates, --fingerprint H or --old-fingerprints"
        )
    with ResultStore(args.store, readonly=not args.yes) as store:
        rows = store.prune_candidates(
            failed=args.failed, duplicates=args.duplicates, fingerprints=args.fingerprint,
            old_fingerprints=args.old_fingerprints, device=args.device,
        )  # fmt: skip
        removed = store.delete(r["id"] for r in rows) if args.yes and rows else 0
    reasons: dict[str, int] = {}
    for r in rows:
        for reason in r["reason"].split(", "):
            reasons[reason] = reasons.get(reason, 0) + 1
    if args.json:
        print_json({"store": args.store, "dry_run": not args.yes, "selected": len(rows),
                    "removed": removed, "by_reason": reasons, "rows": rows})  # fmt: skip
        return 0
    out = console()
    if rows:
        t = Table(title=f"{args.store}: {len(rows)} row(s) selected")
        for col in ("id", "device", "fingerprint"):
            t.add_column(col, no_wrap=True)
        key_column(t, "workload")
        for col in ("status", "finished", "reason"):
            t.add_column(col, no_wrap=True)
        for r in rows:
            t.add_row(str(r["id"]), r["device"], r["fingerprint_hash"], r["workload_key"],
                      r["status"], r["finished_at"], r["reason"])  # fmt: skip
        print_table(out, t)
    why = ", ".join(f"{n} {k}" for k, n in reasons.items()) or "nothing matched"
    if args.yes:
        out.print(f"removed {removed} row(s) from {args.store} ({why})")
    else:
        out.print(f"dry run: would remove {len(rows)} row(s) ({why}); add --yes to delete them")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    from compofa_bench.cli.progress import progress_display
    from compofa_bench.devices import load_device
    from compofa_bench.retry import group_rows, retry_group, unstable_rows
    from compofa_bench.store import ResultStore

    filters = {
        "device": args.device,
        "space": args.space,
        "fingerprint_hash": args.fingerprint_hash,
    }
    with ResultStore(args.store, readonly=True) as store:
        groups = group_rows(unstable_rows(store, **filters))
    overrides = {"remeasure": args.remeasure, "cooldown_s": args.cooldown}
    # every device is found before anything is measured: a bad name fails with nothing done
    specs = {}
    for g in groups:
        if g.skipped is None and g.device not in specs:
            specs[g.device] = load_device(args.device_file or g.device)
    report: list[dict[str, Any]] = []
    out = console()
    if not args.dry_run and any(g.skipped is None for g in groups):
        show = not args.no_progress and not args.json
        with ResultStore(args.store) as store, progress_display(show) as progress:
            for g in groups:
                if g.skipped is not None:
                    continue
                s = retry_group(
                    g, specs[g.device], store, protocol_overrides=overrides,
                    any_fingerprint=args.any_fingerprint, progress=progress,
                )  # fmt: skip
                d = s.to_dict()
                report.append({"device": g.device, "retried": len(g.rows),
                               "measured": d["measured"], "failed": len(d["failed"]),
                               "still_unstable": d["unstable"]})  # fmt: skip
    for g in groups:
        if g.skipped is not None or args.dry_run:
            report.append({"device": g.device, "retried": 0, "would_retry": len(g.rows),
                           "skipped": g.skipped, "keys": [r["workload_key"] for r in g.rows]})  # fmt: skip
    if args.json:
        print_json({"store": args.store, "dry_run": args.dry_run, "groups": report})
        return 0
    if not groups:
        out.print(f"{args.store}: no unstable rows to retry")
    for r in report:
        if "measured" in r:
            still = len(r["still_unstable"])
            out.print(f"{r['device']}: measured {r['measured']} of {r['retried']} again, "
                      f"{still} still unstable, {r['failed']} failed")  # fmt: skip
        elif r["skipped"]:
            out.print(f"{r['device']}: skipped {r['would_retry']} row(s): {r['skipped']}")
        else:
            out.print(f"{r['device']}: would measure {r['would_retry']} unstable row(s) again")
    return 0
