"""The supernet training loop: phases of a recipe, on one process or under torchrun.

Position in a run is ``(phase, step)``: ``step`` counts optimizer steps within the phase;
epoch and batch follow from it. Everything random in a step (subnets, resolution, data order,
augmentation, dropout) is a function of the seed and that position, so ``--resume`` from any
checkpoint reproduces the uninterrupted run, and N ranks reproduce one process that splits
each global batch into N micro-batches.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from compofa_bench import data as data_mod
from compofa_bench.errors import TrainError
from compofa_bench.progress import ProgressEvent, ProgressFn, report
from compofa_bench.train import checkpoint as ckpt
from compofa_bench.train import distributed as D
from compofa_bench.train.losses import distillation_loss, label_smoothed_ce, soft_target_ce
from compofa_bench.train.optim import build_sgd, set_lr
from compofa_bench.train.recipe import Phase, Recipe
from compofa_bench.train.sampling import step_resolution, step_subnets
from compofa_bench.train.schedule import CosineWarmup

CHECKPOINT = "checkpoint.pt"
FINAL = "final.pt"
TEACHER = "teacher.pt"
METRICS = "metrics.jsonl"
AMP_MODES = ("none", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on besides the recipe. Saved in checkpoints; ``--resume``
    refuses a config that differs in a field that changes the result."""

    data: str
    out: Path
    scale: float = 1.0
    batch_size: int | None = None  # per rank; None = the recipe's
    micro_batches: int = 1
    subset: int | None = None
    workers: int = 0
    device: str = "auto"
    amp: str = "none"
    channels_last: bool | None = None  # None = on GPU only
    resolutions: tuple[int, ...] | None = None
    seed: int | None = None
    teacher_checkpoint: Path | None = None
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total
    log_every: int = 10
    quiet: bool = False
    #: Fashion-MNIST only: keep the whole training set on the device and augment per batch
    #: there (no DataLoader); the fast path on a GPU. Changes the augmentation draws.
    data_on_device: bool = False
    #: Checkpoint at every epoch end (else only at phase ends, on a signal and at the end):
    #: short runs of many tiny epochs spend more on writing ~100 MB than on training.
    epoch_checkpoints: bool = True

    def result_fields(self) -> dict[str, Any]:
        """Fields that must match between a run and its resume."""
        return {
            "data": self.data,
            "scale": self.scale,
            "batch_size": self.batch_size,
            "subset": self.subset,
            "resolutions": None if self.resolutions is None else list(self.resolutions),
            "seed": self.seed,
            "data_on_device": self.data_on_device,
        }


@dataclass
class Position:
    phase: int = 0
    step: int = 0  # next step to run within the phase
    global_step: int = 0
    done: bool = False


@dataclass
class RunResult:
    out: Path
    position: Position
    interrupted: bool
    final_path: Path | None
    last_loss: float | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)


class Interrupted(TrainError):
    """Training stopped on a signal; a checkpoint was written."""


# =============================================================================== helpers


def seed_torch(seed: int, *coords: int) -> None:
    """Seed torch's global RNG (dropout) from a position: the same on every rank and resume."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, *coords])
    torch.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] >> 1))


def build_model(recipe: Recipe, n_classes: int) -> nn.Module:
    from compofa_bench import supernet

    return supernet.build(
        base=recipe.base,
        width_mult=recipe.width_mult,
        n_classes=n_classes,
        dropout_rate=recipe.dropout_rate,
    )


def steps_per_epoch(n_samples: int, global_batch: int) -> int:
    steps = n_samples // global_batch
    if steps < 1:
        raise TrainError(
            f"the training set has {n_samples} images, fewer than one global batch of "
            f"{global_batch}; lower --batch-size or raise --subset"
        )
    return steps


def phase_steps(phase: Phase, spe: int) -> tuple[int, int]:
    """``(total, warmup)`` optimizer steps of a phase; at least one step each phase."""
    total = max(1, round(phase.epochs * spe))
    warm = min(total, round(phase.warmup_epochs * spe))
    return total, warm


class _StopFlag:
    """SIGTERM/SIGINT set a flag the loop checks between steps; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.raised = False
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.raised and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.raised = True

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# =============================================================================== the run


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        config: TrainConfig,
        resume: bool = False,
        progress: ProgressFn | None = None,
    ) -> None:
        if config.amp not in AMP_MODES:
            raise TrainError(f"amp must be one of {', '.join(AMP_MODES)}, not {config.amp!r}")
        if config.micro_batches < 1:
            raise TrainError(f"micro_batches must be >= 1, got {config.micro_batches}")
        if config.resolutions is not None:
            recipe = recipe.with_resolutions(config.resolutions)
        if config.seed is not None:
            recipe = dataclass_replace(recipe, seed=config.seed)
        if config.batch_size is not None:
            recipe = dataclass_replace(recipe, batch_size=config.batch_size)
        self.recipe = recipe.scaled(config.scale)
        self.config = config
        self.progress = progress
        self.out = Path(config.out)
        self.resume = resume
        # The files given are read (weights-only) and checked before any data or model is built.
        self._resume_state: dict[str, Any] | None = None
        self._teacher_file: dict[str, Any] | None = None
        if resume:
            path = self.out / CHECKPOINT
            if not path.is_file():
                raise TrainError(f"--resume: no checkpoint in {self.out}")
            self._resume_state = ckpt.load(path)
        elif config.teacher_checkpoint is not None:
            self._teacher_file = ckpt.load(config.teacher_checkpoint)
        self.ctx = D.init(config.device)
        if self.recipe.batch_size % config.micro_batches:
            raise TrainError(
                f"batch size {self.recipe.batch_size} is not divisible into "
                f"{config.micro_batches} micro-batches"
            )
        self.data_spec = data_mod.resolve(config.data)
        self.n_classes = self.data_spec.n_classes
        base = max(self.recipe.resolutions)
        self.device_set: data_mod.DeviceFashionMNIST | None = None
        if config.data_on_device:
            if self.data_spec.kind != "fashion-mnist":
                raise TrainError("data_on_device is for Fashion-MNIST only")
            self.device_set = data_mod.DeviceFashionMNIST(self.data_spec.root, self.ctx.device)
            n_train = len(self.device_set)
        else:
            self.train_set = data_mod.train_dataset(self.data_spec, base)
            n_train = len(self.train_set)
        self.indices = data_mod.subset_indices(n_train, config.subset, self.recipe.seed)
        self.global_batch = self.recipe.batch_size * self.ctx.world_size
        self.spe = steps_per_epoch(len(self.indices), self.global_batch)
        # Same initial weights on every rank and in every run with this seed.
        seed_torch(self.recipe.seed, 0xC0FFEE)
        self.model = build_model(self.recipe, self.n_classes).to(self.ctx.device)
        cl = (
            config.channels_last
            if config.channels_last is not None
            else self.ctx.device.type == "cuda"
        )
        self.memory_format = torch.channels_last if cl else torch.contiguous_format
        if cl:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.teacher: nn.Module | None = None
        self.teacher_state: dict[str, torch.Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler = torch.amp.GradScaler(
            self.ctx.device.type, enabled=config.amp == "fp16" and self.ctx.device.type == "cuda"
        )
        self.pos = Position()
        self._prepare_out()
        D.broadcast_state(self.model, self.ctx)

    # ------------------------------------------------------------------- setup
    def _prepare_out(self) -> None:
        path = self.out / CHECKPOINT
        if self._resume_state is not None:
            self._load(self._resume_state)
            self._resume_state = None
        else:
            if path.exists() or (self.out / FINAL).exists():
                raise TrainError(
                    f"{self.out} already holds a run; pass --resume to continue it or choose "
                    "another --out"
                )
            if self._teacher_file is not None:
                self._load_teacher(self.config.teacher_checkpoint, self._teacher_file)
                self._teacher_file = None
        if self.ctx.is_root:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.json").write_text(json.dumps(self.recipe.to_dict(), indent=2))
        D.barrier(self.ctx)

    def _load_teacher(self, path: Path | None, state: dict[str, Any]) -> None:
        sd = state.get("teacher") or state["model"]
        try:
            self.model.load_state_dict(sd)
        except RuntimeError as exc:
            raise TrainError(f"--teacher {path} does not fit this supernet: {exc}") from None
        self.teacher_state = copy.deepcopy(self.model.state_dict())
        # Skip the recipe's teacher phases: their product is given.
        while (
            self.pos.phase < len(self.recipe.phases)
            and self.recipe.phases[self.pos.phase].is_teacher
        ):
            self.pos.phase += 1

    def _load(self, state: dict[str, Any]) -> None:
        saved = state["recipe"]
        mine = self.recipe.to_dict()
        diff = [
            k
            for k in mine
            if json.dumps(mine[k], default=str) != json.dumps(saved.get(k), default=str)
        ]
        if diff:
            raise TrainError(
                f"--resume: the recipe differs from the checkpoint's in {', '.join(diff)}"
            )
        cfg = state["config"]
        diff = [k for k, v in self.config.result_fields().items() if cfg.get(k) != v]
        if diff:
            raise TrainError(
                f"--resume: option(s) differ from the interrupted run: {', '.join(diff)}"
            )
        if state["world_size"] != self.ctx.world_size:
            raise TrainError(
                f"--resume: the run used {state['world_size']} process(es), this one "
                f"{self.ctx.world_size}; the global batch would change"
            )
        self.model.load_state_dict(state["model"])
        self.teacher_state = state["teacher"]
        self.pos = Position(**state["position"])
        self._opt_state = state["optimizer"]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])

    def _state(self) -> dict[str, Any]:
        return {
            "format": ckpt.FORMAT,
            "recipe": self.recipe.to_dict(),
            "config": self.config.result_fields(),
            "world_size": self.ctx.world_size,
            "n_classes": self.n_classes,
            "base": self.recipe.base,
            "width_mult": self.recipe.width_mult,
            "space": self.recipe.space,
            "model": self.model.state_dict(),
            "teacher": self.teacher_state,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "position": asdict(self.pos),
            "rng": ckpt.rng_state(),
        }

    def save(self, name: str = CHECKPOINT) -> None:
        D.average_buffers(self.model, self.ctx)
        if self.ctx.is_root:
            ckpt.save_atomic(self._state(), self.out / name)
        D.barrier(self.ctx)

    # ------------------------------------------------------------------- phases
    def _start_phase(self, phase: Phase, fresh: bool) -> None:
        if fresh and phase.reorganize:
            # Re-sort middle channels by importance so prefix slicing keeps the best ones.
            with torch.no_grad():
                self.model.reorganize_middle_weights()
        if phase.kd == "teacher":
            if self.teacher_state is None:
                raise TrainError(
                    f"phase {phase.name} distills from a teacher but none was trained or given"
                )
            if self.teacher is None:
                self.teacher = build_model(self.recipe, self.n_classes).to(self.ctx.device)
                self.teacher.load_state_dict(self.teacher_state)
                self.teacher.to(memory_format=self.memory_format)
                for p in self.teacher.parameters():
                    p.requires_grad_(False)
        self.optimizer = build_sgd(
            self.model,
            phase.lr,
            self.recipe.momentum,
            self.recipe.nesterov,
            self.recipe.weight_decay,
        )
        opt_state = getattr(self, "_opt_state", None)
        if not fresh and opt_state is not None:
            self.optimizer.load_state_dict(opt_state)
        self._opt_state = None

    def _lr_scale(self) -> float:
        return self.global_batch / self.recipe.reference_batch_size

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.ctx.device.type, dtype=dtype)

    def _batches(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.device_set is not None:
            yield from self.device_set.batches(
                self.indices,
                self.global_batch,
                self.ctx.rank,
                self.ctx.world_size,
                self.recipe.seed,
                epoch,
                start_step,
            )
            return
        sampler = data_mod.StepSampler(
            self.indices,
            self.global_batch,
            self.ctx.rank,
            self.ctx.world_size,
            self.recipe.seed,
            epoch,
            start_step,
        )
        loader = torch.utils.data.DataLoader(
            self.train_set,
            batch_size=self.recipe.batch_size,
            sampler=sampler,
            num_workers=self.config.workers,
            pin_memory=self.ctx.device.type == "cuda",
            drop_last=True,
            persistent_workers=False,
        )
        yield from loader

    # ------------------------------------------------------------------- one step
    def train_step(
        self, phase_index: int, phase: Phase, step: int, images: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, Any]:
        model, opt = self.model, self.optimizer
        assert opt is not None
        space = phase.search_space(self.recipe.resolutions)
        res = step_resolution(self.recipe.resolutions, self.recipe.seed, phase_index, step)
        archs = step_subnets(
            space, phase.sampling, phase.subnets_per_step, res, self.recipe.seed, phase_index, step
        )
        x = data_mod.normalize(
            data_mod.resize_batch(images.to(self.ctx.device, non_blocking=True), res),
            self.data_spec.mean,
            self.data_spec.std,
        ).contiguous(memory_format=self.memory_format)
        y = labels.to(self.ctx.device, non_blocking=True)
        m = self.config.micro_batches
        model.train()
        opt.zero_grad(set_to_none=True)
        # Losses stay on the device until the step ends: one synchronisation per step, not
        # one per subnet (a GPU would otherwise idle while Python queues the next forward).
        per_subnet: list[torch.Tensor] = [torch.zeros((), device=x.device) for _ in archs]
        correct = torch.zeros((), device=x.device)
        for mi, (xm, ym) in enumerate(zip(x.chunk(m), y.chunk(m), strict=True)):
            micro = self.ctx.rank * m + mi  # global micro-batch index: same on 1 or N ranks
            soft: torch.Tensor | None = None
            if phase.kd == "teacher":
                assert self.teacher is not None
                # OFA runs the teacher in train mode (batch statistics), without gradient.
                self.teacher.train()
                self.teacher.set_active(_teacher_arch(self.recipe, res))
                seed_torch(self.recipe.seed, phase_index, step, micro, 999)
                with torch.no_grad(), self._autocast():
                    soft = self.teacher(xm).detach()
            for j, arch in enumerate(archs):
                model.set_active(arch)
                seed_torch(self.recipe.seed, phase_index, step, micro, j)
                with self._autocast():
                    logits = model(xm)
                if j == 0:  # batch accuracy of the step's first subnet (largest when sampled)
                    correct += (logits.detach().argmax(dim=1) == ym).sum()
                if phase.kd == "inplace":
                    if j == 0:  # the largest subnet: labels only; its output teaches the rest
                        loss = label_smoothed_ce(logits, ym, self.recipe.label_smoothing)
                        soft = logits.detach()
                    else:
                        assert soft is not None
                        target = torch.softmax(soft.float(), dim=1)
                        loss = phase.kd_ratio * soft_target_ce(logits, target)
                else:
                    loss = distillation_loss(
                        logits,
                        ym,
                        self.recipe.label_smoothing,
                        soft if phase.kd == "teacher" else None,
                        phase.kd_ratio,
                    )
                # Gradients of the n subnets add up (as in OFA); micro-batches average.
                self.scaler.scale(loss / m).backward()
                per_subnet[j] += loss.detach() / m
        D.average_gradients(model, self.ctx)
        if phase.grad_clip is not None:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), phase.grad_clip)
        self.scaler.step(opt)
        self.scaler.update()
        host = torch.stack([*per_subnet, correct]).tolist()
        losses, n_correct = host[:-1], host[-1]
        return {
            "resolution": res,
            "subnets": [a.key() for a in archs],
            "loss": float(np.mean(losses)),
            "loss_per_subnet": losses,
            "acc": n_correct / float(y.numel()),
        }

    # ------------------------------------------------------------------- the loop
    def run(self, on_step: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
        result = RunResult(self.out, self.pos, False, None)
        with _StopFlag() as stop:
            try:
                self._run(stop, result, on_step)
            finally:
                D.shutdown(self.ctx)
        return result

    def _run(self, stop: _StopFlag, result: RunResult, on_step: Any) -> None:
        recipe, pos = self.recipe, self.pos
        metrics_path = self.out / METRICS
        # one progress mechanism for the whole library: events to a callback, drawn by the CLI
        show = self.progress if self.ctx.is_root and not self.config.quiet else None
        while pos.phase < len(recipe.phases):
            phase = recipe.phases[pos.phase]
            total, warm = phase_steps(phase, self.spe)
            self._start_phase(phase, fresh=pos.step == 0)
            assert self.optimizer is not None
            sched = CosineWarmup(
                phase.lr * self._lr_scale(), total, warm, phase.warmup_lr * self._lr_scale()
            )
            phase_task = f"phase {pos.phase + 1}/{len(recipe.phases)} {phase.name}"
            report(show, ProgressEvent(phase_task, pos.step, total))
            while pos.step < total:
                epoch, start = divmod(pos.step, self.spe)
                n_epoch_steps = min(self.spe, total - epoch * self.spe)
                task = f"{phase.name} epoch {epoch + 1}/{math.ceil(total / self.spe)}"
                report(show, ProgressEvent(task, start, n_epoch_steps))
                t0, seen = time.perf_counter(), 0
                for images, labels in self._batches(epoch, start):
                    lr = sched(pos.step)
                    set_lr(self.optimizer, lr)
                    info = self.train_step(pos.phase, phase, pos.step, images, labels)
                    pos.step += 1
                    pos.global_step += 1
                    seen += images.shape[0] * self.ctx.world_size
                    ips = seen / max(1e-9, time.perf_counter() - t0)
                    row = {
                        "phase": phase.name,
                        "epoch": epoch,
                        "step": pos.step,
                        "global_step": pos.global_step,
                        "lr": lr,
                        "images_per_s": ips,
                        **info,
                    }
                    result.last_loss = info["loss"]
                    if on_step is not None:
                        on_step(row)
                    if self.ctx.is_root and (
                        pos.step % self.config.log_every == 0 or pos.step == total
                    ):
                        _append_jsonl(metrics_path, row)
                    done = pos.step - epoch * self.spe
                    report(show, _step_event(task, done, n_epoch_steps, row))
                    report(show, _step_event(phase_task, pos.step, total, row))
                    epoch_end = pos.step % self.spe == 0 or pos.step == total
                    limit = (
                        self.config.max_steps is not None
                        and pos.global_step >= self.config.max_steps
                    )
                    if D.any_flag(stop.raised or limit, self.ctx):
                        if pos.step == total:
                            self._finish_phase(phase)
                        self.save()
                        result.interrupted = True
                        if limit and not stop.raised:
                            return
                        raise Interrupted(
                            f"stopped at phase {phase.name}, step {pos.step}/{total}; "
                            f"checkpoint in {self.out / CHECKPOINT}; rerun with --resume"
                        )
                    if epoch_end:
                        report(show, _epoch_event(task, n_epoch_steps, row))
                        break
                if seen == 0:
                    raise TrainError(f"phase {phase.name}: the data loader yielded no batch")
                if pos.step < total and self.config.epoch_checkpoints:
                    self.save()  # epoch end
            done_line = f"{total} steps"
            report(show, ProgressEvent(phase_task, total, total, finished=True, summary=done_line))
            self._finish_phase(phase)
            self.save()
        pos.done = True
        self.save()
        self.save(FINAL)
        result.final_path = self.out / FINAL

    def _finish_phase(self, phase: Phase) -> None:
        if self.pos.step < phase_steps(phase, self.spe)[0]:
            return
        if phase.is_teacher:
            self.teacher_state = copy.deepcopy(self.model.state_dict())
            if self.ctx.is_root:
                ckpt.save_atomic(self._state(), self.out / TEACHER)
        self.pos.phase += 1
        self.pos.step = 0
        self.optimizer = None


def _teacher_arch(recipe: Recipe, resolution: int):
    """The teacher network: the largest subnet of the first teacher phase's space."""
    for p in recipe.phases:
        if p.is_teacher:
            return p.search_space(recipe.resolutions).largest(resolution)
    from compofa_bench import spaces

    return spaces.get("ofa", recipe.resolutions).largest(resolution)


def dataclass_replace(obj: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(obj, **changes)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def _step_event(task: str, done: int, total: int, row: dict[str, Any]) -> ProgressEvent:
    """A training step's event: loss, batch accuracy of the step's first subnet, lr, images/s,
    resolution and subnets sampled."""
    info = (
        f"loss {row['loss']:.3f}  acc {row['acc']:.3f}  lr {row['lr']:.4g}  "
        f"{row['images_per_s']:.0f} img/s  "
        f"r{row['resolution']} x{len(row['subnets'])} subnets"
    )
    return ProgressEvent(task, done, total, info)


def _epoch_event(task: str, total: int, row: dict[str, Any]) -> ProgressEvent:
    """An epoch's last event: its summary line replaces the bar (long runs have many epochs)."""
    line = (
        f"loss {row['loss']:.4f}  train acc {row['acc']:.3f}  lr {row['lr']:.4g}  "
        f"{row['images_per_s']:.0f} img/s"
    )
    return ProgressEvent(task, total, total, finished=True, summary=line)


def train(
    recipe: Recipe,
    config: TrainConfig,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Run (or resume) a recipe. Raises :class:`Interrupted` after checkpointing on a signal.
    ``progress`` hears of every step (one task per phase and one per epoch), on rank 0 unless
    ``quiet``."""
    return Trainer(recipe, config, resume=resume, progress=progress).run()


__all__ = [
    "AMP_MODES",
    "CHECKPOINT",
    "FINAL",
    "Interrupted",
    "Position",
    "RunResult",
    "TrainConfig",
    "Trainer",
    "train",
]
