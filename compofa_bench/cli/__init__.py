"""The ``compofa-bench`` command: parse, call the library, print with rich.

Each command group lives in its own module with a ``register(subparsers)`` function. Modules
import heavy libraries inside their handlers so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from compofa_bench import __version__
from compofa_bench.errors import CompofaError

#: Command-group modules under compofa_bench.cli, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "devices",
    "profile",
    "results",
    "space",
    "lut",
    "train",
    "evaluate",
    "predictor",
    "search",
    "export",
)

DESCRIPTION = """\
On-device latency profiling, lookup tables and search for once-for-all networks
(OFA, CompOFA, fOFA).

The usual path on a new target:
  compofa-bench profile   --device cpu-ort --space compofa --sample 20
  compofa-bench lut build --device cpu-ort --space compofa --out lookup_tables/mine.json
  compofa-bench search    --space compofa --lut lookup_tables/mine.json \\
                          --predictor P.pt --latency 10,15 --export onnx --out out/
All of it at once, on this CPU:  compofa-bench demo
Every command has --help with examples.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compofa-bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"compofa-bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"compofa_bench.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        result = handler(args)
    except CompofaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished measurements are kept; rerun to resume", file=sys.stderr)
        return 130
    return int(result or 0)
