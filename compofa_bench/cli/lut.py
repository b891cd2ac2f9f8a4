"""``lut build|predict|validate|show|import-ofa|export-ofa``: latency lookup tables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from compofa_bench import spaces
from compofa_bench.cli.common import (
    console,
    help_formatter,
    key_column,
    print_json,
    print_table,
    read_json,
    resolutions_arg,
)
from compofa_bench.cli.profile import add_protocol_args, protocol_overrides
from compofa_bench.cli.timing_args import add_run_args, run_options
from compofa_bench.errors import CompofaError, LutError, SpaceError
from compofa_bench.lut.methods import DEFAULT_METHOD, METHODS

DESCRIPTION = """\
Latency lookup tables: measure every distinct layer a space needs once on a device, then
predict the latency of any subnet as the sum of its layers (optionally calibrated).

Examples:
  compofa-bench lut build --device cpu-ort --space compofa --resolutions 160,176,192,224 \\
      --out lookup_tables/cpu-ort-compofa.json --store results.db
  compofa-bench lut predict --lut lookup_tables/cpu-ort-compofa.json arch.json --json
  compofa-bench lut validate --lut lookup_tables/cpu-ort-compofa.json --device cpu-ort \\
      --sample 100 --calibrate 40 --store results.db --plot benchmarks/lut_scatter.png
  compofa-bench lut import-ofa latency_table@note10/ --width-mult 1.2 --out note10.json
  compofa-bench lut export-ofa --lut note10.json --out note10_yaml/
  compofa-bench lut show --lut note10.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p_lut = sub.add_parser(
        "lut",
        help="build, use and check latency lookup tables",
        description=DESCRIPTION,
        formatter_class=help_formatter(),
    )
    lut_sub = p_lut.add_subparsers(dest="lut_command", metavar="ACTION", required=True)

    p = lut_sub.add_parser(
        "build",
        help="measure every layer a space needs on a device",
        formatter_class=help_formatter(),
        description="Enumerate the distinct layers of SPACE at the given resolutions (directly "
        "from per-slot choices, so the 10^19-arch OFA space costs a few hundred layers), and "
        "measure each as a single-layer model through the device's adapter and protocol, "
        "exactly as `profile` measures networks. Store-backed and resumable: rerun the same "
        "command after Ctrl-C. A layer runs in well under a millisecond, so a shorter protocol "
        "than a network's (--min-seconds, --warmup-seconds) still times hundreds of runs per "
        "layer and cuts the build time. --method chooses how layers are timed (isolated, or "
        "corrected for the per-call cost, cache state and fusion a network sees: docs/lut.md, "
        "'Build methods'); the method is recorded in the table's provenance.\n\n"
        "Example:\n  compofa-bench lut build --device cpu-ort --space compofa "
        "--resolutions 160,176,192,224 --out lookup_tables/mine.json --store results.db "
        "--min-seconds 0.25 --warmup-seconds 0.1",
    )
    p.add_argument("--device", required=True, help="device name or TOML path")
    p.add_argument("--space", default="compofa", help="space whose layers to measure")
    p.add_argument(
        "--resolutions",
        type=resolutions_arg,
        default=None,
        help="e.g. 160,176,192,224 or 160-224:4 (default: the space's)",
    )
    p.add_argument("--width-mult", type=float, default=1.0)
    p.add_argument("--n-classes", type=int, default=1000)
    p.add_argument(
        "--batch-size", type=int, default=None, help="batch size (default: the device protocol's)"
    )
    p.add_argument("--out", required=True, help="table JSON to write")
    p.add_argument("--store", default="results.db", help="results store (default results.db)")
    m = p.add_argument_group("build method (docs/lut.md, 'Build methods')")
    m.add_argument(
        "--method",
        choices=list(METHODS),
        default=DEFAULT_METHOD,
        help="how layers are timed: "
        + "; ".join(f"{k}: {v}" for k, v in METHODS.items())
        + f" (default {DEFAULT_METHOD})",
    )
    m.add_argument("--copies", type=int, default=4, help="chain: copies per chain (default 4)")
    m.add_argument(
        "--fit-archs",
        type=int,
        default=24,
        help="learned: archs measured end to end for the fit (default 24)",
    )
    m.add_argument("--seed", type=int, default=0, help="learned: which fit archs (default 0)")
    add_protocol_args(p)
    add_run_args(p)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_build)

    p = lut_sub.add_parser(
        "predict",
        help="predict the latency of an arch from a table",
        formatter_class=help_formatter(),
        description='ARCH.json holds OFA\'s dict form {"ks": [...], "e": [...], "d": [...], '
        '"r": [224]}, or a list of them. Prints the latency and the per-layer breakdown.\n\n'
        "Example:\n  compofa-bench lut predict --lut lookup_tables/mine.json arch.json --json",
    )
    p.add_argument("arch_file", metavar="ARCH.json")
    p.add_argument("--lut", required=True, help="table JSON")
    p.add_argument(
        "--width-mult",
        type=float,
        default=None,
        help="width of the networks (default: the table's)",
    )
    p.add_argument(
        "--allow-width-mismatch",
        action="store_true",
        help="predict with the table's widths even if the networks' width differs",
    )
    p.add_argument("--resolution", type=int, default=None, help="resolution if the file has none")
    p.add_argument("--uncalibrated", action="store_true", help="ignore the table's calibration")
    p.add_argument(
        "--device",
        default=None,
        help="the device the prediction is for: a table or calibration from another device "
        "gives a warning (an error with --strict)",
    )
    add_strict_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_predict)

    p = lut_sub.add_parser(
        "validate",
        help="compare table predictions with end-to-end measurements",
        formatter_class=help_formatter(),
        description="Measure N random archs of SPACE end to end on DEVICE (through `profile`, "
        "so measurements in the store are reused) and report RMSE, RMSPE, share within ±5% "
        "and ±10%, Spearman and Kendall rank correlation, and the mean error per resolution. "
        "With --calibrate M, M further archs (a separate set, measured interleaved with the N) "
        "fit an overhead and one scale per resolution (one global scale when a resolution has "
        "fewer than 2 of them); the calibration (with the device it was fitted on) and its "
        "figures on the N validation archs are written with the table to --out, never over "
        "--lut; without --out the calibration is printed and nothing is written. A table or "
        "calibration from another device than --device gives a warning naming both (--strict: "
        "an error).\n\n"
        "Example:\n  compofa-bench lut validate --lut lookup_tables/mine.json --device cpu-ort "
        "--sample 100 --calibrate 40 --out lookup_tables/mine-calibrated.json "
        "--plot benchmarks/lut_scatter.png",
    )
    p.add_argument("--lut", required=True, help="table JSON")
    p.add_argument("--device", required=True, help="device name or TOML path")
    p.add_argument("--space", default="compofa", help="space to sample from")
    p.add_argument("--sample", type=int, default=50, help="number of validation archs")
    p.add_argument(
        "--calibrate",
        type=int,
        default=0,
        metavar="M",
        help="fit a calibration on M other archs (written with the table to --out)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="write the calibrated table here (another file than --lut; default: write nothing)",
    )
    add_strict_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--resolutions",
        type=resolutions_arg,
        default=None,
        help="sample archs at these resolutions (default: all of the table's)",
    )
    p.add_argument("--store", default="results.db")
    p.add_argument("--plot", default=None, help="write a predicted-vs-measured scatter PNG")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_run_args(p, default_rounds=3)
    p.set_defaults(func=cmd_validate)

    p = lut_sub.add_parser(
        "show",
        help="summarize a table (provenance, coverage)",
        formatter_class=help_formatter(),
        description="Prints the table's provenance (device, adapter, fingerprint, protocol, "
        "build method), its calibration and the device that was fitted on, and its coverage: "
        "per space and resolution, how many of the layers the space's archs use the table "
        "holds.\n\nExample:\n  compofa-bench lut show --lut lookup_tables/mine.json --space ofa",
    )
    _lut_arg(p)
    p.add_argument(
        "--space",
        action="append",
        default=None,
        help="space whose coverage to print (repeatable; default: every built-in space of "
        "the table's base)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_show)

    p = lut_sub.add_parser(
        "import-ofa",
        help="read OFA's <R>_lookup_table.yaml files into one table",
        formatter_class=help_formatter(),
        description="OFA/CompOFA tables carry no width: give it (the Note10 tables are for the "
        "w1.2 supernet).\n\nExample:\n  compofa-bench lut import-ofa latency_table@note10/ "
        "--width-mult 1.2 --out note10.json\n"
        "A single yaml file of one resolution (read from its Conv key) works too, e.g. "
        "ProxylessNAS's phone table:\n  compofa-bench lut import-ofa mobile_trim.yaml "
        "--base proxyless --width-mult 1.0 --out proxyless_mobile.json",
    )
    p.add_argument("directory", metavar="DIR", help="directory of <R>_lookup_table.yaml, or a file")
    p.add_argument("--width-mult", type=float, required=True)
    p.add_argument("--base", default="mbv3")
    p.add_argument("--n-classes", type=int, default=1000)
    p.add_argument("--device-name", default=None, help="record the device name in provenance")
    p.add_argument("--out", required=True, help="table JSON to write")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse a file that lacks some layers of the base's space (default: warn); keys "
        "of another base or width are always refused",
    )
    p.set_defaults(func=cmd_import)

    p = lut_sub.add_parser(
        "export-ofa",
        help="write a table as OFA's per-resolution yaml files",
        formatter_class=help_formatter(),
        description="Writes DIR/<R>_lookup_table.yaml with count/mean/std, readable by OFA's "
        "LatencyEstimator (which sums means).\n\nExample:\n  compofa-bench lut export-ofa "
        "--lut note10.json --out note10_yaml/",
    )
    _lut_arg(p)
    p.add_argument("--out", required=True, help="directory to write")
    p.set_defaults(func=cmd_export)


def _lut_arg(p: argparse.ArgumentParser) -> None:
    """``--lut TABLE``: the one spelling of a table argument in every command (predict,
    validate and search already used it). The old positional ``TABLE`` of ``show`` and
    ``export-ofa`` still works for one release, with a deprecation line (see _table_path)."""
    p.add_argument("--lut", metavar="TABLE", help="table JSON")
    p.add_argument("lut_positional", nargs="?", metavar="TABLE", help=argparse.SUPPRESS)


def _table_path(args: argparse.Namespace) -> str:
    if args.lut_positional is not None:
        if args.lut is not None:
            raise LutError("give the table once, as --lut TABLE")
        print(
            f"deprecated: `lut {args.lut_command} TABLE`; write `lut {args.lut_command} --lut "
            "TABLE` (the positional form goes in the next release)",
            file=sys.stderr,
        )
        return str(args.lut_positional)
    if args.lut is None:
        raise LutError(f"lut {args.lut_command} needs the table: --lut TABLE")
    return str(args.lut)


def add_strict_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse (error, exit 2) a table or calibration from another device instead of warning",
    )


def warn(lines: list[str]) -> None:
    """One ``warning:`` line each on stderr (stdout stays parseable with --json)."""
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _load(path: str):
    from compofa_bench.lut import LatencyTable

    return LatencyTable.load(path)


def cmd_import(args: argparse.Namespace) -> int:
    from compofa_bench import spaces
    from compofa_bench.lut import import_ofa_dir

    try:
        spaces.check_base_width(args.base, args.width_mult)
    except SpaceError as exc:
        fits = _where_keys_fit(args.directory, args.n_classes)
        if fits is None:
            raise
        raise LutError(
            f"{exc}; the keys of {args.directory} fit {fits}, not base {args.base!r}"
        ) from None
    prov = {"device": args.device_name} if args.device_name else None
    table = import_ofa_dir(
        args.directory, args.width_mult, base=args.base, n_classes=args.n_classes,
        provenance=prov, strict=args.strict,
    )  # fmt: skip
    if len(table) == 0:
        raise LutError(f"{args.directory} holds no latency entries")
    warn(table.provenance.get("import_warnings", []))
    table.save(args.out)
    console().print(
        f"imported {len(table)} entries at {len(table.resolutions)} resolutions "
        f"({table.resolutions[0]}..{table.resolutions[-1]}), width {table.width_mult:g} "
        f"-> {args.out}"
    )
    return 0


def _where_keys_fit(directory: str, n_classes: int) -> str | None:
    """``--base B --width-mult W`` of the first built-in base and width whose layers an OFA
    yaml's keys fit (a wrong --width-mult then names the right flags), else None."""
    from compofa_bench.lut import import_ofa_dir

    combos = sorted(
        {(sp.base, w) for sp in map(spaces.get, spaces.names()) for w in sp.width_mults}
    )
    for base, width in combos:
        try:
            import_ofa_dir(directory, width, base=base, n_classes=n_classes)
        except CompofaError:
            continue
        return f"--base {base} --width-mult {width:g}"
    return None


def cmd_export(args: argparse.Namespace) -> int:
    from compofa_bench.lut import export_ofa_dir

    paths = export_ofa_dir(_load(_table_path(args)), args.out)
    console().print(f"wrote {len(paths)} yaml files to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from compofa_bench.lut.provenance import device_mismatches, enforce

    table = _load(args.lut)
    device = args.device
    if device is not None and (device.endswith(".toml") or "/" in device):
        from compofa_bench.devices import load_device

        device = load_device(device).name
    warn(enforce(device_mismatches(table, device, args.lut), args.strict))
    raw = read_json(args.arch_file, "arch file")
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise LutError(f"{args.arch_file} holds an empty list")
    archs = [spaces.Arch.from_ofa(x, resolution=args.resolution) for x in items]
    kw = {"width_mult": args.width_mult, "allow_width_mismatch": args.allow_width_mismatch}
    latency = table.predict_ms(archs, calibrated=not args.uncalibrated, **kw)
    cal = None if args.uncalibrated else table.calibration
    results = []
    for arch, ms in zip(archs, latency, strict=True):
        breakdown = table.predict_breakdown(arch, **kw)
        res = {
            "key": arch.key(),
            "latency_ms": float(ms),
            "uncalibrated_ms": float(sum(v for _, v in breakdown)),
        }
        if cal is not None:
            # the terms applied to this arch, so latency_ms can be checked by hand
            res["calibration"] = {
                "form": cal.form,
                "overhead_ms": cal.overhead_ms,
                "scale": cal.scale_for(arch.resolution),
            }
        res["layers"] = [{"key": k, "latency_ms": v} for k, v in breakdown]
        results.append(res)
    if args.json:
        print_json(results[0] if not isinstance(raw, list) else results)
        return 0
    out = console()
    for res in results:
        if len(results) == 1:
            table_view = Table(title=f"{res['key']}  ({args.lut})")
            table_view.add_column("#", justify="right")
            key_column(table_view, "layer")
            table_view.add_column("ms", justify="right")
            for i, layer in enumerate(res["layers"]):
                table_view.add_row(str(i), layer["key"], f"{layer['latency_ms']:.3f}")
            print_table(out, table_view)
        how = ""
        if "calibration" in res:
            c = res["calibration"]
            how = (
                f" (calibrated: {c['overhead_ms']:.3f} ms + {c['scale']:.4f} x layer sum "
                f"{res['uncalibrated_ms']:.3f} ms)"
            )
        out.print(f"{res['key']}: [bold]{res['latency_ms']:.3f} ms[/bold]{how}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from compofa_bench.lut.provenance import device_mismatches

    args.lut = _table_path(args)
    table = _load(args.lut)
    warn(device_mismatches(table, None, args.lut))
    info = {
        "base": table.base,
        "key_style": table.key_style,
        "width_mult": table.width_mult,
        "n_classes": table.n_classes,
        "statistic": table.statistic,
        "resolutions": list(table.resolutions),
        "entries": len(table),
        "entries_per_resolution": {str(r): len(e) for r, e in table.entries.items()},
        "provenance": table.provenance,
        "calibration": None
        if table.calibration is None
        else {"form": table.calibration.form, **table.calibration.to_json()},
        "coverage": _coverage(table, args.space),
    }
    if args.json:
        print_json(info)
        return 0
    out = console()
    out.print(
        f"[bold]{args.lut}[/bold]: base {table.base}, width {table.width_mult:g}, "
        f"{len(table)} entries, statistic {table.statistic}"
    )
    out.print(f"resolutions: {list(table.resolutions)}")
    view = Table(title="provenance")
    view.add_column("field")
    view.add_column("value")
    for k, v in table.provenance.items():
        view.add_row(
            str(k),
            str(v) if not isinstance(v, dict) else ", ".join(f"{a}={b}" for a, b in v.items()),
        )
    out.print(view)
    if table.calibration is not None:
        c = table.calibration
        out.print(f"calibration ({c.form}, fitted on {c.fitted_on} archs): {c.describe()}")
        v = c.validation
        if "rmspe" in v:
            out.print(
                f"  on {v.get('n')} other archs: RMSPE {v['rmspe']:.2%}, "
                f"within ±10% {v['within_10pct']:.1%}, within ±5% {v['within_5pct']:.1%}"
            )
        if v.get("bias_by_resolution"):
            out.print(_bias_view(v["bias_by_resolution"]))
        if c.device:
            out.print(f"  fitted on device {c.device}")
    view = Table(title="coverage: layers the space's archs use / layers in the table")
    for col in ("space", "resolution", "layers", "covered", "e.g. missing"):
        view.add_column(col, justify="left" if col in ("space", "e.g. missing") else "right")
    for name, per_r in info["coverage"].items():
        for r, c in per_r.items():
            share = c["present"] / c["needed"] if c["needed"] else 1.0
            view.add_row(
                name, str(r), f"{c['present']}/{c['needed']}", f"{share:.0%}",
                c["missing_example"] or "-",
            )  # fmt: skip
    print_table(out, view)  # a missing key stays whole, to copy
    return 0


def _coverage(table, names: list[str] | None) -> dict[str, dict[int, dict]]:
    """Coverage of each named space (default: every built-in space of the table's base) at
    the table's resolutions, plus the space's own resolutions the table lacks."""
    from compofa_bench.lut.layers import coverage

    names = names or [n for n in spaces.names() if spaces.get(n).base == table.base]
    out = {}
    for name in names:
        space = spaces.get(name)
        if space.base != table.base:
            raise LutError(f"space {name} has base {space.base}; the table is for {table.base}")
        res = sorted(set(table.resolutions) | set(space.resolutions))
        out[name] = coverage(
            table.entries, space.with_resolutions(res), table.width_mult, table.n_classes
        )
    return out


def _bias_view(bias: dict) -> Table:
    """Mean signed error per resolution: the bias a global calibration cannot remove."""
    calibrated = any("calibrated" in b for b in bias.values())
    view = Table(title="mean error per resolution (validation archs)")
    view.add_column("resolution", justify="right")
    view.add_column("archs", justify="right")
    view.add_column("layer sum", justify="right")
    if calibrated:
        view.add_column("calibrated", justify="right")
    for r, b in sorted(bias.items(), key=lambda kv: int(kv[0])):
        cells = [str(r), str(b["n"]), f"{b['uncalibrated']:+.2%}"]
        if calibrated:
            cells.append(f"{b['calibrated']:+.2%}" if "calibrated" in b else "-")
        view.add_row(*cells)
    return view


def cmd_build(args: argparse.Namespace) -> int:
    from compofa_bench.adapters import check_device
    from compofa_bench.cli.progress import progress_display
    from compofa_bench.devices import load_device
    from compofa_bench.lut.build import build_table
    from compofa_bench.lut.methods import BuildMethod

    space = spaces.get(args.space, args.resolutions)
    spaces.check_width(space, args.width_mult)
    check_device(load_device(args.device))  # before the store: the same check as profile's
    method = BuildMethod(args.method, copies=args.copies, n_fit=args.fit_archs, seed=args.seed)
    with progress_display() as progress:
        table, summary = build_table(
            device=args.device,
            space=space,
            width_mult=args.width_mult,
            n_classes=args.n_classes,
            batch_size=args.batch_size,
            store_path=args.store,
            out=Path(args.out),
            protocol_overrides=protocol_overrides(args),
            method=method,
            run=run_options(args),
            progress=progress,
        )
    if args.json:
        print_json(summary)
        return 0
    out = console()
    out.print(
        f"{summary['layers']} layers by method {method.name}: {summary['probes']} probes "
        f"({summary['measured_now']} new, {summary['reused']} from the store) at "
        f"{len(table.resolutions)} resolutions in {summary['device_s']:.1f} s of device time "
        f"-> {args.out}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from compofa_bench.cli.progress import progress_display
    from compofa_bench.lut.validate import validate_table

    with progress_display() as progress:
        report = validate_table(
            lut_path=Path(args.lut),
            device=args.device,
            space_name=args.space,
            n_sample=args.sample,
            n_calibrate=args.calibrate,
            seed=args.seed,
            store_path=args.store,
            plot=args.plot,
            resolutions=args.resolutions,
            out=args.out,
            strict=args.strict,
            run=run_options(args),
            progress=progress,
        )
    warn(report["warnings"])
    if args.json:
        print_json(report)
        return 0
    out = console()
    view = Table(title=f"{args.lut} vs {args.device}: {report['n']} archs")
    view.add_column("metric")
    view.add_column("layer sum", justify="right")
    if "calibrated" in report:
        view.add_column("calibrated", justify="right")
    rows = [
        ("RMSE (ms)", "rmse_ms", "{:.3f}"),
        ("RMSPE", "rmspe", "{:.2%}"),
        ("within ±5%", "within_5pct", "{:.1%}"),
        ("within ±10%", "within_10pct", "{:.1%}"),
        ("mean error", "mean_pct_error", "{:+.2%}"),
        ("Spearman", "spearman", "{:.4f}"),
        ("Kendall", "kendall", "{:.4f}"),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(report["uncalibrated"][key])]
        if "calibrated" in report:
            cells.append(fmt.format(report["calibrated"][key]))
        view.add_row(label, *cells)
    out.print(view)
    out.print(_bias_view(report["bias_by_resolution"]))
    if "calibration" in report:
        from compofa_bench.lut import Calibration

        c = report["calibration"]
        fit = Calibration(
            c["overhead_ms"], c["scale"], c["fitted_on"],
            scale_by_resolution=c["scale_by_resolution"],
        )  # fmt: skip
        where = (
            f"written with the table to {c['written_to']}"
            if c["written_to"]
            else "not written: pass --out FILE to keep it"
        )
        out.print(
            f"calibration fitted on {c['fitted_on']} separate archs on {c['device']} "
            f"({c['note']}): {fit.describe()} ({where})"
        )
    import numpy as np

    ratios = [a["measured_over_predicted"] for a in report["archs"] if a["measured_over_predicted"]]
    m = report["measurement"]
    floor = m.get("noise_floor")
    out.print(
        f"measured/predicted: median {np.median(ratios):.3f}, range {min(ratios):.2f}-"
        f"{max(ratios):.2f}; noise floor {'-' if floor is None else f'{floor:.1%}'}"
    )
    if m.get("contended"):
        out.print(
            f"[yellow]{len(m['contended'])} of the measurements were contended (other processes "
            "used the measured CPUs): the host was too busy to tell how good the table is; "
            "rerun on a quiet host[/yellow]"
        )
    if args.plot:
        out.print(f"scatter plot: {args.plot}")
    return 0
