"""Which subnets and which image size each training step uses.

Every choice is a pure function of ``(seed, phase, global step)``: every rank draws the same
subnets and resolution without communicating, and a resumed run draws exactly what the
uninterrupted one would have.
"""

from __future__ import annotations

import numpy as np

from compofa_bench.spaces import Arch, SearchSpace


def step_rng(seed: int, phase_index: int, step: int, stream: int) -> np.random.Generator:
    """An independent generator per (seed, phase, step, stream)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, phase_index, step, stream])


def step_resolution(resolutions: tuple[int, ...], seed: int, phase_index: int, step: int) -> int:
    rng = step_rng(seed, phase_index, step, 0)
    return int(resolutions[rng.integers(len(resolutions))])


def step_subnets(
    space: SearchSpace,
    sampling: str,
    n: int,
    resolution: int,
    seed: int,
    phase_index: int,
    step: int,
) -> list[Arch]:
    """The subnets of one step, all at the step's resolution.

    ``largest``: the largest subnet alone. ``uniform``: ``n`` independent uniform draws (OFA's
    ``sample_active_subnet``; CompOFA samples its compound space the same way).
    ``upper-attentive`` (fOFA): the largest first, then ``n - 1`` uniform draws that are never
    the smallest. ``sandwich`` (BigNAS): largest, smallest, then ``n - 2`` uniform draws.
    The largest subnet, when present, is always first: in-place distillation needs its output
    before the others.
    """
    rng = step_rng(seed, phase_index, step, 1)

    def rand() -> Arch:
        return space.sample(rng).with_resolution(resolution)

    largest = space.largest(resolution)
    smallest = space.smallest(resolution)

    def rand_not_smallest() -> Arch:
        # fOFA drops the smallest subnet from the sandwich; keeping it out of the random
        # draws too makes "never the smallest" hold exactly, not just almost surely.
        while True:
            arch = rand()
            if arch != smallest or largest == smallest:
                return arch

    if sampling == "largest":
        return [largest]
    if sampling == "uniform":
        return [rand() for _ in range(n)]
    if sampling == "upper-attentive":
        return [largest] + [rand_not_smallest() for _ in range(n - 1)]
    if sampling == "sandwich":
        return [largest, smallest] + [rand() for _ in range(n - 2)]
    raise ValueError(f"unknown sampling {sampling!r}")
