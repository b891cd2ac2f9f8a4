"""Accuracy predictors: an MLP over :mod:`compofa_bench.encoding` features.

Two file formats load through :func:`load`:

- OFA's ``acc_predictor.pth``: a bare state_dict of ``Sequential(Linear(128,400), ReLU,
  Linear(400,400), ReLU, Linear(400,400), ReLU, Linear(400,1))`` over OFA's 128-d encoding.
- The project's own files (written by :meth:`AccuracyPredictor.save` and
  ``compofa-bench predictor train``): one ``torch.save`` dict holding the format tag, the
  encoder config, the hidden sizes, the weights, and the validation figures of training.

Prediction is batched: archs are encoded with numpy and run through one forward pass.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compofa_bench import spaces
from compofa_bench.convert import torch_threads
from compofa_bench.encoding import ArchArrays, Encoder
from compofa_bench.errors import ArchError, PredictorError, SpaceError
from compofa_bench.fileio import atomic_path
from compofa_bench.progress import ProgressEvent, ProgressFn, report
from compofa_bench.ranking import kendall_tau_b, spearman
from compofa_bench.spaces import Arch

FORMAT = "compofa-bench-predictor"
FORMAT_VERSION = 1
OFA_HIDDEN = (400, 400, 400)
ACC_CSV_HEADER = ("space", "key", "resolution", "top1", "arch")


#: Batches up to this many rows are scored on one thread (see predict_features).
SMALL_BATCH = 4096


def build_mlp(in_dim: int, hidden: Sequence[int] = OFA_HIDDEN) -> nn.Sequential:
    """OFA's predictor shape: Linear+ReLU per hidden layer, then a linear head. Module indices
    match OFA's state_dict keys (0, 2, 4, 6)."""
    layers: list[nn.Module] = []
    prev = in_dim
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU()]
        prev = h
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


@dataclass
class AccuracyPredictor:
    """Predicts top-1 accuracy (a fraction) of archs."""

    encoder: Encoder
    model: nn.Sequential
    hidden: tuple[int, ...] = OFA_HIDDEN
    source: str = "project"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()

    @property
    def label(self) -> str:
        """What users see as the accuracy source."""
        return f"predictor:{self.source}"

    @torch.no_grad()
    def predict_features(self, features: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        # A search scores a few hundred rows per call: intra-op threads cost more in wake-ups
        # than they save (20x slower on a loaded 2-core machine), so small batches run on one.
        with torch_threads(1 if len(x) <= SMALL_BATCH else None):
            return self.model(x).squeeze(1).double().numpy()

    def predict(self, archs: Sequence[Arch] | ArchArrays) -> np.ndarray:
        """(n,) predicted top-1 fractions, one forward pass for the whole batch."""
        return self.predict_features(self.encoder.encode(archs))

    # ----------------------------------------------------------------- files
    def save(self, path: str | Path) -> Path:
        """Atomic write of the project's format (encoder, weights, validation figures)."""
        path = Path(path)
        payload = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "encoder": self.encoder.to_dict(),
            "hidden": list(self.hidden),
            "source": self.source,
            "info": json.dumps(self.info),
            "state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        return path


@dataclass
class ResolutionMappedPredictor:
    """A predictor trained at other input sizes, scoring archs at a search's sizes.

    The predictor's resolution input is a one-hot over the sizes it was trained at (the
    Fashion-MNIST predictor: 32 and 40 px). A search at 160/224 px asks about sizes it never
    saw. This maps them by rank: the i-th smallest search resolution is scored as the
    predictor's resolution of the same rank (spread evenly when the counts differ), so the
    predictor ranks the architecture (depth/expand/kernel genes) and resolution enters only
    as "bigger input, more accurate", in the order it measured. The label says so.
    """

    inner: AccuracyPredictor
    mapping: dict[int, int]

    @property
    def encoder(self) -> Encoder:
        return self.inner.encoder

    @property
    def info(self) -> dict[str, Any]:
        return self.inner.info

    @property
    def label(self) -> str:
        pairs = ", ".join(f"{a}->{b}" for a, b in sorted(self.mapping.items()))
        return f"{self.inner.label}; resolution by rank ({pairs} px)"

    def predict(self, archs: Sequence[Arch] | ArchArrays) -> np.ndarray:
        arr = archs if isinstance(archs, ArchArrays) else ArchArrays.from_archs(archs)
        src = np.array(sorted(self.mapping), dtype=np.int64)
        dst = np.array([self.mapping[int(r)] for r in src], dtype=np.int64)
        pos = np.searchsorted(src, arr.r)
        if np.any(pos >= len(src)) or np.any(src[np.minimum(pos, len(src) - 1)] != arr.r):
            bad = sorted(set(arr.r.tolist()) - set(self.mapping))
            raise PredictorError(f"resolution(s) {bad} are not in the mapping {self.mapping}")
        return self.inner.predict(dataclasses.replace(arr, r=dst[pos]))


def map_resolutions(
    pred: AccuracyPredictor, resolutions: Sequence[int]
) -> AccuracyPredictor | ResolutionMappedPredictor:
    """``pred`` itself when it knows every one of ``resolutions``; else the rank mapping
    (:class:`ResolutionMappedPredictor`) onto the resolutions it was trained at."""
    enc = pred.encoder
    wanted = sorted(set(int(r) for r in resolutions))
    if enc.resolution_mode != "onehot" or all(r in enc.resolutions for r in wanted):
        return pred
    known = sorted(enc.resolutions)
    if len(wanted) == 1:
        mapping = {wanted[0]: known[-1]}
    else:
        mapping = {
            r: known[round(i * (len(known) - 1) / (len(wanted) - 1))] for i, r in enumerate(wanted)
        }
    return ResolutionMappedPredictor(pred, mapping)


def load(path: str | Path) -> AccuracyPredictor:
    """Load the project's predictor file or OFA's ``acc_predictor.pth``."""
    from compofa_bench import torchfile

    path = Path(path)
    obj = torchfile.load(path, "predictor file", PredictorError)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _load_project(obj, path)
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _load_ofa(obj, path)
    raise PredictorError(
        f"{path} is neither a compofa-bench predictor nor OFA's acc_predictor.pth state_dict"
    )


def _load_ofa(state: dict[str, torch.Tensor], path: Path) -> AccuracyPredictor:
    encoder = Encoder.ofa()
    model = build_mlp(encoder.dim, OFA_HIDDEN)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise PredictorError(f"{path} does not fit OFA's 128-400-400-400-1 MLP: {exc}") from None
    return AccuracyPredictor(encoder, model, OFA_HIDDEN, source=f"ofa ({path.name})")


def _load_project(obj: dict[str, Any], path: Path) -> AccuracyPredictor:
    if obj.get("version") != FORMAT_VERSION:
        raise PredictorError(
            f"{path}: predictor format version {obj.get('version')} is not supported "
            f"(this build reads version {FORMAT_VERSION})"
        )
    for key in ("encoder", "hidden", "state_dict"):
        if key not in obj:
            raise PredictorError(f"{path}: predictor file lacks {key!r} (truncated or edited?)")
    try:
        encoder = Encoder.from_dict(obj["encoder"])
        hidden = tuple(int(h) for h in obj["hidden"])
        if not hidden or min(hidden) < 1:
            raise ValueError(f"hidden sizes must be positive, got {list(hidden)}")
        model = build_mlp(encoder.dim, hidden)
        model.load_state_dict(obj["state_dict"])
        info = json.loads(obj.get("info") or "{}")
    except RuntimeError as exc:
        raise PredictorError(f"{path}: weights do not fit the stored encoder: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:  # a field of the wrong kind
        raise PredictorError(f"{path}: invalid predictor file: {exc}") from None
    return AccuracyPredictor(encoder, model, hidden, str(obj.get("source", "project")), info)


# =============================================================================== data


@dataclass(frozen=True)
class AccuracyData:
    """Rows of an acc.csv: archs of one space with measured top-1 fractions."""

    space: spaces.SearchSpace
    archs: tuple[Arch, ...]
    top1: np.ndarray


def read_acc_csv(path: str | Path, space: str | None = None) -> AccuracyData:
    """Parse ``space,key,resolution,top1,arch`` rows (``compofa-bench evaluate`` output)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PredictorError(f"accuracy data {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictorError(f"cannot read accuracy data {path}: {exc}") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in ACC_CSV_HEADER if c not in (reader.fieldnames or [])]
        if missing:
            raise PredictorError(
                f"{path}: missing column(s) {', '.join(missing)}; expected header "
                f"{','.join(ACC_CSV_HEADER)}"
            )
        rows = list(reader)
    except csv.Error as exc:
        raise PredictorError(f"{path} is not a valid CSV file: {exc}") from None
    # A short row leaves fields None (DictReader): say which line, not a TypeError later.
    for line, row in enumerate(rows, start=2):
        if any(row.get(c) is None for c in ACC_CSV_HEADER):
            raise PredictorError(f"{path} line {line}: expected {len(ACC_CSV_HEADER)} fields")
    if not rows:
        raise PredictorError(f"{path} has no data rows")
    names = {r["space"] for r in rows}
    if space is None:
        if len(names) > 1:
            raise PredictorError(f"{path} mixes spaces {sorted(names)}; pick one with --space")
        space = names.pop()
    else:
        rows = [r for r in rows if r["space"] == space]
        if not rows:
            raise PredictorError(f"{path} has no rows for space {space!r}")
    try:
        sp = spaces.get(space)
    except SpaceError as exc:
        raise PredictorError(f"{path}: {exc}") from None
    archs: list[Arch] = []
    top1: list[float] = []
    for line, row in enumerate(rows, start=2):
        try:
            spec = json.loads(row["arch"])
            arch = Arch.from_ofa(
                spec, resolution=int(row["resolution"]), stage_sizes=sp.stage_sizes
            )
            acc = float(row["top1"])
        except (json.JSONDecodeError, ValueError, TypeError, ArchError) as exc:
            raise PredictorError(f"{path} line {line}: {exc}") from None
        if not (0.0 <= acc <= 1.0) or math.isnan(acc):
            raise PredictorError(
                f"{path} line {line}: top1 {acc} is not a fraction in [0, 1] (is it a percent?)"
            )
        archs.append(arch)
        top1.append(acc)
    return AccuracyData(sp, tuple(archs), np.asarray(top1, dtype=np.float64))


# =============================================================================== training


@dataclass(frozen=True)
class TrainConfig:
    """Adam on MSE with a held-out split and early stopping on held-out RMSE."""

    hidden: tuple[int, ...] = OFA_HIDDEN
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 500
    patience: int = 30
    val_fraction: float = 0.2
    seed: int = 0


def rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2)))


def train_predictor(
    data: AccuracyData,
    config: TrainConfig = TrainConfig(),
    progress: ProgressFn | None = None,
) -> AccuracyPredictor:
    """Train a predictor on ``data``; the held-out figures land in ``predictor.info``.

    ``progress`` hears of each epoch (task ``train predictor``; ``current`` holds the train
    and held-out RMSE).
    """
    n = len(data.archs)
    if n < 5:
        raise PredictorError(f"need at least 5 measured archs to train a predictor, got {n}")
    if not 0.0 < config.val_fraction < 1.0:
        raise PredictorError(f"val_fraction must be in (0, 1), got {config.val_fraction}")
    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    resolutions = sorted({a.resolution for a in data.archs})
    encoder = Encoder.for_space(data.space, resolutions)
    x_all = encoder.encode(data.archs)
    y_all = data.top1.astype(np.float32)
    perm = rng.permutation(n)
    n_val = max(1, round(config.val_fraction * n))
    val_idx, tr_idx = perm[:n_val], perm[n_val:]
    x_tr, y_tr = torch.from_numpy(x_all[tr_idx]), torch.from_numpy(y_all[tr_idx])
    x_val = torch.from_numpy(x_all[val_idx])
    y_val = y_all[val_idx]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # nn.Linear init draws from the global generator
        model = build_mlp(encoder.dim, config.hidden)
    with torch.no_grad():
        # Start at the mean so early epochs fit structure, not the offset.
        model[-1].bias.fill_(float(y_tr.mean()))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    started = time.perf_counter()
    with torch_threads(1):  # small batches: thread wake-ups cost more than they save
        _, best_epoch, epoch, best_state = _fit(
            model, opt, x_tr, y_tr, x_val, y_val, config, gen, progress
        )
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        val_pred = model(x_val).squeeze(1).double().numpy()
        tr_pred = model(x_tr).squeeze(1).double().numpy()
    info = {
        "space": data.space.name,
        "n_train": len(tr_idx),
        "n_val": int(n_val),
        "val_rmse": rmse(val_pred, y_val),
        "val_kendall_tau": kendall_tau_b(val_pred, y_val),
        "val_spearman": spearman(val_pred, y_val),
        "train_rmse": rmse(tr_pred, y_all[tr_idx]),
        "best_epoch": best_epoch,
        "epochs_run": epoch,
        "train_seconds": time.perf_counter() - started,
        "config": {
            "hidden": list(config.hidden),
            "lr": config.lr,
            "batch_size": config.batch_size,
            "max_epochs": config.max_epochs,
            "patience": config.patience,
            "val_fraction": config.val_fraction,
            "seed": config.seed,
            "weight_decay": config.weight_decay,
        },
    }
    return AccuracyPredictor(encoder, model, tuple(config.hidden), "project", info)


def _fit(
    model: nn.Sequential,
    opt: torch.optim.Optimizer,
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_val: torch.Tensor,
    y_val: np.ndarray,
    config: TrainConfig,
    gen: torch.Generator,
    progress: ProgressFn | None,
) -> tuple[float, int, int, dict[str, torch.Tensor]]:
    """Epochs until held-out RMSE stops improving; returns the best state and its figures."""
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_val, best_epoch, since_best = math.inf, 0, 0
    epoch = 0
    n_tr = len(y_tr)
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(n_tr, generator=gen)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            b = order[start : start + config.batch_size]
            pred = model(x_tr[b]).squeeze(1)
            loss = torch.mean((pred - y_tr[b]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        model.eval()
        with torch.no_grad():
            val_pred = model(x_val).squeeze(1).numpy()
        val_rmse = rmse(val_pred, y_val)
        rmses = f"train RMSE {math.sqrt(total / len(order)):.4f}  held-out RMSE {val_rmse:.4f}"
        report(progress, ProgressEvent("train predictor", epoch, config.max_epochs, rmses))
        if val_rmse < best_val - 1e-7:
            best_val, best_epoch, since_best = val_rmse, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            since_best += 1
            if since_best >= config.patience:
                break
    return best_val, best_epoch, epoch, best_state
