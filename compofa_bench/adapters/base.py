"""The adapter protocol: how a runtime plugs into compofa-bench.

An adapter turns a :class:`Workload` (a PyTorch module plus its input shape) into something
its runtime can run (:meth:`Adapter.prepare`), times it under a :class:`~compofa_bench.measure.Protocol`
(:meth:`Adapter.time`), and describes itself for the environment fingerprint
(:meth:`Adapter.describe`). Everything else (which archs, statistics, the results store,
lookup tables, search) is device independent and lives outside the adapters.

To add a runtime:

1. subclass :class:`Adapter` in ``compofa_bench/adapters/<name>.py``; import heavy
   packages inside methods and raise :class:`~compofa_bench.errors.MissingDependencyError`
   naming the extra when they are absent;
2. add it to ``ADAPTERS`` in ``compofa_bench/devices.py``;
3. ship a device TOML in ``devices/`` with ``adapter = "<name>"``.

Adapters with a native timing loop (TFLite's ``benchmark_model``, trtexec-like CUDA event
loops) return their own samples or summary; the others call
:func:`compofa_bench.measure.timed_loop`, which implements the warmup / min-runs / min-seconds /
max-seconds rule once for everybody.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from compofa_bench.measure import Timing, Workload

if TYPE_CHECKING:
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.measure import Protocol

__all__ = ["Adapter", "Prepared", "Timing", "Workload"]


@dataclass
class Prepared:
    """A runtime-ready artifact. ``handle`` is adapter-private; ``prepare_s`` splits the cost
    into export/convert and session creation for the overhead report."""

    workload: Workload
    handle: Any
    artifact_path: str | None = None
    prepare_s: dict[str, float] = field(default_factory=dict)


class Adapter(abc.ABC):
    """Base of every runtime adapter. One instance serves one device spec."""

    #: The ``adapter = "..."`` value in device TOML files.
    kind: ClassVar[str]
    #: True when :meth:`time` uses the runtime's own timing loop.
    native_timing: ClassVar[bool] = False
    #: True when workloads run on another machine (a phone over ADB): the host's CPU model and
    #: core counts are then left out of the stable fingerprint, so results from any host
    #: driving the same phone resume and memoize together. ``describe()`` must then identify
    #: the remote hardware itself (model, SoC, OS build...).
    remote: ClassVar[bool] = False
    #: True when :meth:`prepare` accepts lazy workloads (calls ``workload.get_module()`` only
    #: when it has to convert); see :class:`Workload`.
    lazy_module: ClassVar[bool] = False

    def __init__(self, spec: DeviceSpec) -> None:
        self.spec = spec

    @classmethod  # noqa: B027 - optional hook: an adapter without options has nothing to check
    def check_options(cls, spec: DeviceSpec) -> None:
        """Raise :class:`DeviceError` for a bad ``[options]`` table without opening the runtime
        or the hardware. ``devices show`` and ``profile`` both call it (through
        :func:`compofa_bench.adapters.check_device`), so they accept and refuse the same files."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Runtime name and version, thread settings, hardware the runtime sees. Merged into
        the environment fingerprint of every measurement. Must be cheap and side-effect free."""

    @abc.abstractmethod
    def prepare(self, workload: Workload) -> Prepared:
        """Export/convert and load ``workload`` so that :meth:`time` measures inference only."""

    @abc.abstractmethod
    def time(self, prepared: Prepared, protocol: Protocol) -> Timing:
        """Warm up and time ``prepared`` under ``protocol``."""

    def release(self, prepared: Prepared) -> None:  # noqa: B027 - optional hook
        """Free what :meth:`prepare` allocated (sessions, files on a phone)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; called once when the adapter is no longer needed."""

    def __enter__(self) -> Adapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
