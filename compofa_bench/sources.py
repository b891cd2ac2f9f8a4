"""The concrete latency and accuracy sources a search is handed.

:mod:`compofa_bench.search` holds the algorithms and the two protocols they price and score
through (:class:`~compofa_bench.search.LatencySource`, :class:`~compofa_bench.search.AccuracySource`).
The sources that know about lookup tables, MAC counts, devices and predictors live here, so
that the search package imports none of them:

- :class:`LutLatency`: a :class:`~compofa_bench.lut.LatencyTable`'s prediction;
- :class:`MacsLatency`: MACs (millions) as the constraint;
- :class:`MeasuredLatency`: measured on a device through an open adapter and store, memoized;
- :class:`PredictorAccuracy`: an accuracy predictor's score;
- :class:`MacsProxy`: MACs as a stand-in for accuracy (labelled as a proxy everywhere).

The additive ones (table, MACs) also compile themselves into an
:class:`~compofa_bench.search.AdditiveModel`, which the search verifies and then uses as a
numpy gather.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench.encoding import ArchArrays
from compofa_bench.errors import LutError, SearchError
from compofa_bench.netspec import NetSpec
from compofa_bench.search.model import (
    AdditiveModel,
    all_expands,
    all_kernels,
    compile_by_differences,
)
from compofa_bench.spaces import Arch, SearchSpace

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.progress import ProgressFn
    from compofa_bench.store import ResultStore


class MacsLatency:
    """MACs (in millions) as the constraint: ``latency_ms`` returns MMACs, ``unit`` says so."""

    unit = "MMACs"

    def __init__(self, width_mult: float = 1.0, base: str = "mbv3", n_classes: int = 1000) -> None:
        self.width_mult, self.base, self.n_classes = width_mult, base, n_classes
        self.name = f"macs (w{width_mult:g})"
        self._models: dict[tuple[Any, ...], AdditiveModel] = {}

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        from compofa_bench import supernet

        return np.array(
            [
                supernet.count_macs(
                    a, width_mult=self.width_mult, base=self.base, n_classes=self.n_classes
                )
                / 1e6
                for a in archs
            ],
            dtype=np.float64,
        )

    def additive(self, space: SearchSpace) -> AdditiveModel:
        key = (space.name, space.resolutions, space.stage_sizes)
        if key not in self._models:
            self._models[key] = compile_by_differences(self.latency_ms, space)
        return self._models[key]


class LutLatency:
    """Latency predicted by a :class:`compofa_bench.lut.LatencyTable`."""

    unit = "ms"

    def __init__(
        self,
        table: Any,
        width_mult: float | None = None,
        allow_width_mismatch: bool = False,
        name: str | None = None,
    ) -> None:
        self.table = table
        self.width_mult = width_mult
        self.allow_width_mismatch = allow_width_mismatch
        self.name = name or f"lut ({table.provenance.get('source', 'table')})"

    @classmethod
    def from_file(
        cls, path: str, width_mult: float | None = None, allow_width_mismatch: bool = False
    ) -> LutLatency:
        from compofa_bench.lut import LatencyTable

        return cls(LatencyTable.load(path), width_mult, allow_width_mismatch, f"lut:{path}")

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        return np.asarray(
            self.table.predict_ms(
                list(archs),
                width_mult=self.width_mult,
                allow_width_mismatch=self.allow_width_mismatch,
            ),
            dtype=np.float64,
        )

    def additive(self, space: SearchSpace) -> AdditiveModel:
        """Per-layer values read straight from the table (NaN where it lacks a key); built
        once per space and resolution set."""
        key = (
            space.stage_sizes,
            space.resolutions,
            space.kernel_choices,
            space.expand_choices,
            space.coupling,
        )
        cache: dict[Any, AdditiveModel] = self.__dict__.setdefault("_models", {})
        if key not in cache:
            cache[key] = self._build_additive(space)
        return cache[key]

    def _build_additive(self, space: SearchSpace) -> AdditiveModel:
        t = self.table
        t._check_width(self.width_mult, self.allow_width_mismatch)
        missing_res = [r for r in space.resolutions if r not in t.resolutions]
        if missing_res:
            raise LutError(
                f"the table has resolutions {list(t.resolutions)}; search asked for "
                f"{missing_res}: choose resolutions the table has"
            )
        sizes = space.stage_sizes
        n = sum(sizes)
        kernels, expands = all_kernels(space), all_expands(space)
        prefix = t.layout.n_prefix
        fixed = np.full(len(space.resolutions), np.nan)
        per_slot = np.full((len(space.resolutions), n, len(kernels), len(expands)), np.nan)
        for ri, r in enumerate(space.resolutions):
            for ki, k in enumerate(kernels):
                for ei, x in enumerate(expands):
                    keys = t.keys(Arch((k,) * n, (x,) * n, tuple(sizes), r, sizes))
                    for s, key in enumerate(keys[prefix : prefix + n]):
                        v = t.value(r, key)
                        per_slot[ri, s, ki, ei] = np.nan if v is None else v
                    if ki == 0 and ei == 0:
                        vals = [t.value(r, key) for key in keys[:prefix] + keys[prefix + n :]]
                        if all(v is not None for v in vals):
                            fixed[ri] = sum(vals)
        cal = getattr(t, "calibration", None)
        if cal is not None:
            # overhead + scale_r * (fixed + sum of slots) is itself additive: fold it in so the
            # model stays a plain gather (and Pricer checks the fold against predict_ms)
            scales = np.array([cal.scale_for(r) for r in space.resolutions])
            fixed = cal.overhead_ms + scales * fixed
            per_slot = scales[:, None, None, None] * per_slot
        return AdditiveModel(sizes, space.resolutions, kernels, expands, fixed, per_slot)


class MeasuredLatency:
    """Latency measured on a device. Results go to the results store, keyed by arch (with
    resolution) and device fingerprint, so a repeated search measures nothing twice (CompOFA
    section 5.7's memoized on-device search).

    It is handed an OPEN adapter and an open store (:mod:`compofa_bench.jobs` opens them once
    for the whole search): a phone over ADB must not reconnect for every batch of new archs.
    The caller closes both."""

    unit = "ms"

    def __init__(
        self,
        spec: DeviceSpec,
        adapter: Adapter,
        store: ResultStore,
        net: NetSpec = NetSpec(),
        space: str | None = None,
        progress: ProgressFn | None = None,
        protocol_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.spec, self.adapter, self.store = spec, adapter, store
        self.net = net
        self.space, self.progress = space, progress
        self.protocol_overrides = dict(protocol_overrides or {})
        self.name = f"measured on {spec.name}"
        self._memo: dict[Arch, float] = {}

    def latency_ms(self, archs: Sequence[Arch]) -> np.ndarray:
        todo = [a for a in dict.fromkeys(archs) if a not in self._memo]
        if todo:
            from compofa_bench import profile
            from compofa_bench.timing_run import RunOptions

            runs = profile.profile_archs(
                todo,
                [self.spec],
                self.store,
                space=self.space,
                net=self.net,
                progress=self.progress,
                protocol_overrides=self.protocol_overrides,
                adapters=[self.adapter],
                # memoization: a stored row answers, contended or not; the winners are
                # re-measured and checked after the search (compofa_bench.verdict)
                run=RunOptions(accept_unstable=True),
            )
            got = self.store.lookup_many(
                [a.key() for a in todo],
                fingerprint_hash=runs[0].fingerprint_hash,
                protocol_hash=runs[0].protocol_hash,
                width_mult=self.net.width_mult,
            )
            missing = [a.key() for a in todo if a.key() not in got]
            if missing:
                raise SearchError(
                    f"{len(missing)} arch(s) could not be measured on {self.spec.name} "
                    f"(first: {missing[0]}); see `compofa-bench results` for the errors"
                )
            for a in todo:
                self._memo[a] = float(got[a.key()])
        return np.array([self._memo[a] for a in archs], dtype=np.float64)


class PredictorAccuracy:
    """An :class:`~compofa_bench.predictor.AccuracyPredictor` as a search score."""

    is_proxy = False

    def __init__(self, predictor: Any) -> None:
        self.predictor = predictor
        self.label = predictor.label

    def score(self, arr: ArchArrays) -> np.ndarray:
        return self.predictor.predict(arr)


class MacsProxy:
    """MACs as a stand-in for accuracy (bigger nets are usually more accurate). Every output
    that uses it says ``accuracy proxy: MACs`` because it is not an accuracy."""

    is_proxy = True
    label = "MACs proxy (not an accuracy: higher MACs ranked as better)"

    def __init__(self, space: SearchSpace, width_mult: float = 1.0, n_classes: int = 1000) -> None:
        self.model = MacsLatency(width_mult, space.base, n_classes).additive(space)

    def score(self, arr: ArchArrays) -> np.ndarray:
        return self.model.evaluate(arr)
