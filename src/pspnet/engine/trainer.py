"""The training loop: SGD with the poly policy, periodic validation, atomic checkpoints, exact resume.

A run directory holds:
  config.yaml                      the resolved config
  checkpoints/last.safetensors     latest weights + metadata (what `pspnet evaluate/predict` read)
  checkpoints/best.safetensors     weights with the best validation mIoU
  checkpoints/last.resume.pt       model, optimizer, scheduler, RNG and iteration (for --resume)
  train_log.csv, val_log.csv       metrics; tensorboard/ has the same as TensorBoard events
"""

from __future__ import annotations

import contextlib
import csv
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import yaml
from tqdm.auto import tqdm

from ..checkpoint import create_model, load_model, load_strict, load_torch_file, save_checkpoint
from ..config import Config, dump_yaml
from ..data.build import build_dataset, build_eval_loader, build_train_loader, iterate
from ..errors import CheckpointError, ConfigError
from ..losses import PSPLoss
from ..metrics import SegmentationMetrics, format_table
from ..utils.io import atomic_path
from .evaluator import evaluate

log = logging.getLogger(__name__)

RESUMABLE_CHANGES = {
    "train.log_interval", "train.eval_interval", "train.checkpoint_interval", "train.device", "data.num_workers",
}
"""Config keys that may differ between a run and its --resume (they do not change the result)."""


def poly_lr_factor(iteration: int, max_iters: int, power: float) -> float:
    """The paper's poly policy: lr = base_lr * (1 - iter / max_iter) ** power."""
    return (1 - iteration / max_iters) ** power


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{name}' requested but CUDA is not available")
    return device


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
    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_miou: float | None
    iteration: int
    stopped_early: bool


class Trainer:
    """Trains a PSPNet as configured, writing everything into `run_dir`."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, progress: bool = True):
        self.config = Config.from_dict(config.to_dict())  # a private copy: num_classes gets filled in
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.progress = progress
        self.callbacks: list[Callable[[Trainer, int], None]] = []
        self._stop_requested = False
        self._prepare_run_dir(resume)

        train = config.train
        self.device = resolve_device(train.device)
        if train.amp and self.device.type != "cuda":
            raise ConfigError("train.amp: mixed precision needs a CUDA device")
        torch.manual_seed(train.seed)
        self.train_set = build_dataset(config.data, config.data.train_split, train=True)
        self.val_set = build_dataset(config.data, config.data.val_split, train=False)
        self.classes = self.train_set.classes
        self.model = create_model(config, self.classes)
        if train.init_from and not resume:
            load_strict(self.model, load_model(train.init_from).state_dict(), f"train.init_from {train.init_from}")
        self.model.to(self.device)
        self.config.model.num_classes = self.classes.num_classes
        self.optimizer, self.scheduler = build_optimizer(self.model, config)
        self.criterion = PSPLoss(aux_weight=train.aux_weight, cls_weight=train.cls_weight)
        self.iteration = 0
        self.best_miou: float | None = None
        if resume:
            self._load_resume_state()

    # ---------------------------------------------------------------- run directory
    def _prepare_run_dir(self, resume: bool) -> None:
        config_path = self.run_dir / "config.yaml"
        if resume:
            if not (self.ckpt_dir / "last.resume.pt").is_file():
                raise CheckpointError(f"--resume: no resume state in {self.ckpt_dir} (last.resume.pt is missing)")
            saved = Config.from_dict(yaml.safe_load(config_path.read_text()), source=str(config_path))
            if self.config.model.num_classes is None:
                self.config.model.num_classes = saved.model.num_classes
            changed = sorted(k for k in _diff_keys(saved.to_dict(), self.config.to_dict()) if k not in RESUMABLE_CHANGES)
            if changed:
                raise ConfigError(
                    f"--resume: the config differs from the run's {config_path} in {', '.join(changed)}; "
                    "resume with the same config (or start a new run with --out)"
                )
        elif (self.ckpt_dir / "last.safetensors").exists():
            raise ConfigError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def _write_config(self) -> None:
        with atomic_path(self.run_dir / "config.yaml") as tmp:
            tmp.write_text(dump_yaml(self.config))

    # ---------------------------------------------------------------- checkpoints
    def _save(self) -> None:
        meta = {"iteration": self.iteration, "best_miou": self.best_miou}
        save_checkpoint(self.ckpt_dir / "last.safetensors", self.model, self.config, **meta)
        state = {
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        with atomic_path(self.ckpt_dir / "last.resume.pt") as tmp:
            torch.save(state, tmp)
        self._saved_iteration = self.iteration

    def _load_resume_state(self) -> None:
        path = self.ckpt_dir / "last.resume.pt"
        state = load_torch_file(path)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            self.iteration, self.best_miou = int(state["iteration"]), state["best_miou"]
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path}: resume state does not match this model/config: {exc}") from None
        log.info("resuming %s at iteration %d", self.run_dir, self.iteration)

    # ---------------------------------------------------------------- logging
    def _open_logs(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        for name in ("train_log.csv", "val_log.csv"):
            _truncate_csv(self.run_dir / name, self.iteration)
        self.tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=self.iteration or None)

    def _log_row(self, name: str, row: dict) -> None:
        path = self.run_dir / name
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def validate(self) -> SegmentationMetrics:
        """Metrics of the current model on the validation split."""
        cfg = self.config
        loader = build_eval_loader(self.val_set, cfg.data, cfg.eval.batch_size, self.device)
        return evaluate(self.model, loader, self.classes.num_classes, cfg.eval, self.device, self.progress, desc="validate")

    def _record_validation(self, metrics: SegmentationMetrics) -> None:
        """Log validation metrics and keep the best checkpoint."""
        row = {"iteration": self.iteration, "miou": metrics.miou, "macc": metrics.macc, "aacc": metrics.aacc}
        self._log_row("val_log.csv", row)
        for key in ("miou", "macc", "aacc"):
            self.tensorboard.add_scalar(f"val/{key}", row[key], self.iteration)
        if self.best_miou is None or metrics.miou > self.best_miou:
            self.best_miou = metrics.miou
            save_checkpoint(self.ckpt_dir / "best.safetensors", self.model, self.config, iteration=self.iteration, best_miou=self.best_miou)

    # ---------------------------------------------------------------- loop
    def request_stop(self) -> None:
        """Finish the current iteration, save a checkpoint and return (what Ctrl-C does)."""
        self._stop_requested = True

    def _handle_signal(self, signum, frame) -> None:
        if self._stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        log.warning("stop requested: finishing this iteration and saving a checkpoint (Ctrl-C again to abort)")
        self._stop_requested = True

    def train(self) -> TrainResult:
        cfg = self.config.train
        self._write_config()
        self._open_logs()
        self._saved_iteration = self.iteration
        loader = build_train_loader(self.train_set, self.config.data, cfg.batch_size, cfg.seed, self.iteration, self.device)
        self.model.train()
        bar = tqdm(total=cfg.max_iters, initial=self.iteration, desc="train", unit="it", disable=not self.progress, dynamic_ncols=True)
        metrics = None
        with _stop_signals(self._handle_signal), contextlib.closing(bar), contextlib.closing(self.tensorboard):
            batches = iterate(loader)
            while self.iteration < cfg.max_iters and not self._stop_requested:
                start = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]  # the encoder's rate for this iteration
                losses = self._step(next(batches))
                self.iteration += 1
                bar.update(1)
                if self.iteration % cfg.log_interval == 0 or self.iteration == cfg.max_iters:
                    bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{lr:.2e}")
                    self._log_row("train_log.csv", {"iteration": self.iteration, **losses, "lr": lr,
                                                    "seconds_per_iter": round(time.perf_counter() - start, 4)})
                    for key, value in losses.items():
                        self.tensorboard.add_scalar(f"train/{key}", value, self.iteration)
                    self.tensorboard.add_scalar("train/lr", lr, self.iteration)
                if self.iteration % cfg.eval_interval == 0 or self.iteration == cfg.max_iters:
                    metrics = self.validate()
                    self._record_validation(metrics)
                    bar.write(f"iter {self.iteration}: val mIoU {100 * metrics.miou:.2f}  (best {100 * self.best_miou:.2f})")
                if self.iteration % cfg.checkpoint_interval == 0 or self.iteration == cfg.max_iters:
                    self._save()
                for callback in self.callbacks:
                    callback(self, self.iteration)
            if self._stop_requested and self._saved_iteration != self.iteration:
                self._save()
        best = self.ckpt_dir / "best.safetensors"
        if metrics is not None:
            print(format_table(metrics, self.classes.names, title=f"validation at iteration {self.iteration}"))
        return TrainResult(self.run_dir, self.ckpt_dir / "last.safetensors", best if best.exists() else None,
                           self.best_miou, self.iteration, self._stop_requested)

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


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in set(a) | set(b):
        left, right = a.get(key), b.get(key)
        if isinstance(left, dict) and isinstance(right, dict) and key not in ("encoder_kwargs", "options"):
            keys |= _diff_keys(left, right, f"{prefix}{key}.")
        elif left != right:
            keys.add(f"{prefix}{key}")
    return keys


def _truncate_csv(path: Path, iteration: int) -> None:
    """Drop log rows after `iteration` (written after the checkpoint a resumed run restarts from)."""
    if not path.exists():
        return
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = [rows[0]] + [row for row in rows[1:] if int(row[0]) <= iteration] if rows else []
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
