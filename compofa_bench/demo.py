"""The main job, end to end on one device: profile, build a lookup table, validate it, search
per latency target, export the winners and measure them again.

Every step is the same library call its own command makes (``profile``, ``lut build``,
``lut validate``, ``search --export``), chained on one results store so that nothing is
measured twice and a rerun resumes where an interrupted one stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compofa_bench.errors import SearchError


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
    from compofa_bench import spaces
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
    cfg: DemoConfig, step: Callable[[str], None] = lambda _msg: None, show_progress: bool = True
) -> DemoResult:
    from compofa_bench import spaces, verdict
    from compofa_bench.devices import load_device
    from compofa_bench.export import SearchJob, run_search_job
    from compofa_bench.host_load import quietest_cpu
    from compofa_bench.lut.build import build_table
    from compofa_bench.lut.validate import validate_table
    from compofa_bench.profile import profile_archs, select_archs
    from compofa_bench.store import ResultStore
    from compofa_bench.timing_run import RunOptions, device_cpus

    run = RunOptions(
        rounds=cfg.rounds,
        wait_idle_s=cfg.wait_idle_s,
        wait=cfg.wait,
        accept_unstable=cfg.accept_unstable,
    )
    verdict.check_tolerance(cfg.tolerance)
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    device = load_device(cfg.device)
    pinned = None
    if cfg.pin_quietest and _one_thread_cpu(device):
        pinned = _pinned_cpu(Path(cfg.out_dir), device_cpus(device), quietest_cpu)
        device = device.with_options(affinity=[pinned])
        step(f"pinning {device.name} to CPU {pinned}, the quietest core when this demo began")
    space = spaces.get(cfg.space, cfg.resolutions)

    step(f"1/4 profile {cfg.sample} random {space.name} archs at {list(space.resolutions)}")
    # validate_table draws its archs the same way, so step 3 reuses these measurements.
    archs = select_archs(space.name, sample=cfg.sample, seed=cfg.seed, resolutions=cfg.resolutions)
    with ResultStore(cfg.store) as store:
        summaries = profile_archs(
            archs, [device], store, space=space.name, base=space.base,
            show_progress=show_progress, run=run,
        )  # fmt: skip

    step(f"2/4 build the per-layer lookup table of {space.name} on {device.name}")
    _table, table_summary = build_table(
        device, space, store_path=cfg.store, out=cfg.lut, show_progress=show_progress,
        run=run.replace(rounds=1),
    )  # fmt: skip

    step("3/4 validate the table against the end-to-end measurements")
    validation = validate_table(
        cfg.lut,
        device,
        space_name=space.name,
        n_sample=cfg.sample,
        seed=cfg.seed,
        store_path=cfg.store,
        plot=Path(cfg.out_dir) / "lut_validation.png",
        show_progress=show_progress,
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
    from compofa_bench.export import SubnetSource

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
    doc = run_search_job(job)
    tv = verdict.table_verdict(validation, cfg.tolerance)
    return DemoResult(
        summaries, table_summary, validation, tuple(targets), doc,
        accuracy_note=note, table_verdict=tv, pinned_cpu=pinned,
    )  # fmt: skip


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
