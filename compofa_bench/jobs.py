"""The one place that wires a job: names are resolved here, once, at the top.

Below the top of each job, code receives objects, never names: a
:class:`~compofa_bench.devices.DeviceSpec`, an OPEN adapter, an open
:class:`~compofa_bench.store.ResultStore`, a loaded lookup table or predictor. Each resource is
opened once per job and closed when the job ends, so a measured-latency search on a phone
connects once, not once per batch of new archs.

Two jobs live here:

- the search job (:class:`SearchJob`, :func:`run_search_job`): what ``compofa-bench search``
  does: search every target, write the out dir, export and measure the winners;
- the demo (:class:`DemoConfig`, :func:`run_demo`): the main job end to end on one device:
  profile, build a lookup table, validate it, search per latency target, export the winners
  and measure them again. Every step is the same library call its own command makes
  (``profile``, ``lut build``, ``lut validate``, ``search --export``), chained on one results
  store so that nothing is measured twice and a rerun resumes where an interrupted one stopped.

Checks of which command-line flags go together live in the CLI; the errors raised here name
what is missing, not a flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compofa_bench import devices, sources, spaces, verdict
from compofa_bench import search as S
from compofa_bench.adapters import open_adapter
from compofa_bench.adapters.base import Adapter
from compofa_bench.devices import DeviceSpec
from compofa_bench.errors import SearchError
from compofa_bench.export import SUFFIX, SubnetBuilder, SubnetSource, export_arch, measure_artifact
from compofa_bench.fileio import atomic_write_json
from compofa_bench.netspec import NetSpec
from compofa_bench.progress import ProgressEvent, ProgressFn, report
from compofa_bench.spaces import SearchSpace
from compofa_bench.store import ResultStore

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

    def __post_init__(self) -> None:
        n_sources = sum([self.lut is not None, self.macs, self.measure_latency])
        if n_sources != 1:
            raise SearchError(
                "a search job needs exactly one constraint source: a lookup table, MACs or "
                "latency measured on a device"
            )
        if (self.predictor is None) == (self.accuracy_proxy is None):
            raise SearchError(
                "a search job needs exactly one accuracy source: a predictor file or the MACs proxy"
            )
        if self.accuracy_proxy not in (None, "macs"):
            raise SearchError(f"unknown accuracy proxy {self.accuracy_proxy!r} (only 'macs')")
        if self.measure_latency and not self.device:
            raise SearchError("measuring latency during the search needs a device")


def measure_exported(
    module: Any, arch: spaces.Arch, device: str, store_path: str, source: SubnetSource
) -> dict[str, Any]:
    """``export --device``: resolve the device, open it and the store, measure ``module``."""
    spec = devices.load_device(device)
    with open_adapter(spec) as adapter, ResultStore(store_path) as store:
        return measure_artifact(module, arch, spec, adapter, store, source)


def _device(device: str | DeviceSpec) -> DeviceSpec:
    return device if isinstance(device, DeviceSpec) else devices.load_device(device)


def _target_dir(out: Path, target: float, unit: str) -> Path:
    return out / f"target_{target:g}{'ms' if unit == 'ms' else 'mmacs'}"


def run_search_job(job: SearchJob, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Search every target, write the out dir, export and measure winners when asked.

    Writes ``search.json`` (everything), ``pareto.json``/``pareto.png`` and per target a
    ``target_<T>ms/`` folder with ``arch.json`` (OFA dict), ``result.json`` and the artifact.
    Returns the ``search.json`` content. ``progress`` hears of the evolution's generations
    (task ``evolution``), each measured batch (the device's name) and each export (``export``).

    Names are resolved here, once (space, device, table, predictor); the device's adapter and
    the results store are opened once and stay open for the whole search and the exports, so a
    measured-latency search on a phone connects once, not once per batch of new archs.
    """
    # a device is opened only when something is measured on it (as before: a device given to a
    # search that neither measures nor exports is not looked at)
    uses_device = job.device and (job.measure_latency or job.export)
    spec = _device(job.device) if uses_device else None
    with contextlib.ExitStack() as stack:
        adapter = store = None
        if spec is not None:
            adapter = stack.enter_context(open_adapter(spec))
            store = stack.enter_context(ResultStore(job.store))
        space, cost, accuracy = _sources(job, spec, adapter, store, progress)
        return search_job(job, space, cost, accuracy, spec, adapter, store, progress)


def _sources(
    job: SearchJob,
    spec: DeviceSpec | None,
    adapter: Adapter | None,
    store: ResultStore | None,
    progress: ProgressFn | None = None,
) -> tuple[SearchSpace, Any, Any]:
    """The job's space (narrowed to the resolutions its table or predictor knows) and its
    constraint and accuracy sources."""
    space = spaces.get(job.space, job.resolutions)
    w = job.source.width_mult
    if job.lut is not None:
        cost: Any = sources.LutLatency.from_file(job.lut, w, job.allow_width_mismatch)
        if job.resolutions is None:
            common = [r for r in space.resolutions if r in cost.table.resolutions]
            if not common:
                raise SearchError(
                    f"the table's resolutions {list(cost.table.resolutions)} and space "
                    f"{space.name}'s {list(space.resolutions)} have none in common: choose "
                    "resolutions the table has"
                )
            space = space.with_resolutions(common)
    elif job.macs:
        cost = sources.MacsLatency(w, job.source.base, job.source.n_classes)
    else:
        assert spec is not None and adapter is not None and store is not None
        cost = sources.MeasuredLatency(
            spec,
            adapter,
            store,
            job.source.net.replace(checkpoint=None),  # weights do not change latency
            space=space.name,
            progress=progress,
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
                    f"search's {list(space.resolutions)}: choose resolutions it knows"
                )
            space = space.with_resolutions(known)
        accuracy: Any = sources.PredictorAccuracy(pred)
    else:  # the MACs proxy (SearchJob checked)
        accuracy = sources.MacsProxy(space, w, job.source.n_classes)
    return space, cost, accuracy


def search_job(
    job: SearchJob,
    space: SearchSpace,
    cost: Any,
    accuracy: Any,
    spec: DeviceSpec | None,
    adapter: Adapter | None,
    store: ResultStore | None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """The search job on resolved, open objects (see :func:`run_search_job`)."""
    w = job.source.width_mult
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
        progress=None if progress is None else _generations(progress),
    )
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unit = outcome.unit
    builder = SubnetBuilder(job.source) if job.export else None
    targets_out = []
    exported, n_export = 0, sum(r.arch is not None for r in outcome.results)
    for r in outcome.results:
        item = target_record(r, outcome, job)
        if r.arch is not None:
            tdir = _target_dir(out, r.target, unit)
            atomic_write_json(tdir / "arch.json", r.arch.to_ofa())
            if job.export and builder is not None:
                res = export_arch(
                    r.arch, job.export, tdir / f"model{SUFFIX[job.export]}", job.source, builder
                )
                if spec is not None and adapter is not None and store is not None:
                    module, _ = builder.extract(r.arch)
                    res.measured = measure_artifact(
                        module, r.arch, spec, adapter, store, job.source, job.run
                    )
                item["export"] = res.to_dict()
                if res.measured is not None:
                    item["measured_latency_ms"] = res.measured["median_ms"]
                    item["measured_device"] = res.measured["device"]
                    if unit == "ms":
                        v = verdict.check(r.target, r.cost, res.measured, job.tolerance)
                        item["verdict"] = v.to_dict()
                exported += 1
                report(progress, ProgressEvent("export", exported, n_export, item["key"]))
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


def _generations(progress: ProgressFn) -> Callable[[int, int], None]:
    """The search's ``(done, total)`` generation callback as progress events."""
    return lambda done, total: progress(
        ProgressEvent("evolution", done, total, f"generation {done}", finished=done == total)
    )


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


# =============================================================================== demo


@dataclass(frozen=True)
class DemoConfig:
    """The demo's choices. The default device is ``cpu-ort-1t`` pinned to the host's quietest
    core (``pin_quietest``): one thread on one core is what another busy process disturbs
    least (on a 2-core host the other process gets the other core), and its contention is
    measured on that core alone. Every end-to-end measurement takes 3 interleaved ``rounds``;
    ``tolerance`` is the share by which a re-measured winner may exceed its target."""

    out_dir: str = "out/demo"
    device: str = "cpu-ort-1t"
    space: str = "compofa"
    resolutions: tuple[int, ...] = (160, 224)
    sample: int = 8
    seed: int = 0
    #: latency targets in ms; None picks three from the table's range (25/50/75% quantiles)
    targets: tuple[float, ...] | None = None
    #: a predictor file (the project's own, or OFA's); None: the shipped Fashion-MNIST
    #: predictor (SHIPPED_PREDICTOR) when present and real, else MACs, labelled a proxy
    predictor: str | None = None
    #: "macs": rank by MACs (a proxy) even when a predictor is available
    accuracy_proxy: str | None = None
    #: a trained supernet (``compofa-bench train`` final.pt or an OFA .pth): the exported
    #: winners carry its weights (BN recalibrated) instead of random ones
    checkpoint: str | None = None
    #: classes of ``checkpoint``'s head (10: Fashion-MNIST)
    n_classes: int = 10
    #: BN recalibration data for ``checkpoint``'s subnets
    calib_data: str = "fashion-mnist"
    export: str = "onnx"
    rounds: int = 3
    tolerance: float = 0.10
    pin_quietest: bool = True
    wait_idle_s: float = 0.0
    wait: bool = True
    accept_unstable: bool = False

    @property
    def store(self) -> str:
        return str(Path(self.out_dir) / "results.db")

    @property
    def lut(self) -> str:
        return str(Path(self.out_dir) / "lut.json")


#: The accuracy predictor the project ships: trained by benchmarks/train_reproduction.py on the
#: CompOFA supernet's measured Fashion-MNIST top-1 (predictors/fashion-mnist/README.md).
SHIPPED_PREDICTOR = (
    Path(__file__).resolve().parents[1] / "predictors" / "fashion-mnist" / "predictor.pt"
)


def accuracy_source(cfg: DemoConfig) -> tuple[str | None, str | None, str]:
    """``(predictor path, proxy name, note)`` for the demo's search: exactly one of the first
    two is set; the note says what ranks the subnets and why."""
    if cfg.accuracy_proxy is not None:
        return None, cfg.accuracy_proxy, "ranked by MACs (a proxy, not an accuracy), as asked"
    if cfg.predictor is not None:
        return cfg.predictor, None, f"ranked by the predictor {cfg.predictor}"
    if SHIPPED_PREDICTOR.is_file():
        from compofa_bench import predictor as P

        pred = P.load(SHIPPED_PREDICTOR)
        if pred.info.get("placeholder"):
            return (
                None,
                "macs",
                f"ranked by MACs (a proxy): {SHIPPED_PREDICTOR} is a placeholder from a CPU "
                "smoke run, not a trained result",
            )
        return (
            str(SHIPPED_PREDICTOR),
            None,
            "ranked by predicted Fashion-MNIST top-1 (the shipped predictor; trained at "
            f"{'/'.join(map(str, pred.encoder.resolutions))} px, the search's resolutions "
            "enter by rank order)",
        )
    return None, "macs", "ranked by MACs (a proxy): no predictor given or shipped"


@dataclass
class DemoResult:
    profile: list[Any]
    table_summary: dict[str, Any]
    validation: dict[str, Any]
    targets: tuple[float, ...]
    search: dict[str, Any]
    accuracy_note: str = ""
    #: ``verdict.table_verdict`` of the validation, and where the device was pinned
    table_verdict: dict[str, Any] | None = None
    pinned_cpu: int | None = None


def auto_targets(lut_path: str, space_name: str, resolutions: tuple[int, ...]) -> tuple[float, ...]:
    """Three targets spread over the space's predicted latencies, so every one is feasible and
    they bind at different places."""
    from compofa_bench.lut import LatencyTable

    table = LatencyTable.load(lut_path)
    space = spaces.get(space_name, resolutions)
    if not space.is_enumerable(100_000):
        sample = space.sample_many(2_000, np.random.default_rng(0))
    else:
        sample = list(space.enumerate())
    lat = table.predict_ms(sample)
    return tuple(round(float(q), 2) for q in np.quantile(lat, [0.25, 0.5, 0.75]))


def run_demo(
    cfg: DemoConfig,
    step: Callable[[str], None] = lambda _msg: None,
    progress: ProgressFn | None = None,
) -> DemoResult:
    """The demo on one device, which is opened once for the profile, the table and the search
    (the table's validation opens its own, as ``lut validate`` does)."""
    from compofa_bench.host_load import quietest_cpu
    from compofa_bench.lut.build import build_table
    from compofa_bench.profile import profile_archs, select_archs
    from compofa_bench.timing_run import RunOptions, device_cpus

    run = RunOptions(
        rounds=cfg.rounds,
        wait_idle_s=cfg.wait_idle_s,
        wait=cfg.wait,
        accept_unstable=cfg.accept_unstable,
    )
    verdict.check_tolerance(cfg.tolerance)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    device = devices.load_device(cfg.device)
    pinned = None
    if cfg.pin_quietest and _one_thread_cpu(device):
        pinned = _pinned_cpu(Path(cfg.out_dir), device_cpus(device), quietest_cpu)
        device = device.with_options(affinity=[pinned])
        step(f"pinning {device.name} to CPU {pinned}, the quietest core when this demo began")
    space = spaces.get(cfg.space, cfg.resolutions)

    step(f"1/4 profile {cfg.sample} random {space.name} archs at {list(space.resolutions)}")
    # validate_table draws its archs the same way, so step 3 reuses these measurements.
    archs = select_archs(space.name, sample=cfg.sample, seed=cfg.seed, resolutions=cfg.resolutions)
    with contextlib.ExitStack() as stack:
        adapter = stack.enter_context(open_adapter(device))
        with ResultStore(cfg.store) as store:
            summaries = profile_archs(
                archs,
                [device],
                store,
                space=space.name,
                net=NetSpec(space.base),
                progress=progress,
                adapters=[adapter],
                run=run,
            )

        step(f"2/4 build the per-layer lookup table of {space.name} on {device.name}")
        _table, table_summary = build_table(
            device,
            space,
            store_path=cfg.store,
            out=cfg.lut,
            progress=progress,
            adapter=adapter,
            run=run.replace(rounds=1),
        )
        validation, targets, doc, note = _demo_search(
            cfg, device, adapter, space, step, progress, run
        )
    tv = verdict.table_verdict(validation, cfg.tolerance)
    return DemoResult(
        summaries, table_summary, validation, targets, doc,
        accuracy_note=note, table_verdict=tv, pinned_cpu=pinned,
    )  # fmt: skip


def _demo_search(
    cfg: DemoConfig,
    device: DeviceSpec,
    adapter: Adapter,
    space: SearchSpace,
    step: Callable[[str], None],
    progress: ProgressFn | None,
    run: Any,
) -> tuple[dict[str, Any], tuple[float, ...], dict[str, Any], str]:
    """Steps 3 and 4 of the demo: validate the table, then search, export and measure.
    Returns the validation, the targets, the search document and the accuracy note."""
    from compofa_bench.lut.validate import validate_table

    step("3/4 validate the table against the end-to-end measurements")
    validation = validate_table(
        cfg.lut,
        device,
        space_name=space.name,
        n_sample=cfg.sample,
        seed=cfg.seed,
        store_path=cfg.store,
        plot=Path(cfg.out_dir) / "lut_validation.png",
        progress=progress,
        run=run,
    )

    targets = cfg.targets or auto_targets(cfg.lut, space.name, cfg.resolutions)
    if not targets:
        raise SearchError("no latency targets")
    predictor, proxy, note = accuracy_source(cfg)
    step(
        f"4/4 search {space.name} for targets {list(targets)} ms ({note}), export to "
        f"{cfg.export} and measure the winners on {device.name}"
    )
    source = (
        SubnetSource(
            checkpoint=cfg.checkpoint,
            n_classes=cfg.n_classes,
            calib_data=cfg.calib_data,
            seed=cfg.seed,
        )
        if cfg.checkpoint
        else SubnetSource()
    )
    job = SearchJob(
        space=space.name,
        targets=tuple(targets),
        out_dir=str(Path(cfg.out_dir) / "search"),
        lut=cfg.lut,
        predictor=predictor,
        accuracy_proxy=proxy,
        map_predictor_resolutions=True,
        source=source,
        resolutions=cfg.resolutions,
        seed=cfg.seed,
        export=cfg.export,
        device=device,
        store=cfg.store,
        tolerance=cfg.tolerance,
        run=run,
    )
    with ResultStore(cfg.store) as store:
        space, cost, accuracy = _sources(job, device, adapter, store, progress)
        doc = search_job(job, space, cost, accuracy, device, adapter, store, progress)
    return validation, tuple(targets), doc, note


def _pinned_cpu(out_dir: Path, cpus: tuple[int, ...], choose: Callable[..., int]) -> int:
    """The core this demo's folder was pinned to (the affinity is part of the device's
    fingerprint, so a rerun must keep it to resume), else the quietest core now."""
    import json

    from compofa_bench.fileio import atomic_write_text

    path = out_dir / "pinned_cpu.json"
    try:
        cpu = int(json.loads(path.read_text())["cpu"])
        if cpu in cpus:
            return cpu
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet (or unreadable): choose again
    cpu = choose(cpus)
    atomic_write_text(path, json.dumps({"cpu": cpu}) + "\n")
    return cpu


def _one_thread_cpu(device: Any) -> bool:
    """A one-thread ONNX Runtime CPU device not already pinned (what the demo pins)."""
    o = device.options
    return device.adapter == "cpu-ort" and o.get("threads") == 1 and not o.get("affinity")
