"""The training loop: SGD with the poly policy, periodic validation, atomic checkpoints, exact resume.

What the run directory holds and when a run may resume: `pspnet.engine.run_dir`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..checkpoint import load_model, load_strict, save_checkpoint
from ..config import Config
from ..data.check import report_colour_matching
from ..data.loaders import SkipLog, build_dataset, build_eval_loader, build_train_loader, iterate
from ..errors import CheckpointError, ConfigError
from ..losses import PSPLoss
from ..metrics import SegmentationMetrics
from ..models import create_model
from .device import resolve_device
from .environment import command_line, hardware, software
from .evaluator import ImageScores, Validation, evaluate
from .progress import progress_bar
from .run_dir import RunDirectory
from .run_log import RunLog

log = logging.getLogger(__name__)


def poly_lr_factor(iteration: int, max_iters: int, power: float) -> float:
    """The paper's poly policy: lr = base_lr * (1 - iter / max_iter) ** power."""
    return (1 - iteration / max_iters) ** power


def build_optimizer(model: torch.nn.Module, cfg: Config) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with the encoder at base_lr and the rest (PPM, fusion, classifiers) at head_lr_mult x base_lr."""
    train = cfg.train
    groups = [
        {"params": list(model.encoder.parameters()), "lr": train.base_lr, "name": "encoder"},
        {"params": model.head_parameters(), "lr": train.base_lr * train.head_lr_mult, "name": "head"},
    ]
    optimizer = torch.optim.SGD(groups, lr=train.base_lr, momentum=train.momentum, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda it: poly_lr_factor(min(it, train.max_iters), train.max_iters, train.lr_power)
    )
    return optimizer, scheduler


@dataclass
class TrainResult:
    """Where a run's files are and how it ended; `metrics` is the last validation (None if none ran)."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_miou: float | None
    iteration: int
    stopped_early: bool
    metrics: SegmentationMetrics | None
    stop_signal: int | None = None
    """The signal (SIGINT, SIGTERM) that stopped the run early, if one did."""
    skipped: SkipLog | None = None
    validation: Validation | None = None
    """The last validation with its per-image scores (None if none ran)."""


class Trainer:
    """Trains a PSPNet as configured, writing everything into `run_dir` (a `RunDirectory`).

    With `resume`, the run continues from its resume state; when it has none (it was killed before
    its first checkpoint) it starts over, with a warning. `command` is recorded in run.json (default:
    this process's command line).
    """

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True,
                 command: str | None = None):
        self.run = RunDirectory(run_dir)
        if resume:
            config = self.run.check_resume(config)
            if not self.run.can_resume():
                log.warning("--resume: %s has no resume state (the run was stopped before its first checkpoint); "
                            "starting it over from iteration 0", self.run.path)
        else:
            self.run.check_new()
        resume = resume and self.run.can_resume()
        self.progress = progress
        self.command = command or command_line()
        self.callbacks: list[Callable[[Trainer, int], None]] = []
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._saving = False
        self._abort_after_save = False

        train = config.train
        self.device = resolve_device(train.device)
        if train.amp and self.device.type != "cuda":
            raise ConfigError("train.amp: mixed precision needs a CUDA device")
        torch.manual_seed(train.seed)
        self.train_set = build_dataset(config.data, config.data.train_split, train=True)
        self.val_set = build_dataset(config.data, config.data.val_split, train=False)
        self.classes = self.train_set.classes
        self.model = create_model(config, self.classes)
        self.config = config.replace([f"model.num_classes={self.model.config.num_classes}"])
        if train.init_from and not resume:
            load_strict(self.model, load_model(train.init_from).state_dict(), f"train.init_from {train.init_from}")
        self.model.to(self.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, config)
        self.criterion = PSPLoss(aux_weight=train.aux_weight, cls_weight=train.cls_weight)
        self.skipped = SkipLog()
        self.iteration = 0
        self.best_miou: float | None = None
        if resume:
            self._load_resume_state()
        report_colour_matching(self.train_set.source)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    # ---------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        """The resume state, then `last.safetensors`, each atomically: a kill between them leaves a
        resumable directory. A second Ctrl-C during the save takes effect once both are written."""
        self._saving = True
        try:
            self.run.save_resume_state({
                "iteration": self.iteration,
                "best_miou": self.best_miou,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            })
            save_checkpoint(self.run.last, self.model, self.config, iteration=self.iteration, best_miou=self.best_miou)
            self._saved_iteration = self.iteration
        finally:
            self._saving = False
        if self._abort_after_save:
            raise KeyboardInterrupt

    def _load_resume_state(self) -> None:
        state = self.run.load_resume_state()
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.iteration, self.best_miou = int(state["iteration"]), state["best_miou"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.run.resume_state}: resume state does not match this model/config: {exc}") from None
        train = self.config.train
        if self.iteration > train.max_iters:
            raise ConfigError(f"train.max_iters: {train.max_iters} is below iteration {self.iteration}, which the run "
                              "has reached; resume with a larger value (or start a new run)")
        # the poly policy with this run's max_iters (which may have been raised) from the resumed iteration on
        factor = poly_lr_factor(self.iteration, train.max_iters, train.lr_power)
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * factor
        log.info("resuming %s at iteration %d of %d", self.run.path, self.iteration, train.max_iters)

    def validate(self, scores: ImageScores | None = None) -> SegmentationMetrics:
        """Metrics of the current model on the validation split (per-image mIoU into `scores`)."""
        cfg = self.config
        loader = build_eval_loader(self.val_set, cfg.data, cfg.eval.batch_size, self.device)
        return evaluate(self.model, loader, self.classes.num_classes, cfg.eval, self.device, self.progress,
                        desc="validate", skipped=self.skipped, observe=scores)

    def _record_validation(self, metrics: SegmentationMetrics, run_log: RunLog) -> None:
        """Log validation metrics and keep the best checkpoint."""
        run_log.validation(self.iteration, {"miou": metrics.miou, "macc": metrics.macc, "aacc": metrics.aacc})
        if self.best_miou is None or metrics.miou > self.best_miou:
            self.best_miou = metrics.miou
            save_checkpoint(self.run.best, self.model, self.config, iteration=self.iteration, best_miou=self.best_miou)

    # ---------------------------------------------------------------- loop
    def request_stop(self) -> None:
        """Finish the current iteration, save a checkpoint and return."""
        self._stop_requested = True

    def _handle_signal(self, signum, frame) -> None:
        """First Ctrl-C/SIGTERM: stop after this iteration and save. Second: abort (after a save in progress)."""
        if self._stop_signal is not None:
            if self._saving:
                self._abort_after_save = True
                return
            raise KeyboardInterrupt
        log.warning("stop requested: finishing this iteration and saving a checkpoint (Ctrl-C again to abort)")
        self._stop_signal = signum
        self._stop_requested = True

    def train(self) -> TrainResult:
        cfg = self.config.train
        self._saved_iteration = self.iteration
        loader = build_train_loader(self.train_set, self.config.data, cfg.batch_size, cfg.seed, self.iteration, self.device)
        batches = iterate(loader, self.skipped)
        if self.iteration < cfg.max_iters:  # the data can be read: only now is the run directory created
            batches = itertools.chain([next(batches)], batches)
        self.run.create(self.config)
        if self.iteration and self.run.last_iteration() != self.iteration:  # killed between the resume state and the weights
            save_checkpoint(self.run.last, self.model, self.config, iteration=self.iteration, best_miou=self.best_miou)
        run_log = RunLog(self.run, self.iteration)
        session = {"command": self.command, "start_iteration": self.iteration, "software": software(),
                   "hardware": hardware(self.device)}
        self.model.train()
        bar = progress_bar(cfg.max_iters, "train", self.progress, unit="it", initial=self.iteration)
        metrics = validation = None
        with (_stop_signals(self._handle_signal), contextlib.closing(bar), contextlib.closing(run_log),
              self.run.session(session, iteration=lambda: self.iteration)):
            while self.iteration < cfg.max_iters and not self._stop_requested:
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]  # the encoder's rate for this iteration
                losses = self._step(next(batches))
                self.iteration += 1
                bar.update(1)
                if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.max_iters:
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}")
                    run_log.train(self.iteration, {**losses, "lr": lr, "seconds_per_iter": round(time.perf_counter() - start, 4)})
                if self.iteration % cfg.eval_interval == 0 or self.iteration == cfg.max_iters:
                    scores = ImageScores(self.classes.num_classes)
                    metrics = self.validate(scores)
                    validation = Validation(self.iteration, metrics, scores)
                    self._record_validation(metrics, run_log)
                    bar.write(f"iter {self.iteration}: val mIoU {100 * metrics.miou:.2f}  (best {100 * self.best_miou:.2f})")
                if self.iteration % cfg.checkpoint_interval == 0 or self.iteration == cfg.max_iters:
                    self._save()
                for callback in self.callbacks:
                    callback(self, self.iteration)
            if self._stop_requested and self._saved_iteration != self.iteration:
                self._save()
            if self._stop_requested:
                session["outcome"] = "stopped"
        if self.skipped.count:
            log.warning("%s", self.skipped.summary())
        return TrainResult(self.run.path, self.run.last, self.run.best if self.run.best.exists() else None,
                           self.best_miou, self.iteration, self._stop_requested, metrics, self._stop_signal, self.skipped,
                           validation)

    def _step(self, batch: dict) -> dict[str, float]:
        images = batch["image"].to(self.device, non_blocking=True)
        masks = batch["mask"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.amp):
            outputs = self.model(images)
        losses = self.criterion({k: v.float() for k, v in outputs.items()}, masks)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in losses.items()}


@contextlib.contextmanager
def _stop_signals(handler) -> Iterator[None]:
    """Route SIGINT/SIGTERM to `handler` for the duration (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
