"""The flags of every command that times something on a device (``profile``, ``lut build``,
``lut validate``, ``search --export --device``, ``demo``): rounds, waiting, locking."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compofa_bench.timing_run import RunOptions

HELP = """\
timing on a shared host: every timing run holds a lock on the CPUs it uses (a second run on
the same CPUs waits for it), samples what other processes do meanwhile (rows past the
device's contention_threshold are marked contended), and opens and closes with a probe of a
reference workload whose drift is the run's noise floor."""


def add_run_args(p: argparse.ArgumentParser, default_rounds: int = 1) -> None:
    g = p.add_argument_group("timing on a shared host", HELP)
    g.add_argument(
        "--rounds",
        type=int,
        default=default_rounds,
        metavar="R",
        help=f"time the whole set R times, each round in a fresh shuffled order; a workload's "
        f"estimate is the median of its round medians (default {default_rounds})",
    )
    g.add_argument(
        "--order-seed", type=int, default=0, metavar="S", help="seed of the round orders (0)"
    )
    g.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each workload, wait up to SECONDS for other processes to leave the "
        "measured CPUs (default 0: do not wait)",
    )
    g.add_argument(
        "--no-wait",
        action="store_true",
        help="fail at once (exit 2) when another timing run holds the CPUs, instead of waiting",
    )
    g.add_argument(
        "--accept-unstable",
        action="store_true",
        help="count unstable and contended rows as done (default: a rerun measures them "
        "again, up to the protocol's remeasure)",
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    """The :class:`~compofa_bench.timing_run.RunOptions` of the parsed flags (validated:
    ``--rounds 0`` or a negative ``--wait-idle`` raise a MeasurementError)."""
    from compofa_bench.timing_run import RunOptions

    return RunOptions(
        rounds=args.rounds,
        order_seed=args.order_seed,
        wait_idle_s=args.wait_idle,
        wait=not args.no_wait,
        accept_unstable=args.accept_unstable,
    )
