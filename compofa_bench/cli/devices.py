"""``devices list|show``."""

from __future__ import annotations

import argparse

from rich.table import Table

from compofa_bench.cli.common import console, help_formatter, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p_dev = sub.add_parser(
        "devices",
        help="list and inspect measurement devices",
        description="A device is a TOML file naming an adapter (runtime), its options and "
        "protocol overrides. Built-in ones ship with the package; ./devices/*.toml and "
        "$COMPOFA_BENCH_DEVICES directories are searched first. A path to a .toml file works "
        "wherever a device name does.\n\nexamples:\n"
        "  compofa-bench devices list\n"
        "  compofa-bench devices show cpu-ort-1t --probe\n"
        "  compofa-bench devices show ./my-phone.toml --json",
        formatter_class=help_formatter(),
    )
    dev_sub = p_dev.add_subparsers(dest="devices_command", metavar="ACTION", required=True)
    p = dev_sub.add_parser("list", help="list known devices")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices_list)
    p = dev_sub.add_parser(
        "show",
        help="show a device's adapter, options and protocol",
        description="Show a device. With --probe, open its adapter and print what the runtime "
        "reports and the environment fingerprint (its stable hash keys resume).",
    )
    p.add_argument("device", help="device name or path to a .toml file")
    p.add_argument("--probe", action="store_true", help="open the adapter and fingerprint it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_devices_show)


def cmd_devices_list(args: argparse.Namespace) -> int:
    from compofa_bench.devices import list_devices, search_dirs

    specs = list_devices()
    if args.json:
        print_json([s.to_dict() for s in specs])
        return 0
    table = Table(title="devices")
    for col in ("name", "adapter", "batch", "description", "file"):
        table.add_column(col)
    for s in specs:
        table.add_row(s.name, s.adapter, str(s.protocol.batch_size), s.description, str(s.path))
    out = console()
    out.print(table)
    out.print("searched: " + ", ".join(str(d) for d in search_dirs()), style="dim")
    return 0


def cmd_devices_show(args: argparse.Namespace) -> int:
    from compofa_bench.adapters import check_device, open_adapter
    from compofa_bench.devices import load_device
    from compofa_bench.fingerprint import fingerprint

    spec = check_device(load_device(args.device))  # the same check profile makes
    info = spec.to_dict()
    if args.probe:
        with open_adapter(spec) as adapter:
            info["fingerprint"] = fingerprint(adapter.describe(), spec.protocol.to_dict())
    if args.json:
        print_json(info)
        return 0
    out = console()
    out.print(f"[bold]{spec.name}[/bold]  adapter={spec.adapter}  ({spec.path})")
    if spec.description:
        out.print(spec.description)
    table = Table(title="options")
    table.add_column("option")
    table.add_column("value")
    for k, v in spec.options.items():
        table.add_row(k, repr(v))
    out.print(table)
    table = Table(title="protocol")
    table.add_column("field")
    table.add_column("value")
    for k, v in spec.protocol.to_dict().items():
        table.add_row(k, str(v))
    out.print(table)
    if args.probe:
        f = info["fingerprint"]
        out.print(f"fingerprint (stable hash): [bold]{f['stable_hash']}[/bold]")
        for k, v in f["stable"].items():
            out.print(f"  {k}: {v}")
        for k, v in f["volatile"].items():
            out.print(f"  {k}: {v}", style="dim")
    return 0
