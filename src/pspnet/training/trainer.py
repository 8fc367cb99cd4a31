"""The training loop: SGD with the poly policy, periodic validation, atomic checkpoints, exact resume,
on one process or many (torchrun + DistributedDataParallel, with synchronized BatchNorm).

What the run directory holds and when a run may resume: `pspnet.training.run_dir`. How processes
share the work: `pspnet.system.distributed`. The global batch (`train.batch_size`) is split among
the processes, and every sample's place in the stream and its augmentation depend on (seed,
iteration, position in the global batch) only, so the number of processes changes the speed, not
the result (with synchronized BatchNorm and no dropout, up to float rounding).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import load_strict, open_model, save_checkpoint
from ..classes import IGNORE_INDEX
from ..config import Config
from ..data.check import report_colour_matching
from ..data.formats.annotations import check_fine_tuning_classes
from ..data.loaders import SkipLog, build_dataset, build_eval_loader, build_train_loader, iterate
from ..errors import CheckpointError, ConfigError, DataError
from ..jobs.evaluation import ImageScores, Validation, evaluate
from ..losses import PSPLoss
from ..metrics import SegmentationMetrics
from ..models import create_model
from ..runtime.compiled import compile_training
from ..system.device import resolve_amp, resolve_device
from ..system.distributed import Distributed, agree, all_reduce_sum, broadcast, check_all, split_batch
from ..system.environment import command_line, hardware, software
from ..system.progress import progress_bar
from .run_dir import RunDirectory
from .run_log import RunLog
from .sync_bn import convert_sync_batchnorm
from .tracking import Tracker, check_available, open_tracker, tracked_metrics

log = logging.getLogger(__name__)

SIGNAL_REPEAT_S = 2.0
"""A second stop signal within this many seconds of the first is the same request (under torchrun a
Ctrl-C reaches each worker twice: from the terminal and from the launcher)."""
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def poly_lr_factor(iteration: int, max_iters: int, power: float) -> float:
    """The paper's poly policy: lr = base_lr * (1 - iter / max_iter) ** power."""
    return (1 - iteration / max_iters) ** power


def build_optimizer(
    model: torch.nn.Module, cfg: Config
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
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
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds this session spent in each phase of the loop: data, step, logging, validation, checkpoints."""

    def time_shares(self) -> str:
        """`step 81% (402 s), data 6%, ...`: where the loop's time went."""
        total = sum(self.timings.values()) or 1.0
        parts = sorted(self.timings.items(), key=lambda item: -item[1])
        return ", ".join(f"{name} {100 * seconds / total:.0f}% ({seconds:.0f} s)" for name, seconds in parts)


class Trainer:
    """Trains a PSPNet as configured, writing everything into `run_dir` (a `RunDirectory`).

    With `resume`, the run continues from its resume state; when it has none (it was killed before
    its first checkpoint) it starts over, with a warning. With a `distributed` context of several
    processes, every process builds and checks the same run (a failure on one stops all), trains on
    its share of each global batch, and rank 0 alone writes files and logs to the tracker (MLflow with
    `train.loggers` [.., mlflow], in the experiment `experiment` unless MLFLOW_EXPERIMENT_NAME is set; see
    `pspnet.training.tracking`). `command` is recorded in run.json (default: this process's command line).
    """

    def __init__(
        self,
        config: Config,
        run_dir: str | Path,
        resume: bool = False,
        progress: bool = True,
        distributed: Distributed | None = None,
        command: str | None = None,
        experiment: str | None = None,
    ):
        self.dist = distributed or Distributed(device=resolve_device(config.train.device))
        self.experiment = experiment
        self.tracker = Tracker()
        self.run = RunDirectory(run_dir)
        self.progress = progress and self.dist.is_main
        self.command = command or command_line()
        self.callbacks: list[Callable[[Trainer, int], None]] = []
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._stop_time = 0.0
        self._saving = False
        self._abort_after_save = False
        # rank 0 decides what the run directory allows; every rank then checks config, data and model
        config, state = broadcast(self.dist, agree(self.dist, lambda: self._check_run_dir(config, resume)))
        agree(self.dist, lambda: self._build(config, init_weights=state is None))
        self.skipped = SkipLog()
        self.timings: dict[str, float] = {}
        self.iteration = 0
        self.best_miou: float | None = None
        if state is not None:
            self._load_resume_state(state)
        self.network = self._distribute()
        if self.config.train.compile:
            self.network = compile_training(self.network, self.device)
        if self.dist.is_main:
            report_colour_matching(self.train_set.source)

    def _check_run_dir(self, config: Config, resume: bool) -> tuple[Config, dict[str, Any] | None] | None:
        """On rank 0: the config to run (resolved from the run's when resuming) and the resume state, if any."""
        if not self.dist.is_main:
            return None
        if not resume:
            self.run.check_new()
            return config, None
        config = self.run.check_resume(config)
        if not self.run.can_resume():
            log.warning(
                "--resume: %s has no resume state (the run was stopped before its first checkpoint); "
                "starting it over from iteration 0",
                self.run.path,
            )
            return config, None
        return config, self.run.load_resume_state()

    def _build(self, config: Config, init_weights: bool) -> None:
        train = config.train
        if "mlflow" in train.loggers:
            check_available()
        self.device = self.dist.device if self.dist.active else resolve_device(train.device)
        self.amp = resolve_amp(train.amp, self.device)
        if train.amp == "auto":
            log.info("train.amp auto: %s on %s", self.amp, self.device)
        if self.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError("train.amp: fp16 needs a CUDA device (its gradient scaler); use bf16 on the CPU")
        self.sync_bn = train.sync_bn if train.sync_bn is not None else self.dist.active
        self.local_batch = split_batch(train.batch_size, self.dist, self.sync_bn)
        torch.manual_seed(train.seed)
        self.train_set = build_dataset(config.data, config.data.train_split, train=True)
        self.val_set = build_dataset(config.data, config.data.val_split, train=False)
        self.classes = self.train_set.classes
        self.model = create_model(config, self.classes)
        self.config = config.with_num_classes(self.model.config.num_classes)
        if train.init_from and init_weights and self.dist.is_main:  # the other ranks get rank 0's weights from DDP
            start = open_model(train.init_from, pytorch_only=True)
            check_fine_tuning_classes(self.train_set.source, start.card.classes, train.init_from)
            load_strict(self.model, start.model.state_dict(), f"train.init_from {train.init_from}")
        self.model.to(self.device)
        if train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = build_optimizer(self.model, config)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == "fp16" else None
        self.criterion = PSPLoss(aux_weight=train.aux_weight, cls_weight=train.cls_weight)

    def _distribute(self) -> torch.nn.Module:
        """The module training steps call: the model itself, or DDP around it (BatchNorm synchronized)."""
        if not self.dist.active:
            return self.model
        if self.sync_bn:
            convert_sync_batchnorm(self.model, self.device)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids, forward_sync_buffers=not self.sync_bn)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    # ---------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        """The resume state, then `last.safetensors`, each atomically: a kill between them leaves a
        resumable directory. A second Ctrl-C during the save takes effect once both are written."""
        if not self.dist.is_main:
            return
        self._saving = True
        try:
            self.run.save_resume_state(
                {
                    "iteration": self.iteration,
                    "best_miou": self.best_miou,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                }
            )
            save_checkpoint(self.run.last, self.model, self.config, iteration=self.iteration, best_miou=self.best_miou)
            self.tracker.checkpointed(self.iteration)
        finally:
            self._saving = False
        if self._abort_after_save:
            raise KeyboardInterrupt

    def _load_resume_state(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.iteration, self.best_miou = int(state["iteration"]), state["best_miou"]
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{self.run.resume_state}: resume state does not match this model/config: {exc}"
            ) from None
        train = self.config.train
        if self.iteration > train.max_iters:
            raise ConfigError(
                f"train.max_iters: {train.max_iters} is below iteration {self.iteration}, which the run "
                "has reached; resume with a larger value (or start a new run)"
            )
        # the poly policy with this run's max_iters (which may have been raised) from the resumed iteration on
        factor = poly_lr_factor(self.iteration, train.max_iters, train.lr_power)
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["lr"] = base_lr * factor
        log.info("resuming %s at iteration %d of %d", self.run.path, self.iteration, train.max_iters)

    def validate(self, scores: ImageScores | None = None) -> SegmentationMetrics:
        """Metrics of the current model on the validation split (each process evaluates its share), and the
        per-image mIoU of the whole split into `scores`."""
        cfg = self.config
        loader = build_eval_loader(
            self.val_set, cfg.data, cfg.eval.batch_size, self.device, self.dist.rank, self.dist.world_size
        )
        metrics = evaluate(
            self.model,
            loader,
            self.classes.num_classes,
            cfg.eval,
            self.device,
            self.progress,
            desc="validate",
            skipped=self.skipped,
            distributed=self.dist,
            observe=scores,
        )
        if scores is not None:
            scores.gather(self.dist)
        return metrics

    def _record_validation(self, metrics: SegmentationMetrics, run_log: RunLog | None) -> None:
        """Log validation metrics and keep the best checkpoint (rank 0)."""
        if run_log is not None:
            per_class = {f"IoU/{name}": iou for name, iou in zip(self.classes.names, metrics.iou)}
            values = {"miou": metrics.miou, "macc": metrics.macc, "aacc": metrics.aacc, **per_class}
            run_log.validation(self.iteration, values)
            self.tracker.log_metrics(self.iteration, tracked_metrics("val", values))
        if self.best_miou is None or metrics.miou > self.best_miou:
            self.best_miou = metrics.miou
            if self.dist.is_main:
                save_checkpoint(
                    self.run.best, self.model, self.config, iteration=self.iteration, best_miou=self.best_miou
                )

    # ---------------------------------------------------------------- loop
    def request_stop(self) -> None:
        """Finish the current iteration, save a checkpoint and return."""
        self._stop_requested = True

    def _handle_signal(self, signum, frame) -> None:
        """First Ctrl-C/SIGTERM: stop after this iteration and save. Second: abort (after a save in progress)."""
        if self._stop_signal is not None:
            if time.monotonic() - self._stop_time < SIGNAL_REPEAT_S:
                return
            if self._saving:
                self._abort_after_save = True
                return
            raise KeyboardInterrupt
        if self.dist.is_main:
            log.warning("stop requested: finishing this iteration and saving a checkpoint (Ctrl-C again to abort)")
        self._stop_signal, self._stop_time = signum, time.monotonic()
        self._stop_requested = True

    def _next_batch(self, batches: Iterator[dict]) -> dict | None:
        """The next batch, after every process agreed that it has one and whether to stop; None to stop."""
        failure, batch = None, None
        try:
            batch = next(batches)
        except DataError as exc:
            failure = exc
        if check_all(self.dist, failure, stop=self._stop_requested):
            self._stop_requested = True
            return None
        return batch

    def train(self) -> TrainResult:
        cfg = self.config.train
        self._saved_iteration = self.iteration
        loader = build_train_loader(
            self.train_set,
            self.config.data,
            cfg.batch_size,
            cfg.seed,
            self.iteration,
            self.device,
            self.dist.rank,
            self.dist.world_size,
        )
        batches = iterate(loader, self.skipped)
        if self.iteration < cfg.max_iters:  # the data can be read: only now is the run directory created
            first = self._next_batch(batches)
            batches = itertools.chain([first] if first is not None else [], batches)
        run_log = self._open_run()
        bar = progress_bar(cfg.max_iters, "train", self.progress, unit="it", initial=self.iteration)
        metrics = validation = None
        self.model.train()
        with (
            _stop_signals(self._handle_signal),
            contextlib.closing(bar),
            contextlib.closing(run_log or _NoLog()),
            self._tracking(),
            self._session() as session,
        ):
            while self.iteration < cfg.max_iters:
                with self._timed("data"):
                    batch = self._next_batch(batches)
                if batch is None:
                    break
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]  # the encoder's rate for this iteration
                with self._timed("step"):
                    losses = self._step(batch)
                self.iteration += 1
                bar.update(1)
                if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.max_iters:
                    with self._timed("logging"):
                        losses = {
                            key: value / self.dist.world_size
                            for key, value in zip(
                                losses,
                                all_reduce_sum(
                                    self.dist, torch.tensor(list(losses.values()), dtype=torch.float64)
                                ).tolist(),
                            )
                        }
                        bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}")
                        if run_log is not None:
                            row = {**losses, "lr": lr, "seconds_per_iter": round(time.perf_counter() - start, 4)}
                            run_log.train(self.iteration, row)
                            self.tracker.log_metrics(self.iteration, tracked_metrics("train", row))
                if self.iteration % cfg.eval_interval == 0 or self.iteration == cfg.max_iters:
                    with self._timed("validation"):
                        scores = ImageScores(self.classes.num_classes)
                        metrics = self.validate(scores)
                        validation = Validation(self.iteration, metrics, scores)
                        self._record_validation(metrics, run_log)
                    if self.dist.is_main:
                        bar.write(
                            f"iter {self.iteration}: val mIoU {100 * metrics.miou:.2f}  (best {100 * self.best_miou:.2f})"
                        )
                if self.iteration % cfg.checkpoint_interval == 0 or self.iteration == cfg.max_iters:
                    with self._timed("checkpoints"):
                        self._save()
                    self._saved_iteration = self.iteration
                for callback in self.callbacks:
                    callback(self, self.iteration)
            if self._stop_requested and self._saved_iteration != self.iteration:
                self._save()
            if self._stop_requested:
                session["outcome"] = "stopped"
        if self.skipped.count and self.dist.is_main:
            log.warning("%s", self.skipped.summary())
        return TrainResult(
            self.run.path,
            self.run.last,
            self.run.best if self.run.best.exists() else None,
            self.best_miou,
            self.iteration,
            self._stop_requested,
            metrics,
            self._stop_signal,
            self.skipped,
            validation,
            dict(self.timings),
        )

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        """Add the wall time of the block to `timings[phase]` (data, step, logging, validation, checkpoints)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """Close the tracker when the session ends, with its outcome (as run.json records it)."""
        try:
            yield
        except BaseException as exc:
            self.tracker.close("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed")
            raise
        self.tracker.close("stopped" if self._stop_requested else "finished")

    def _session(self) -> contextlib.AbstractContextManager[dict[str, Any]]:
        """Rank 0: this `train` session recorded in run.json (command, software, hardware, wall time, outcome)."""
        if not self.dist.is_main:
            return contextlib.nullcontext({})
        record = {
            "command": self.command,
            "start_iteration": self.iteration,
            "software": software(),
            "hardware": hardware(self.device),
            "processes": self.dist.world_size,
        }
        return self.run.session(record, iteration=lambda: self.iteration)

    def _open_run(self) -> RunLog | None:
        """Rank 0: create the run directory (bringing `last.safetensors` up to the resume state if a kill
        came between them), open its logs and its tracker."""
        if not self.dist.is_main:
            return None
        self.run.create(self.config)
        if self.iteration and self.run.last_iteration() != self.iteration:
            save_checkpoint(self.run.last, self.model, self.config, iteration=self.iteration, best_miou=self.best_miou)
        loggers = self.config.train.loggers
        run_log = RunLog(self.run, self.iteration, tensorboard="tensorboard" in loggers)
        tags = {"command": self.command, **{f"hardware.{k}": v for k, v in hardware(self.device).items()}}
        self.tracker = open_tracker(self.run, self.config, self.iteration, self.experiment, tags)
        return run_log

    def _step(self, batch: dict) -> dict[str, float]:
        train = self.config.train
        memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
        images = batch["image"].to(self.device, non_blocking=True).contiguous(memory_format=memory_format)
        masks = batch["mask"].to(self.device, non_blocking=True)
        pixels = None
        if self.dist.active:  # divide by the global count of labelled pixels, shared out among the processes
            pixels = all_reduce_sum(self.dist, (masks != IGNORE_INDEX).sum().double()) / self.dist.world_size
        # dropout draws from a seed of (run seed, iteration, rank): resumable at any iteration, any world size
        torch.manual_seed((train.seed * 1_000_003 + self.iteration) * 4096 + self.dist.rank)
        with torch.autocast(
            self.device.type, dtype=AMP_DTYPES.get(self.amp, torch.bfloat16), enabled=self.amp != "none"
        ):
            outputs = self.network(images)
        losses = self.criterion({k: v.float() for k, v in outputs.items()}, masks, pixels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(losses["loss"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses["loss"].backward()
            self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in losses.items()}


class _NoLog:
    """What the other ranks close instead of a RunLog."""

    def close(self) -> None:
        pass


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
