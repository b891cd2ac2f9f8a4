"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from compofa_bench.errors import ArchError, CompofaError


def console() -> Console:
    """Human output goes to stdout; ``--json`` output bypasses rich entirely."""
    return Console(highlight=False, soft_wrap=False)


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
