"""Extract a chosen subnet, export it (ONNX, TFLite, TensorRT), check it, time it.

The chain a search winner goes through: build the supernet, load a checkpoint (OFA, CompOFA or
our own), extract the static subnet, optionally recalibrate its BatchNorm statistics on a few
training batches, export, and compare the exported model with PyTorch on the same input (the
max abs difference is reported and must stay within a tolerance). With a device, the artifact's
latency is measured there next to the prediction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compofa_bench.errors import ExportError, MissingDependencyError
from compofa_bench.netspec import NetSpec
from compofa_bench.spaces import Arch

if TYPE_CHECKING:
    from compofa_bench.adapters.base import Adapter
    from compofa_bench.devices import DeviceSpec
    from compofa_bench.store import ResultStore

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
    def net(self) -> NetSpec:
        """The supernet the subnet is cut from."""
        return NetSpec(self.base, self.width_mult, self.n_classes, self.checkpoint)

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
    spec: DeviceSpec,
    adapter: Adapter,
    store: ResultStore,
    source: SubnetSource = SubnetSource(),
    run: Any = None,
) -> dict[str, Any]:
    """Latency of ``module`` on the device ``spec`` through its open ``adapter`` (which builds
    its own runtime artifact from the same module: ONNX for cpu-ort, TFLite for phones, an
    engine for GPUs), written to ``store``. The caller opens and closes both
    (:mod:`compofa_bench.jobs`). ``run``: a :class:`~compofa_bench.timing_run.RunOptions`
    (default: 3 rounds, as every check of a prediction)."""
    from compofa_bench import profile
    from compofa_bench.timing_run import CHECK_ROUNDS, RunOptions

    summaries = profile.profile_archs(
        [arch],
        [spec],
        store,
        net=source.net,
        skip_done=False,
        build_module=lambda _a: module,
        adapters=[adapter],
        run=run or RunOptions(rounds=CHECK_ROUNDS),
    )
    s = summaries[0].to_dict()
    row = next((r for r in s["results"] if r["key"] == arch.key()), None)
    if row is None or row["median_ms"] is None:
        err = row["error"] if row else "no result"
        raise ExportError(f"measuring on {spec.name} failed: {err}")
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
