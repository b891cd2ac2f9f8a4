"""How much memory a batch needs, estimated before anything is allocated.

A batch of 100000 at 160 px asks for a 30.7 GB input tensor alone; allocating it first and
failing (or swapping the host to a halt) is the wrong order. The estimate reads the subnet's
layer geometry (:func:`compofa_bench.supernet.layer_specs`) and counts, in float32:

* the weights (every parameter of the extracted subnet, once);
* the input batch;
* the largest working set of one layer over the batch: its input, its expanded middle
  tensor before and after the depthwise conv, and its output. A runtime holds at least these
  at once; arenas and the export's trace add more, so this is a lower bound, which is what a
  refusal needs (a batch refused by a lower bound cannot fit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from compofa_bench.errors import MeasurementError
from compofa_bench.spaces import Arch

#: float32
BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class MemoryEstimate:
    key: str  # the arch
    batch_size: int
    weights_bytes: int
    activation_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.activation_bytes

    def describe(self) -> str:
        return (
            f"{format_bytes(self.total_bytes)} (weights {format_bytes(self.weights_bytes)} + "
            f"activations {format_bytes(self.activation_bytes)} for batch {self.batch_size} "
            f"of {self.key})"
        )


def estimate(
    arch: Arch,
    batch_size: int,
    width_mult: float = 1.0,
    base: str = "mbv3",
    n_classes: int = 1000,
    training: bool = False,
) -> MemoryEstimate:
    """The lower-bound memory of running ``arch`` on a batch (see the module docstring).

    ``training``: backward needs every layer's tensors, not only the largest layer's, and
    SGD keeps a gradient and a momentum buffer per weight."""
    from compofa_bench import supernet

    # Every command with a batch estimates it first, so this is the one batch-size check.
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MeasurementError(f"batch size must be a positive integer, got {batch_size!r}")
    specs = supernet.layer_specs(arch, width_mult, base, n_classes)
    params = supernet.count_params(arch, width_mult, base, n_classes)
    per_image = 3 * arch.resolution**2  # the input
    peak = kept = 0
    for s in specs:
        mid_in = s.mid_c * s.in_hw**2
        mid_out = s.mid_c * s.out_hw**2
        peak = max(peak, s.in_c * s.in_hw**2 + mid_in + mid_out + s.out_c * s.out_hw**2)
        kept += mid_in + mid_out + s.out_c * s.out_hw**2
    return MemoryEstimate(
        key=arch.key(),
        batch_size=batch_size,
        weights_bytes=params * BYTES_PER_VALUE * (3 if training else 1),
        activation_bytes=batch_size * (per_image + (kept if training else peak)) * BYTES_PER_VALUE,
    )


def available_bytes() -> int:
    """Memory the host can give without swapping (psutil's ``available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_fits(
    estimates: Iterable[MemoryEstimate], available: int, force: bool = False
) -> MemoryEstimate | None:
    """The largest estimate; :class:`MeasurementError` if it exceeds ``available`` unless
    ``force``. Returns None for no estimates."""
    largest = max(estimates, key=lambda e: e.total_bytes, default=None)
    if largest is not None and largest.total_bytes > available and not force:
        raise MeasurementError(
            f"the batch needs at least {largest.describe()} but {format_bytes(available)} "
            "is available; use a smaller --batch-size, or --force to try anyway"
        )
    return largest


def format_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
