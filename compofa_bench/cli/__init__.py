"""The ``compofa-bench`` command: parse, call the library, print with rich.

Each command group lives in its own module with a ``register(subparsers)`` function. Modules
import heavy libraries inside their handlers so that ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
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


#: Exit codes (docs/inputs.md). 0: everything asked for succeeded.
EXIT_FAILED = 1  # nothing asked for succeeded (every arch failed, ...)
EXIT_BAD_INPUT = 2  # a CompofaError: bad flag, file or device; one ``error:`` line
EXIT_PARTIAL = 3  # some items failed, the rest are done (a summary says which and why)
EXIT_BROKEN_PIPE = 141  # stdout closed early (``| head``): 128 + SIGPIPE, as a shell reports
EXIT_INTERRUPTED = 130  # Ctrl-C


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "func", None)
    if handler is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        result = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler's try
    except CompofaError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished measurements are kept; rerun to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return int(result or 0)


def _one_line(exc: BaseException) -> str:
    """An error message on one line: tools that read stderr see one ``error:`` per failure."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush of what is still buffered
    does not raise a second BrokenPipeError (printed as 'Exception ignored ...')."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):  # replaced or closed stdout (tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
