"""How well a table predicts end-to-end latency: metrics, calibration, the validate loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from compofa_bench.errors import LutError
from compofa_bench.lut.table import Calibration, LatencyTable
from compofa_bench.netspec import NetSpec
from compofa_bench.ranking import kendall_tau_b, spearman

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.progress import ProgressFn
    from compofa_bench.spaces import Arch, SearchSpace


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


def bias_by_resolution(
    predicted_ms: Sequence[float], measured_ms: Sequence[float], resolutions: Sequence[int]
) -> dict[int, dict[str, float]]:
    """Mean signed relative error of ``predicted`` per resolution: ``{r: {"n", "mean_pct_error"}}``.

    A global calibration cannot remove a bias that differs between resolutions; this shows it."""
    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    r = np.asarray(resolutions, dtype=np.int64)
    if not (p.shape == m.shape == r.shape) or p.ndim != 1:
        raise LutError("bias_by_resolution needs three arrays of the same length")
    rel = (p - m) / m
    return {
        int(x): {"n": int(np.sum(r == x)), "mean_pct_error": float(np.mean(rel[r == x]))}
        for x in np.unique(r)
    }


@overload
def fit_calibration(
    predicted_ms: Sequence[float], measured_ms: Sequence[float]
) -> tuple[float, float]: ...


@overload
def fit_calibration(
    predicted_ms: Sequence[float], measured_ms: Sequence[float], resolutions: Sequence[int]
) -> Calibration: ...


def fit_calibration(
    predicted_ms: Sequence[float],
    measured_ms: Sequence[float],
    resolutions: Sequence[int] | None = None,
) -> tuple[float, float] | Calibration:
    """Weighted least squares ``measured ≈ overhead + scale_r * predicted``.

    The residuals are weighted by 1/measured so that small and large networks count alike
    (the goals are percentages).

    Without ``resolutions``: the global form, returned as ``(overhead, scale)``. With the archs'
    ``resolutions``: a :class:`Calibration` with one shared overhead and one scale per
    resolution when every resolution present has at least 2 archs (and the fit is
    determined), else the global form (``Calibration.form`` says which). Its ``scale`` is then
    the best single scale for the shared overhead, used for resolutions the fit did not see.
    ``fitted_on`` is the number of archs; ``validation`` is left empty."""
    p = np.asarray(predicted_ms, dtype=float)
    m = np.asarray(measured_ms, dtype=float)
    if p.shape != m.shape or p.ndim != 1:
        raise LutError("a calibration needs predicted and measured arrays of the same length")
    if len(p) < 3:
        raise LutError(f"a calibration needs at least 3 archs, got {len(p)}")
    w = 1.0 / m
    a = np.stack([w, p * w], axis=1)
    (overhead, scale), *_ = np.linalg.lstsq(a, m * w, rcond=None)
    if resolutions is None:
        return float(overhead), float(scale)
    r = np.asarray(resolutions, dtype=np.int64)
    if r.shape != p.shape:
        raise LutError(f"{len(p)} archs but {r.size} resolutions: give one resolution per arch")
    u, counts = np.unique(r, return_counts=True)
    glob = Calibration(float(overhead), float(scale), len(p))
    if counts.min() < 2:
        return glob
    cols = [w] + [np.where(r == x, p * w, 0.0) for x in u]
    a = np.stack(cols, axis=1)
    if np.linalg.matrix_rank(a) < a.shape[1]:  # e.g. two archs with the same layer sum
        return glob
    coef, *_ = np.linalg.lstsq(a, m * w, rcond=None)
    overhead = float(coef[0])
    # closed-form weighted least squares of one scale with the overhead held fixed
    pooled = float(np.sum(w**2 * p * (m - overhead)) / np.sum(w**2 * p**2))
    return Calibration(
        overhead_ms=overhead,
        scale=pooled,
        fitted_on=len(p),
        scale_by_resolution={int(x): float(c) for x, c in zip(u, coef[1:], strict=True)},
    )


def interleave_order(n_first: int, n_second: int) -> np.ndarray:
    """A permutation of ``range(n_first + n_second)`` that spreads the second block (indices
    ``n_first..``) evenly through the first, keeping each block's own order.

    Measuring two sets one after the other lets machine drift (thermal state, background
    load) bias one against the other; interleaved, both see the same drift."""
    pos = np.concatenate(
        [
            (np.arange(n_first) + 0.5) / max(n_first, 1),
            (np.arange(n_second) + 0.5) / max(n_second, 1),
        ]
    )
    return np.argsort(pos, kind="stable")


def measure_archs(
    archs: Sequence[Arch],
    device: DeviceSpec,
    store_path: str | Path,
    *,
    space: str,
    base: str,
    width_mult: float,
    n_classes: int,
    batch_size: int,
    adapter: Adapter | None = None,
    progress: ProgressFn | None = None,
    run: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """End-to-end median latency of ``archs`` (in order), through ``profile`` (so archs the
    store holds are not measured again), and what the run cost. ``run``: a
    :class:`~compofa_bench.timing_run.RunOptions` (default: one round); ``cost["contended"]``
    lists the archs whose measurement was contended by other processes."""
    from compofa_bench.profile import profile_archs
    from compofa_bench.store import ResultStore
    from compofa_bench.timing_run import RunOptions

    with ResultStore(store_path) as store:
        (run,) = profile_archs(
            archs, [device], store, space=space,
            net=NetSpec(base, width_mult, n_classes),
            protocol_overrides={"batch_size": batch_size}, progress=progress,
            adapters=None if adapter is None else [adapter],
            run=run or RunOptions(),
        )  # fmt: skip
        failed = run.by_status("failed")
        if failed:
            raise LutError(
                f"{len(failed)} archs failed to measure, e.g. {failed[0].key}: {failed[0].error}"
            )
        found = store.lookup_many(
            [a.key() for a in archs], fingerprint_hash=run.fingerprint_hash,
            protocol_hash=run.protocol_hash, width_mult=width_mult, batch_size=batch_size,
            kind="network",
        )  # fmt: skip
        rows = [
            store.lookup(a.key(), fingerprint_hash=run.fingerprint_hash, batch_size=batch_size,
                         protocol_hash=run.protocol_hash, width_mult=width_mult)
            for a in archs
        ]  # fmt: skip
    contended = [r["workload_key"] for r in rows if r and r.get("contended")]
    missing = [a.key() for a in archs if a.key() not in found]
    if missing:
        raise LutError(f"{len(missing)} archs have no measurement (interrupted?); rerun")
    cost = {
        "measured_now": len(run.by_status("ok")),
        "reused": len(run.by_status("skipped")),
        "wall_s": round(run.wall_s, 3),
        "timed_s": round(run.timed_s, 3),
        "prepare_s": {k: round(v, 3) for k, v in run.prepare_totals().items()},
        "contended": contended,
        "noise_floor": run.noise_floor,
    }
    return np.array([found[a.key()] for a in archs]), cost


def measure_for_table(
    archs: Sequence[Arch],
    device: DeviceSpec,
    table: LatencyTable,
    store_path: str | Path,
    *,
    space: str,
    progress: ProgressFn | None = None,
    adapter: Adapter | None = None,
    run: Any = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`measure_archs` at the table's base, width, classes and batch size."""
    batch = int(table.provenance.get("batch_size", device.protocol.batch_size))
    return measure_archs(
        archs, device, store_path, space=space, base=table.base, width_mult=table.width_mult,
        n_classes=table.n_classes, batch_size=batch, progress=progress,
        adapter=adapter, run=run,
    )  # fmt: skip


def validate_table(
    lut_path: str | Path,
    device: str | Path | DeviceSpec,
    space_name: str = "compofa",
    n_sample: int = 50,
    n_calibrate: int = 0,
    seed: int = 0,
    store_path: str | Path = "results.db",
    plot: str | Path | None = None,
    progress: ProgressFn | None = None,
    resolutions: Sequence[int] | None = None,
    out: str | Path | None = None,
    strict: bool = False,
    run: Any = None,
) -> dict[str, Any]:
    """Measure ``n_sample`` random archs end to end and compare with the table.

    Measured in 3 interleaved rounds unless ``run`` says otherwise; every arch's
    measured/predicted ratio is in ``report["archs"]`` and the archs whose measurement was
    contended by other processes in ``report["measurement"]["contended"]``.

    With ``n_calibrate`` > 0, that many *other* archs are measured too (interleaved in time
    with the validation archs), a calibration is fitted on them (one scale per resolution when
    each has at least 2 of them, see :func:`fit_calibration`) and evaluated on the ``n_sample``
    validation archs. The calibrated table (recording the device it was fitted on) is written
    to ``out`` when given, never over ``lut_path``; without ``out`` nothing is written and the
    calibration is only reported. ``report["bias_by_resolution"]`` holds the mean signed error
    per resolution, uncalibrated and calibrated.

    A table (or a calibration) from a device other than ``device``, or a table of the same
    device name whose fingerprint (host CPU, cores, OS, runtime and settings) differs from the
    device's now, gives a line in ``report["warnings"]``, or a LutError under ``strict``
    (before anything is measured)."""
    from compofa_bench.adapters import open_adapter
    from compofa_bench.devices import DeviceSpec, load_device
    from compofa_bench.lut.provenance import device_mismatches, enforce, fingerprint_mismatches
    from compofa_bench.profile import device_fingerprint

    if n_sample < 2:
        raise LutError("--sample must be at least 2")
    if n_calibrate < 0 or 0 < n_calibrate < 3:
        raise LutError("--calibrate needs at least 3 archs (or 0 for none)")

    if out is not None and Path(out).resolve() == Path(lut_path).resolve():
        raise LutError(
            f"--out {out} is the input table: a calibration is written to another file, "
            "never over the table it was fitted for"
        )
    table = LatencyTable.load(lut_path)
    spec = device if isinstance(device, DeviceSpec) else load_device(device)
    warnings = enforce(device_mismatches(table, spec.name, str(lut_path)), strict)
    adapter = open_adapter(spec)
    try:
        if table.provenance.get("device") == spec.name:  # same name: same host and runtime?
            now = device_fingerprint(adapter, spec.protocol)
            warnings += enforce(fingerprint_mismatches(table, now, str(lut_path)), strict)
        return _validate(
            table, spec, adapter, lut_path, space_name, n_sample, n_calibrate, seed,
            store_path, plot, progress, resolutions, out, warnings, run,
        )  # fmt: skip
    finally:
        adapter.close()


def _validate(
    table: LatencyTable,
    spec: DeviceSpec,
    adapter: Adapter,
    lut_path: str | Path,
    space_name: str,
    n_sample: int,
    n_calibrate: int,
    seed: int,
    store_path: str | Path,
    plot: str | Path | None,
    progress: ProgressFn | None,
    resolutions: Sequence[int] | None,
    out: str | Path | None,
    warnings: list[str],
    run: Any = None,
) -> dict[str, Any]:
    from compofa_bench import spaces
    from compofa_bench.lut.provenance import check_space
    from compofa_bench.timing_run import CHECK_ROUNDS, RunOptions

    space = spaces.get(space_name)
    check_space(table, space, str(lut_path))
    # Validate where the table claims to work: every resolution it holds (unless narrowed).
    space = space.with_resolutions(resolutions or table.resolutions)
    rng = np.random.default_rng(seed)
    archs = space.sample_many(n_sample + n_calibrate, rng)
    fitted = set(table.provenance.get("fit_archs") or [])
    if fitted:
        # a table fitted on end-to-end archs (--method learned) is scored on others only
        archs = _held_out(space, archs, fitted, rng)
    missing = table.missing_keys(archs)
    if missing:
        raise LutError(
            f"the table lacks {len(missing)} layers of space {space.name}, e.g. {missing[0]}"
        )
    # Validation stays archs[:n_sample] (same archs for a seed as before); only the order of
    # measurement interleaves the two sets so that drift cannot bias the calibration.
    val, cal = archs[:n_sample], archs[n_sample:]
    order = interleave_order(n_sample, n_calibrate)
    in_order, cost = measure_for_table(
        [archs[i] for i in order], spec, table, store_path, space=space.name,
        progress=progress, adapter=adapter,
        run=run or RunOptions(rounds=CHECK_ROUNDS),
    )  # fmt: skip
    measured = np.empty(len(archs))
    measured[order] = in_order
    m_val, m_cal = measured[:n_sample], measured[n_sample:]
    r_val = [a.resolution for a in val]
    raw_val = table.predict_ms(val, calibrated=False)
    bias = {
        r: {"n": b["n"], "uncalibrated": b["mean_pct_error"]}
        for r, b in bias_by_resolution(raw_val, m_val, r_val).items()
    }
    report: dict[str, Any] = {
        "lut": str(lut_path),
        "device": spec.name,
        "space": space.name,
        "resolutions": list(space.resolutions),
        "n": n_sample,
        "seed": seed,
        "table_device": table.provenance.get("device"),
        "warnings": warnings,
        "measurement": cost,
        "uncalibrated": metrics(raw_val, m_val),
        "bias_by_resolution": bias,
        "archs": [
            {
                "key": a.key(),
                "predicted_ms": float(p),
                "measured_ms": float(m),
                "measured_over_predicted": float(m / p) if p > 0 else None,
                "contended": a.key() in cost["contended"],
            }
            for a, p, m in zip(val, raw_val, m_val, strict=True)
        ],
    }
    calibrated = None
    if n_calibrate:
        raw_cal = table.predict_ms(cal, calibrated=False)
        r_cal = [a.resolution for a in cal]
        fit = fit_calibration(raw_cal, m_cal, r_cal)
        calibrated = fit.apply(raw_val, r_val)
        figures = metrics(calibrated, m_val)
        for r, b in bias_by_resolution(calibrated, m_val, r_val).items():
            bias[r]["calibrated"] = b["mean_pct_error"]
        counts = {int(x): r_cal.count(x) for x in sorted(set(r_cal))}
        note = _form_note(fit, counts, space.resolutions)
        calib = replace(
            fit,
            device=spec.name,
            validation={**figures, "device": spec.name, "seed": seed,
                        "bias_by_resolution": {str(r): b for r, b in bias.items()},
                        "fit_set_metrics_uncalibrated": metrics(raw_cal, m_cal)},
        )  # fmt: skip
        if out is not None:
            table.with_calibration(calib).save(out)
        report["calibrated"] = figures
        report["calibration"] = {
            "form": fit.form,
            "overhead_ms": fit.overhead_ms,
            "scale": fit.scale,
            "scale_by_resolution": dict(fit.scale_by_resolution),
            "fitted_on": n_calibrate,
            "fit_archs_by_resolution": counts,
            "device": spec.name,
            "note": note,
            "written_to": None if out is None else str(out),
        }
        for row, c in zip(report["archs"], calibrated, strict=True):
            row["calibrated_ms"] = float(c)
    if plot is not None:
        from compofa_bench.lut.plot import scatter

        scatter(
            raw_val,
            m_val,
            plot,
            calibrated=calibrated,
            resolutions=r_val,
            title=f"{Path(lut_path).name} on {spec.name} ({n_sample} archs)",
        )
        report["plot"] = str(plot)
    return report


def _held_out(
    space: SearchSpace, archs: list[Arch], exclude: set[str], rng: np.random.Generator
) -> list[Arch]:
    """``archs`` without those in ``exclude``, topped up with further draws from ``rng``."""
    want = len(archs)
    kept = [a for a in archs if a.key() not in exclude]
    for _ in range(100):
        if len(kept) >= want:
            return kept[:want]
        kept += [a for a in space.sample_many(want, rng) if a.key() not in exclude]
    raise LutError(
        f"space {space.name} has too few archs besides the {len(exclude)} the table was "
        f"fitted on to validate on {want}"
    )


def _form_note(fit: Calibration, counts: dict[int, int], resolutions: Sequence[int]) -> str:
    """Why the calibration has the form it has, for the report."""
    if fit.scale_by_resolution:
        unseen = [r for r in resolutions if r not in counts]
        if unseen:
            return (
                f"one scale per resolution; no calibration archs at {unseen}, which get the "
                f"pooled scale {fit.scale:.4f}"
            )
        return "one scale per resolution"
    few = [r for r, n in counts.items() if n < 2]
    if few:
        return (
            f"global: fewer than 2 calibration archs at resolution(s) {few}; use a larger "
            "--calibrate for one scale per resolution"
        )
    return "global: the per-resolution fit was not determined (archs with equal layer sums)"
