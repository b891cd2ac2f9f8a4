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
2. add it to ``ADAPTERS`` in ``compofa_bench/adapters/__init__.py``;
3. ship a device TOML in ``devices/`` with ``adapter = "<name>"``.

Adapters with a native timing loop (TFLite's ``benchmark_model``, trtexec-like CUDA event
loops) return their own samples or summary; the others call
:func:`compofa_bench.measure.timed_loop`, which implements the warmup / min-runs / min-seconds /
max-seconds rule once for everybody.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch.nn as nn

    from compofa_bench.devices import DeviceSpec
    from compofa_bench.measure import Protocol


@dataclass(frozen=True)
class Workload:
    """What to measure.

    ``module`` is a float32 PyTorch module in eval mode taking one NCHW tensor.
    ``input_shape`` includes the batch dimension. ``cache_key`` identifies the workload
    for artifact caches (arch key or layer key plus anything that changes the graph);
    adapters add their own parts (precision, runtime version, ...).

    A workload may instead be *lazy*: ``module=None`` and a ``module_factory``. Adapters that
    set ``lazy_module = True`` call :meth:`get_module` only on an artifact-cache miss, so a
    rerun with cached artifacts never builds the subnet; for every other adapter the profile
    loop resolves the module before :meth:`Adapter.prepare`, so ``workload.module`` is set.
    """

    name: str
    module: nn.Module | None
    input_shape: tuple[int, ...]
    cache_key: str
    module_factory: Callable[[], nn.Module] | None = field(default=None, compare=False)

    def get_module(self) -> nn.Module:
        """The module, built (once) by ``module_factory`` when the workload is lazy."""
        if self.module is None:
            if self.module_factory is None:
                raise ValueError(f"workload {self.name} has neither a module nor a factory")
            # frozen for users, but a lazy workload fills its own cache exactly once
            object.__setattr__(self, "module", self.module_factory())
        assert self.module is not None
        return self.module


@dataclass
class Timing:
    """What one timed run of a prepared workload produced.

    ``samples_ms`` holds one latency per timed run when the runtime exposes them. Native tools
    that print only a summary (``benchmark_model``) leave it empty and fill ``summary_ms`` with
    the keys they have (``count``, ``mean``, ``std``, ``min``, ``max``, ``first``...).
    ``raw_output`` keeps a native tool's text so a parse can be redone later.
    """

    samples_ms: list[float]
    warmup_ms: list[float] = field(default_factory=list)
    summary_ms: dict[str, float] = field(default_factory=dict)
    raw_output: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


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
        :func:`compofa_bench.devices.check_device`), so they accept and refuse the same files."""

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
