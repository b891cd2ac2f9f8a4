"""How well a table predicts end-to-end latency: metrics, calibration, the validate loop."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compofa_bench.errors import LutError
from compofa_bench.lut.table import Calibration, LatencyTable
from compofa_bench.ranking import kendall_tau_b, spearman

if TYPE_CHECKING:
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.spaces import Arch


def metrics(predicted_ms: Sequence[float], measured_ms: Sequence[float]) -> dict[str, float]:
    """Errors of ``predicted`` against ``measured`` (both ms, same order)."""
    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    if p.shape != m.shape or p.ndim != 1 or len(p) == 0:
        raise LutError("metrics need two non-empty arrays of the same length")
    rel = (p - m) / m
    return {
        "n": len(p),
        "rmse_ms": float(np.sqrt(np.mean((p - m) ** 2))),
        "rmspe": float(np.sqrt(np.mean(rel**2))),
        "mean_pct_error": float(np.mean(rel)),
        "max_abs_pct_error": float(np.max(np.abs(rel))),
        "within_5pct": float(np.mean(np.abs(rel) <= 0.05)),
        "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
        "spearman": spearman(p, m),
        "kendall": kendall_tau_b(p, m),
    }


def fit_calibration(
    predicted_ms: Sequence[float], measured_ms: Sequence[float]
) -> tuple[float, float]:
    """Least-squares ``measured ≈ overhead + scale * predicted`` in relative terms.

    The residuals are weighted by 1/measured so that small and large networks count alike
    (the goals are percentages)."""
    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    if len(p) < 3:
        raise LutError(f"a calibration needs at least 3 archs, got {len(p)}")
    w = 1.0 / m
    a = np.stack([w, p * w], axis=1)
    (overhead, scale), *_ = np.linalg.lstsq(a, m * w, rcond=None)
    return float(overhead), float(scale)


def measure_archs(
    archs: Sequence[Arch],
    device: DeviceSpec,
    table: LatencyTable,
    store_path: str | Path,
    *,
    space: str,
    show_progress: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """End-to-end median latency of ``archs`` at the table's width and batch size, through
    ``profile`` (so archs the store holds are not measured again), and what the run cost."""
    from compofa_bench.profile import profile_archs
    from compofa_bench.store import ResultStore

    batch = int(table.provenance.get("batch_size", device.protocol.batch_size))
    with ResultStore(store_path) as store:
        (run,) = profile_archs(
            archs, [device], store, space=space, base=table.base,
            width_mult=table.width_mult, n_classes=table.n_classes,
            protocol_overrides={"batch_size": batch}, show_progress=show_progress,
        )  # fmt: skip
        failed = run.by_status("failed")
        if failed:
            raise LutError(
                f"{len(failed)} archs failed to measure, e.g. {failed[0].key}: {failed[0].error}"
            )
        found = store.lookup_many(
            [a.key() for a in archs], fingerprint_hash=run.fingerprint_hash,
            protocol_hash=run.protocol_hash, width_mult=table.width_mult, batch_size=batch,
            kind="network",
        )  # fmt: skip
    missing = [a.key() for a in archs if a.key() not in found]
    if missing:
        raise LutError(f"{len(missing)} archs have no measurement (interrupted?); rerun")
    cost = {
        "measured_now": len(run.by_status("ok")),
        "reused": len(run.by_status("skipped")),
        "wall_s": round(run.wall_s, 3),
        "timed_s": round(run.timed_s, 3),
        "prepare_s": {k: round(v, 3) for k, v in run.prepare_totals().items()},
    }
    return np.array([found[a.key()] for a in archs]), cost


def validate_table(
    lut_path: str | Path,
    device: str | Path | DeviceSpec,
    space_name: str = "compofa",
    n_sample: int = 50,
    n_calibrate: int = 0,
    seed: int = 0,
    store_path: str | Path = "results.db",
    plot: str | Path | None = None,
    show_progress: bool = True,
    resolutions: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Measure ``n_sample`` random archs end to end and compare with the table.

    With ``n_calibrate`` > 0, that many *other* archs are measured too, a calibration is fitted
    on them, evaluated on the ``n_sample`` validation archs, and stored in the table file."""
    from compofa_bench import spaces
    from compofa_bench.devices import DeviceSpec, load_device

    if n_sample < 2:
        raise LutError("--sample must be at least 2")
    if n_calibrate < 0 or 0 < n_calibrate < 3:
        raise LutError("--calibrate needs at least 3 archs (or 0 for none)")
    table = LatencyTable.load(lut_path)
    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    space = spaces.get(space_name)
    # Validate where the table claims to work: every resolution it holds (unless narrowed).
    space = space.with_resolutions(resolutions or table.resolutions)
    rng = np.random.default_rng(seed)
    archs = space.sample_many(n_sample + n_calibrate, rng)
    missing = table.missing_keys(archs)
    if missing:
        raise LutError(
            f"the table lacks {len(missing)} layers of space {space.name}, e.g. {missing[0]}"
        )
    val, cal = archs[:n_sample], archs[n_sample:]
    measured, cost = measure_archs(
        archs, spec, table, store_path, space=space.name, show_progress=show_progress
    )
    m_val, m_cal = measured[:n_sample], measured[n_sample:]
    raw_val = table.predict_ms(val, calibrated=False)
    report: dict[str, Any] = {
        "lut": str(lut_path),
        "device": spec.name,
        "space": space.name,
        "resolutions": list(space.resolutions),
        "n": n_sample,
        "seed": seed,
        "table_device": table.provenance.get("device"),
        "measurement": cost,
        "uncalibrated": metrics(raw_val, m_val),
        "archs": [
            {"key": a.key(), "predicted_ms": float(p), "measured_ms": float(m)}
            for a, p, m in zip(val, raw_val, m_val, strict=True)
        ],
    }
    calibrated = None
    if n_calibrate:
        raw_cal = table.predict_ms(cal, calibrated=False)
        overhead, scale = fit_calibration(raw_cal, m_cal)
        c_tmp = Calibration(overhead, scale, n_calibrate)
        calibrated = c_tmp.apply(raw_val)
        figures = metrics(calibrated, m_val)
        calib = Calibration(
            overhead_ms=overhead, scale=scale, fitted_on=n_calibrate,
            validation={**figures, "device": spec.name, "seed": seed,
                        "fit_set_metrics_uncalibrated": metrics(raw_cal, m_cal)},
        )  # fmt: skip
        table.with_calibration(calib).save(lut_path)
        report["calibrated"] = figures
        report["calibration"] = {"overhead_ms": overhead, "scale": scale, "fitted_on": n_calibrate}
        for row, c in zip(report["archs"], calibrated, strict=True):
            row["calibrated_ms"] = float(c)
    if plot is not None:
        from compofa_bench.lut.plot import scatter

        scatter(
            raw_val,
            m_val,
            plot,
            calibrated=calibrated,
            title=f"{Path(lut_path).name} on {spec.name} ({n_sample} archs)",
        )
        report["plot"] = str(plot)
    return report
