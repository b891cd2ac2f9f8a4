"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.console import Console

from compofa_bench.errors import ArchError, CompofaError
from compofa_bench.netspec import NetSpec

if TYPE_CHECKING:
    from rich.table import Table

#: The width of human output that is not a terminal (a file, a pipe, a CI log). Such output has
#: no right edge, so a table is as wide as its content; rich's default there, 80 columns, cut
#: headers to "measu…" and folded each arch key over nine lines.
UNBOUNDED_WIDTH = 100_000


class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits with 1 here; the CLI's main ends every command the same way on a closed
        # stdout (quietly, exit 141), so hand it the error.
        raise BrokenPipeError


def console(file: IO[str] | None = None) -> Console:
    """Human output goes to stdout (or ``file``); ``--json`` output bypasses rich entirely.
    Every command gets its console here, so the width rule holds everywhere."""
    out = _Console(file=file, highlight=False, soft_wrap=False)
    if not out.is_terminal:
        out.width = UNBOUNDED_WIDTH
    return out


def key_column(table: Table, header: str, **kwargs: Any) -> None:
    """A column of arch or workload keys. The rule for keys everywhere: shown whole, never
    wrapped, never cut (a key is an identifier to copy, and half of one names nothing)."""
    table.add_column(header, no_wrap=True, overflow="ignore", **kwargs)


def print_table(out: Console, table: Table) -> None:
    """Print ``table``; on a terminal too narrow for its keys, at the width the keys need (the
    terminal then wraps the long lines, but a copied key stays whole) instead of cutting them."""
    from rich.measure import Measurement

    need = Measurement.get(out, out.options.update(max_width=UNBOUNDED_WIDTH), table).minimum
    if need > out.width:
        wide = _Console(file=out.file, highlight=False, soft_wrap=False, width=need)
        wide.print(table)
    else:
        out.print(table)


def resolutions_arg(text: str) -> tuple[int, ...]:
    """``--resolutions`` for argparse: the rule's own message instead of 'invalid value'."""
    from compofa_bench import spaces
    from compofa_bench.errors import SpaceError

    try:
        return spaces.parse_resolutions(text)
    except SpaceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def read_json(path: str | Path, what: str = "file", error: type[CompofaError] = ArchError) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {p}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{what} {p} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def help_formatter() -> type[argparse.HelpFormatter]:
    return argparse.RawDescriptionHelpFormatter


def report_failures(failed: list[tuple[str, str]], total: int, what: str = "item") -> int:
    """Summarise ``(item, error)`` failures on stderr, grouped by error, and return the exit
    code: 0 when none failed, 1 when all ``total`` did, 3 when some did (docs/inputs.md)."""
    from collections import Counter

    if not failed:
        return 0
    groups = Counter(error for _, error in failed)
    first = {}
    for item, error in failed:
        first.setdefault(error, item)
    print(f"{len(failed)} of {total} {what}(s) failed:", file=sys.stderr)
    for error, n in groups.most_common():
        print(f"  {n} x {' '.join(error.split())} (e.g. {first[error]})", file=sys.stderr)
    return 1 if len(failed) >= total else 3


# ------------------------------------------------------------------ argument groups shared by
# the commands, so that a flag means the same thing (and has the same default) everywhere


def add_net_args(p: Any, checkpoint: str | None = None) -> None:
    """``--width-mult`` and ``--n-classes`` (and ``--checkpoint`` when given its help): the
    supernet a subnet is cut from (see :func:`net_spec`)."""
    p.add_argument("--width-mult", type=float, default=1.0, help="supernet width (default 1.0)")
    p.add_argument("--n-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    if checkpoint is not None:
        p.add_argument("--checkpoint", metavar="C", default=None, help=checkpoint)


def net_spec(args: argparse.Namespace, base: str) -> NetSpec:
    """The :class:`~compofa_bench.netspec.NetSpec` the flags of :func:`add_net_args` name."""
    return NetSpec(base, args.width_mult, args.n_classes, getattr(args, "checkpoint", None))


def add_store_arg(p: Any) -> None:
    p.add_argument("--store", default="results.db", help="results store (default: results.db)")


def add_output_args(p: Any, json_help: str = "print JSON", progress: bool = False) -> None:
    """``--json`` (machine output, no rich) and, for long commands, ``--no-progress``."""
    if progress:
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help=json_help)
