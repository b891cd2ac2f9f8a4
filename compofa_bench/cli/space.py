"""``space list|show`` and ``arch info``."""

from __future__ import annotations

import argparse

from rich.table import Table

from compofa_bench import spaces
from compofa_bench.cli.common import console, print_json, read_json


def register(sub: argparse._SubParsersAction) -> None:
    p_space = sub.add_parser(
        "space",
        help="list and describe search spaces",
        description="Search spaces: which subnets of a supernet are allowed.",
        epilog="examples:\n  compofa-bench space list\n  compofa-bench space show compofa\n"
        "  compofa-bench space show ofa --resolutions 128-224:4 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    space_sub = p_space.add_subparsers(dest="space_command", metavar="ACTION", required=True)

    p = space_sub.add_parser("list", help="list the search spaces")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_space_list)

    p = space_sub.add_parser(
        "show",
        help="size, dimensions and resolutions of a space",
        description="Show a space: its size (exact), per-stage depths, kernels, expand ratios, "
        "coupling and resolutions.",
        epilog="examples:\n  compofa-bench space show compofa\n"
        "  compofa-bench space show ofa --resolutions 160,224 --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="space name (see `space list`)")
    p.add_argument(
        "--resolutions", default=None, help="override the resolution set, e.g. 160,224 or 128-224:4"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_space_show)

    p_arch = sub.add_parser("arch", help="inspect an architecture")
    arch_sub = p_arch.add_subparsers(dest="arch_command", metavar="ACTION", required=True)
    p = arch_sub.add_parser(
        "info",
        help="validate an arch file and print its MACs and parameters",
        description='ARCH.json holds OFA\'s dict form: {"ks": [20 kernels], "e": [20 expand '
        'ratios], "d": [5 depths], "r": [224]} ("image_size": 224 works too). MACs and '
        "parameters come from the layer geometry alone (no model is built) and equal OFA's "
        "count_net_flops / count_parameters of the extracted subnet.",
        epilog="examples:\n  compofa-bench arch info arch.json\n"
        "  compofa-bench arch info arch.json --space compofa --width-mult 1.2 --json\n"
        "  compofa-bench arch info arch.json --resolution 160   # file without r/image_size",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("arch_file", metavar="ARCH.json")
    p.add_argument("--space", default="ofa", help="space to validate against (default: ofa)")
    p.add_argument("--width-mult", type=float, default=1.0, help="supernet width (1.0 or 1.2)")
    p.add_argument("--n-classes", type=int, default=1000)
    p.add_argument("--resolution", type=int, default=None, help="resolution when the file has none")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_arch_info)


def cmd_space_list(args: argparse.Namespace) -> int:
    if args.json:
        print_json([spaces.get(name).describe() for name in spaces.names()])
        return 0
    table = Table(title="search spaces")
    for col in ("name", "base", "architectures", "description"):
        table.add_column(col)
    for name in spaces.names():
        s = spaces.get(name)
        table.add_row(name, s.base, _fmt_count(s.structure_count()), s.description)
    console().print(table)
    return 0


def cmd_space_show(args: argparse.Namespace) -> int:
    resolutions = None if args.resolutions is None else spaces.parse_resolutions(args.resolutions)
    space = spaces.get(args.name, resolutions)
    info = space.describe()
    if args.json:
        print_json(info)
        return 0
    out = console()
    out.print(f"[bold]{space.name}[/bold] ({space.base}): {space.description}")
    out.print(f"structures:   {info['structures']:,} ({_fmt_count(info['structures'])})")
    out.print(f"resolutions:  {info['resolutions']}")
    out.print(f"architectures (structures x resolutions): {info['size']:,}")
    out.print(f"width mults:  {info['width_mults']}")
    table = Table(title="stages")
    for col in ("stage", "layer slots", "depths", "kernels per layer", "expand"):
        table.add_column(col)
    for i, size in enumerate(space.stage_sizes):
        start = sum(space.stage_sizes[:i])
        kernels = sorted({k for j in range(size) for k in space.kernel_choices[start + j]})
        expand = (
            "coupled "
            + ", ".join(f"d{d}→e{e}" for d, e in space.coupling if d in space.depth_choices[i])
            if space.coupling
            else str(list(space.expand_choices))
        )
        table.add_row(str(i), str(size), str(list(space.depth_choices[i])), str(kernels), expand)
    out.print(table)
    return 0


def cmd_arch_info(args: argparse.Namespace) -> int:
    from compofa_bench import supernet

    space = spaces.get(args.space)
    spec = read_json(args.arch_file, "arch file")
    arch = spaces.Arch.from_ofa(spec, resolution=args.resolution, stage_sizes=space.stage_sizes)
    space.validate(arch, check_resolution=False)  # the resolution rule still applies
    spaces.check_width(space, args.width_mult)
    macs = supernet.count_macs(
        arch, width_mult=args.width_mult, base=space.base, n_classes=args.n_classes
    )
    params = supernet.count_params(
        arch, width_mult=args.width_mult, base=space.base, n_classes=args.n_classes
    )
    info = {
        "space": space.name,
        "key": arch.key(),
        "arch": arch.to_ofa(),
        "width_mult": args.width_mult,
        "resolution": arch.resolution,
        "macs": macs,
        "mmacs": macs / 1e6,
        "params": params,
    }
    if args.json:
        print_json(info)
        return 0
    out = console()
    out.print(f"valid member of [bold]{space.name}[/bold]: {arch.key()}")
    out.print(f"depths {list(arch.d)}, resolution {arch.resolution}, width {args.width_mult}")
    out.print(f"MACs   {macs / 1e6:,.1f} M")
    out.print(f"params {params / 1e6:,.3f} M")
    return 0


def _fmt_count(n: int) -> str:
    return f"{n:,}" if n < 10**7 else f"{n:.3g}"
