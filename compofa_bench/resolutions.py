"""Resolutions: the one rule every command applies (an integer, a multiple of 4, in
[MIN_RESOLUTION, MAX_RESOLUTION]) and the parsing of ``"160,224"`` / ``"128-224:4"``.
Re-exported by :mod:`compofa_bench.spaces`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compofa_bench.errors import ArchError, SpaceError

#: Resolutions a space may be configured with: multiples of 4. OFA trains on every multiple of 4
#: in [128, 224]; small-image training (Fashion-MNIST) goes down to 32.
MIN_RESOLUTION = 32
MAX_RESOLUTION = 512


def check_resolutions(resolutions: Sequence[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated resolutions; each a multiple of 4 in the supported range."""
    if isinstance(resolutions, (str, bytes)) or not isinstance(resolutions, Sequence):
        raise SpaceError(f"resolutions must be a list of integers, got {resolutions!r}")
    out = set()
    for r in resolutions:
        try:
            out.add(check_resolution_value(r))
        except ArchError as exc:
            raise SpaceError(str(exc)) from None
    if not out:
        raise SpaceError("at least one resolution is needed")
    return tuple(sorted(out))


def check_resolution_value(r: object) -> int:
    """The one resolution rule, for every command: an integer, a multiple of 4, in
    [MIN_RESOLUTION, MAX_RESOLUTION]. A space's own list (``--resolutions``) lies in it."""
    if isinstance(r, bool) or not isinstance(r, (int, np.integer)):
        raise ArchError(f"resolution {r!r} is not an integer")
    if r % 4 or not MIN_RESOLUTION <= r <= MAX_RESOLUTION:
        raise ArchError(
            f"resolution {r} must be a multiple of 4 in [{MIN_RESOLUTION}, {MAX_RESOLUTION}] "
            "(OFA trains on multiples of 4 in [128, 224])"
        )
    return int(r)


def parse_resolutions(text: str) -> tuple[int, ...]:
    """Parse ``"160,224"`` or ``"128-224:4"`` (inclusive range with step)."""
    text = text.strip()
    try:
        if "-" in text and "," not in text:
            span, _, step = text.partition(":")
            lo, hi = (int(x) for x in span.split("-"))
            values: Sequence[int] = range(lo, hi + 1, int(step) if step else 4)
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpaceError(
            f"cannot parse resolutions {text!r}: use '160,224' or '128-224:4'"
        ) from None
    # Parsed: whatever is wrong now is the values, and the rule says which.
    return check_resolutions(values)
