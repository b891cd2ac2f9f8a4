"""Extract a chosen subnet, export it (ONNX, TFLite, TensorRT), check it, time it.

The chain a search winner goes through: build the supernet, load a checkpoint (OFA, CompOFA or
our own), extract the static subnet, optionally recalibrate its BatchNorm statistics on a few
training batches, export, and compare the exported model with PyTorch on the same input (the
max abs difference is reported and must stay within a tolerance). With a device, the artifact's
latency is measured there next to the prediction.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compofa_bench.errors import ExportError, MissingDependencyError
from compofa_bench.fileio import atomic_write_json
from compofa_bench.spaces import Arch

FORMATS = ("onnx", "tflite", "tensorrt")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "tensorrt": ".engine"}


@dataclass(frozen=True)
class SubnetSource:
    """Where a subnet's weights come from. No checkpoint means random init: fine for latency,
    meaningless for accuracy (every output says which)."""

    checkpoint: str | None = None
    base: str = "mbv3"
    width_mult: float = 1.0
    n_classes: int = 1000
    calib_data: str | None = None
    calib_images: int = 2000
    calib_batch_size: int = 100
    seed: int = 0

    @property
    def weights(self) -> str:
        return self.checkpoint or "random-init (latency only)"


@dataclass
class ExportResult:
    format: str
    path: str
    input_shape: tuple[int, ...]
    parity: dict[str, Any] | None
    export_seconds: float
    weights: str
    bn_recalibrated_images: int = 0
    measured: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


class SubnetBuilder:
    """Builds the supernet once and extracts as many subnets as asked."""

    def __init__(self, source: SubnetSource) -> None:
        self.source = source
        self._net: Any = None

    def supernet(self) -> Any:
        if self._net is None:
            from compofa_bench import supernet

            net = supernet.build(
                base=self.source.base,
                width_mult=self.source.width_mult,
                n_classes=self.source.n_classes,
            )
            if self.source.checkpoint:
                if not Path(self.source.checkpoint).is_file():
                    raise ExportError(f"checkpoint {self.source.checkpoint} does not exist")
                trained = _training_checkpoint(self.source.checkpoint)
                if trained is None:
                    net.load_checkpoint(self.source.checkpoint)
                elif trained["n_classes"] != self.source.n_classes:
                    raise ExportError(
                        f"{self.source.checkpoint} was trained for {trained['n_classes']} "
                        f"classes, not {self.source.n_classes}"
                    )
                else:
                    net.load_state_dict(trained["model"])
            self._net = net.eval()
        return self._net

    def extract(self, arch: Arch) -> tuple[Any, int]:
        """``(static subnet in eval mode, images used for BN recalibration)``."""
        sub = self.supernet().extract(arch)
        seen = 0
        if self.source.calib_data:
            from compofa_bench.supernet import recalibrate_bn

            seen = recalibrate_bn(sub, _calib_batches(self.source, arch.resolution))
        return sub.eval(), seen


def _training_checkpoint(path: str) -> dict[str, Any] | None:
    """A ``compofa-bench train`` checkpoint's content, or None for other files (OFA's)."""
    from compofa_bench.errors import TrainError
    from compofa_bench.train import checkpoint as train_ckpt

    try:
        return train_ckpt.load(path)
    except TrainError:
        return None


def _calib_batches(source: SubnetSource, resolution: int) -> Iterator[Any]:
    import torch

    from compofa_bench import data as data_mod

    spec = data_mod.resolve(source.calib_data)  # type: ignore[arg-type]
    ds = data_mod.calib_dataset(spec, resolution)
    # OFA recalibrates on a fixed random subset of training images.
    idx = data_mod.subset_indices(len(ds), source.calib_images, source.seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, idx.tolist()),
        batch_size=source.calib_batch_size,
        shuffle=False,
    )
    for images, _ in loader:
        x = data_mod.resize_batch(images, resolution)
        yield data_mod.normalize(x, spec.mean, spec.std)


def export_module(
    module: Any,
    input_shape: tuple[int, ...],
    fmt: str,
    out_path: str | Path,
    *,
    weights: str = "",
    cache_key: str | None = None,
    parity_tolerance: float = 1e-3,
) -> ExportResult:
    """Export ``module`` to ``out_path`` in ``fmt`` and check it against PyTorch."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    notes: list[str] = []
    if fmt == "onnx":
        from compofa_bench.convert import check_onnx_parity, to_onnx

        to_onnx(module, input_shape, out)
        export_s = time.perf_counter() - t0
        # relative bound: logits of a trained net reach ~10-20, so 1e-3 of the value plus 1e-4
        res = check_onnx_parity(module, out, input_shape, rtol=parity_tolerance, atol=1e-4)
        parity = {
            "max_abs_diff": res["max_abs_err"],
            "max_rel_diff": res["max_rel_err"],
            "tolerance": f"1e-4 + {parity_tolerance:g}*|torch|",
            "ok": res["ok"],
            "runtime": "onnxruntime CPU",
        }
    elif fmt == "tflite":
        try:
            from compofa_bench.tflite_convert import convert_cached
        except ImportError as exc:  # the module itself is missing in this build
            raise ExportError(f"TFLite export is not available in this build: {exc}") from None
        info = convert_cached(module, input_shape, out, None, cache_key=cache_key, parity=True)
        export_s = time.perf_counter() - t0
        p = info.parity
        parity = (
            None
            if p is None
            else {
                "max_abs_diff": p.max_abs_diff,
                "tolerance": p.tolerance,
                "ok": p.ok,
                "runtime": "LiteRT interpreter",
            }
        )
    else:
        try:
            from compofa_bench.adapters.tensorrt import build_engine_file
        except ImportError as exc:
            raise MissingDependencyError("tensorrt", "tensorrt", "TensorRT export") from exc
        build_engine_file(module, input_shape, out)
        export_s = time.perf_counter() - t0
        parity = None
        notes.append(
            "TensorRT engine: parity is checked when the engine runs (cuda device); "
            "the engine only runs on the GPU model and TensorRT version that built it"
        )
    return ExportResult(fmt, str(out), tuple(input_shape), parity, export_s, weights, notes=notes)


def export_arch(
    arch: Arch,
    fmt: str,
    out_path: str | Path,
    source: SubnetSource = SubnetSource(),
    builder: SubnetBuilder | None = None,
    batch_size: int = 1,
) -> ExportResult:
    """Extract ``arch`` (with BN recalibration when ``source.calib_data``) and export it."""
    builder = builder or SubnetBuilder(source)
    module, seen = builder.extract(arch)
    shape = (batch_size, 3, arch.resolution, arch.resolution)
    key = f"{source.base}-w{source.width_mult:g}-c{source.n_classes}-{source.weights}-{arch.key()}"
    res = export_module(
        module, shape, fmt, out_path, weights=source.weights, cache_key=None if seen else key
    )
    res.bn_recalibrated_images = seen
    return res


def measure_artifact(
    module: Any,
    arch: Arch,
    device: Any,
    store_path: str | Path | None = None,
    source: SubnetSource = SubnetSource(),
    run: Any = None,
) -> dict[str, Any]:
    """Latency of ``module`` on ``device`` through its adapter (which builds its own runtime
    artifact from the same module: ONNX for cpu-ort, TFLite for phones, an engine for GPUs).
    ``run``: a :class:`~compofa_bench.timing_run.RunOptions` (default: 3 rounds, as every check
    of a prediction)."""
    from compofa_bench import devices, profile
    from compofa_bench.store import ResultStore
    from compofa_bench.timing_run import CHECK_ROUNDS, RunOptions

    spec = device if isinstance(device, devices.DeviceSpec) else devices.load_device(device)
    store_file = Path(store_path) if store_path else None
    with tempfile.TemporaryDirectory() as tmp:
        path = store_file or Path(tmp) / "results.sqlite"
        with ResultStore(path) as store:
            summaries = profile.profile_archs(
                [arch],
                [spec],
                store,
                base=source.base,
                width_mult=source.width_mult,
                n_classes=source.n_classes,
                show_progress=False,
                skip_done=False,
                build_module=lambda _a: module,
                run=run or RunOptions(rounds=CHECK_ROUNDS),
            )
            s = summaries[0].to_dict()
    row = next((r for r in s["results"] if r["key"] == arch.key()), None)
    if row is None or row["median_ms"] is None:
        err = row["error"] if row else "no result"
        raise ExportError(f"measuring on {device} failed: {err}")
    return {
        "device": spec.name,
        "median_ms": row["median_ms"],
        "unstable": row["unstable"],
        "contended": row["contended"],
        "other_cpu": row["other_cpu"],
        "rounds": row["rounds"],
        "noise_floor": s["noise_floor"],
        "fingerprint_hash": s["fingerprint_hash"],
    }


# =============================================================================== search job


@dataclass(frozen=True)
class SearchJob:
    """Everything ``compofa-bench search`` does, as data (see :func:`run_search_job`)."""

    space: str
    targets: tuple[float, ...]
    out_dir: str
    lut: str | None = None
    macs: bool = False
    measure_latency: bool = False
    predictor: str | None = None
    accuracy_proxy: str | None = None
    resolutions: tuple[int, ...] | None = None
    method: str = "auto"
    seed: int = 0
    population_size: int = 100
    #: None: ``search.EvolutionConfig``'s default (10 when a local search follows, else 500)
    generations: int | None = None
    mutate_prob: float = 0.1
    export: str | None = None
    #: a device name or TOML path, or a DeviceSpec (the demo passes its pinned device)
    device: Any = None
    store: str = "results.db"
    allow_width_mismatch: bool = False
    source: SubnetSource = SubnetSource()
    #: a predictor trained at other resolutions scores the search's by rank order
    #: (``predictor.map_resolutions``; the demo's Fashion-MNIST predictor at 160/224 px)
    map_predictor_resolutions: bool = False
    #: measured > target x (1 + tolerance) is MISSED (compofa_bench.verdict)
    tolerance: float = 0.10
    #: how winners are re-measured (a timing_run.RunOptions; None: 3 rounds)
    run: Any = None


def _target_dir(out: Path, target: float, unit: str) -> Path:
    return out / f"target_{target:g}{'ms' if unit == 'ms' else 'mmacs'}"


def run_search_job(job: SearchJob, progress: Any = None, on_export: Any = None) -> dict[str, Any]:
    """Search every target, write the out dir, export and measure winners when asked.

    Writes ``search.json`` (everything), ``pareto.json``/``pareto.png`` and per target a
    ``target_<T>ms/`` folder with ``arch.json`` (OFA dict), ``result.json`` and the artifact.
    Returns the ``search.json`` content.
    """
    import numpy as np

    from compofa_bench import search as S
    from compofa_bench import spaces, verdict
    from compofa_bench.errors import SearchError

    space = spaces.get(job.space, job.resolutions)
    n_sources = sum([job.lut is not None, job.macs, job.measure_latency])
    if n_sources != 1:
        raise SearchError("give exactly one constraint source: --lut, --macs or --measure-latency")
    if (job.predictor is None) == (job.accuracy_proxy is None):
        raise SearchError(
            "give exactly one accuracy source: --predictor P or --accuracy-proxy macs"
        )
    w = job.source.width_mult
    if job.lut is not None:
        cost: Any = S.LutLatency.from_file(job.lut, w, job.allow_width_mismatch)
        if job.resolutions is None:
            common = [r for r in space.resolutions if r in cost.table.resolutions]
            if not common:
                raise SearchError(
                    f"the table's resolutions {list(cost.table.resolutions)} and space "
                    f"{space.name}'s {list(space.resolutions)} have none in common: pass "
                    "--resolutions"
                )
            space = space.with_resolutions(common)
    elif job.macs:
        cost = S.MacsLatency(w, job.source.base, job.source.n_classes)
    else:
        if not job.device:
            raise SearchError("--measure-latency needs --device")
        cost = S.MeasuredLatency(
            job.device, job.store, w, job.source.base, job.source.n_classes, space=space.name
        )
    if job.predictor is not None:
        from compofa_bench import predictor as P

        pred: Any = P.load(job.predictor)
        enc = pred.encoder
        if job.map_predictor_resolutions:
            pred = P.map_resolutions(pred, space.resolutions)
        elif enc.resolution_mode == "onehot" and job.resolutions is None:
            known = [r for r in space.resolutions if r in enc.resolutions]
            if not known:
                raise SearchError(
                    f"the predictor knows resolutions {list(enc.resolutions)}, none of the "
                    f"search's {list(space.resolutions)}: pass --resolutions"
                )
            space = space.with_resolutions(known)
        accuracy: Any = S.PredictorAccuracy(pred)
    elif job.accuracy_proxy == "macs":
        accuracy = S.MacsProxy(space, w, job.source.n_classes)
    else:
        raise SearchError(f"unknown --accuracy-proxy {job.accuracy_proxy!r} (only 'macs')")
    cfg = S.EvolutionConfig(
        population_size=job.population_size,
        generations=job.generations,
        mutate_prob=job.mutate_prob,
    )
    outcome = S.search(
        space,
        accuracy,
        cost,
        job.targets,
        np.random.default_rng(job.seed),
        method=job.method,
        config=cfg,
        progress=progress,
    )
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unit = outcome.unit
    builder = SubnetBuilder(job.source) if job.export else None
    targets_out = []
    for r in outcome.results:
        item = target_record(r, outcome, job)
        if r.arch is not None:
            tdir = _target_dir(out, r.target, unit)
            atomic_write_json(tdir / "arch.json", r.arch.to_ofa())
            if job.export and builder is not None:
                res = export_arch(
                    r.arch, job.export, tdir / f"model{SUFFIX[job.export]}", job.source, builder
                )
                if job.device:
                    module, _ = builder.extract(r.arch)
                    res.measured = measure_artifact(
                        module, r.arch, job.device, job.store, job.source, job.run
                    )
                item["export"] = res.to_dict()
                if res.measured is not None:
                    item["measured_latency_ms"] = res.measured["median_ms"]
                    item["measured_device"] = res.measured["device"]
                    if unit == "ms":
                        v = verdict.check(r.target, r.cost, res.measured, job.tolerance)
                        item["verdict"] = v.to_dict()
                if on_export is not None:
                    on_export(item)
            atomic_write_json(tdir / "result.json", item)
        targets_out.append(item)
    frontier = [
        {"arch": a.to_ofa(), "key": a.key(), "score": s, "cost": c} for a, s, c in outcome.frontier
    ]
    doc = {
        "space": space.name,
        "resolutions": list(space.resolutions),
        "width_mult": w,
        "method": outcome.method,
        "accuracy_source": outcome.score_label,
        "accuracy_is_proxy": outcome.score_is_proxy,
        "constraint_source": outcome.cost_label,
        "unit": unit,
        "seed": job.seed,
        "evolution": None if outcome.config is None else asdict(outcome.config),
        "weights": job.source.weights,
        "search_seconds": outcome.seconds,
        "fastest": None
        if outcome.fastest is None
        else {"arch": outcome.fastest[0].to_ofa(), "cost": outcome.fastest[1]},
        "targets": targets_out,
        "verdict": verdict.summarize(targets_out, job.tolerance),
        "frontier": frontier,
    }
    atomic_write_json(
        out / "pareto.json",
        {"unit": unit, "accuracy_source": outcome.score_label, "frontier": frontier},
    )
    from compofa_bench.report import plot_pareto

    ms_unit = unit == "ms"
    cost_label = "latency (ms)" if ms_unit else "MMACs"
    score_label = "MACs proxy (NOT accuracy)" if outcome.score_is_proxy else "predicted top-1"
    # the re-measured winner beside its prediction; "missed" is #14's verdict when the item
    # has one, else plot_pareto calls a measurement above its target missed
    picks = [
        (r.target, r.cost, r.score, item.get("measured_latency_ms") if ms_unit else None,
         item.get("missed"))
        for r, item in zip(outcome.results, targets_out, strict=True)
        if r.arch is not None
    ]  # fmt: skip
    plot_pareto(
        [(f["cost"], f["score"]) for f in frontier],
        picks,
        out / "pareto.png",
        cost_label=f"{cost_label}: {outcome.cost_label}",
        score_label=score_label,
        title=f"{space.name}: {outcome.method} search",
    )
    atomic_write_json(out / "search.json", doc)
    return doc


def target_record(r: Any, outcome: Any, job: SearchJob) -> dict[str, Any]:
    """One target's JSON object (what ``search --json`` prints per target)."""
    ms = outcome.unit == "ms"
    item: dict[str, Any] = {
        ("target_ms" if ms else "target_mmacs"): r.target,
        "feasible": r.feasible,
        "arch": None if r.arch is None else r.arch.to_ofa(),
        "key": None if r.arch is None else r.arch.key(),
        ("predicted_accuracy" if not outcome.score_is_proxy else "proxy_score_mmacs"): (
            None if r.arch is None else r.score
        ),
        ("predicted_latency_ms" if ms else "mmacs"): None if r.arch is None else r.cost,
        "search_seconds": r.seconds,
        "accuracy_source": outcome.score_label,
        "constraint_source": outcome.cost_label,
        "method": outcome.method,
    }
    if not r.feasible:
        item["message"] = r.message
    return item
