"""Compiled inference (`--backend torch-compile`, `torch-compile-bf16`): torch.compile (Inductor) on a copy of
the model whose BatchNorm layers are folded into the convolutions before them.

Heights and widths are dynamic (one compilation serves every input size). Inductor's FX graph cache keeps the
compiled code between processes, in `TORCHINDUCTOR_CACHE_DIR` (default `~/.cache/pspnet/inductor`). Without a
C++ compiler, or when compilation fails, the model logs why in one line and runs eagerly (fp32 or as
`torch-bf16`), unless strict mode is on (`strict=True` or `PSPNET_COMPILE_STRICT=1`): then it raises.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..config import EvalConfig
from ..errors import ConfigError
from ..inference.predict import predict_image
from .bf16 import BFloat16Model

log = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"
STRICT_ENV = "PSPNET_COMPILE_STRICT"
DEFAULT_CACHE = Path("~/.cache/pspnet/inductor")
FOLD_TOLERANCE = 1e-4
"""Largest relative L2 difference between a model and its BatchNorm-folded copy accepted as the same model."""


class CompileError(ConfigError):
    """torch.compile cannot run here (strict mode)."""


def strict_from_env() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes")


def use_cache_dir() -> Path:
    """Point Inductor's caches at `TORCHINDUCTOR_CACHE_DIR`, setting it to the default when unset."""
    path = Path(os.environ.setdefault(CACHE_ENV, str(DEFAULT_CACHE.expanduser())))
    import torch._inductor.config  # torch.compile's modules load only when a model is compiled

    torch._inductor.config.fx_graph_cache = True
    return path


def missing_compiler(device: torch.device) -> str | None:
    """Why Inductor cannot build CPU kernels here (no C++ compiler), or None."""
    if device.type != "cpu":
        return None
    import torch._inductor.config

    compiler = torch._inductor.config.cpp.cxx[1]  # from CXX, else g++
    if shutil.which(compiler) is None:
        return f"no C++ compiler found ({compiler!r}; set CXX to one)"
    return None


def fold_batchnorm(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """An eval-mode copy of `model` with every BatchNorm that directly follows a convolution folded into it.

    Which BatchNorm follows which convolution is found by running `example` through the copy (a BatchNorm
    whose input is a convolution's output tensor); each folded pair is replaced by the fused convolution and
    an identity, and the result is checked against `model` on `example`.
    """
    folded = copy.deepcopy(model).eval()
    outputs: dict[int, str] = {}
    pairs: list[tuple[str, str]] = []
    names = {module: name for name, module in folded.named_modules()}
    seen: set[str] = set()

    def record(module: nn.Module, inputs: tuple, output: Any) -> None:
        name = names[module]
        if isinstance(module, nn.Conv2d):
            outputs[id(output)] = name
        elif id(inputs[0]) in outputs and name not in seen:
            pairs.append((outputs[id(inputs[0])], name))
            seen.add(name)

    hooks = [
        module.register_forward_hook(record)
        for module in folded.modules()
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d)
    ]
    try:
        with torch.no_grad():
            expected = folded(example)
    finally:
        for hook in hooks:
            hook.remove()
    convs = [conv for conv, _ in pairs]
    for conv, bn in pairs:
        if convs.count(conv) == 1:  # a convolution feeding two BatchNorms stays as it is
            _replace(folded, conv, fuse_conv_bn_eval(folded.get_submodule(conv), folded.get_submodule(bn)))
            _replace(folded, bn, nn.Identity())
    with torch.no_grad():
        actual = folded(example)
    error = float((actual - expected).norm() / expected.norm().clamp_min(1e-12))
    if not error <= FOLD_TOLERANCE:
        raise CompileError(f"folding BatchNorm into the convolutions changed the output (relative L2 {error:.1e})")
    return folded


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def compile_module(module: Callable) -> Callable:
    """`torch.compile(module)` with Inductor (sizes marked dynamic become symbolic), the cache directory set."""
    use_cache_dir()
    return torch.compile(module, backend="inductor", dynamic=None)


def compile_training(module: nn.Module, device: torch.device, strict: bool | None = None) -> nn.Module:
    """`module` compiled for training (`train.compile`), or `module` itself, with a warning, where no C++
    compiler is found (`strict`, default `PSPNET_COMPILE_STRICT`: raise `CompileError` instead)."""
    reason = missing_compiler(device)
    if reason is None:
        return compile_module(module)
    if strict_from_env() if strict is None else strict:
        raise CompileError(f"train.compile: {reason} (strict mode, {STRICT_ENV}=1)")
    log.warning("train.compile: %s; training eagerly", reason)
    return module


class CompiledModel(nn.Module):
    """`model` compiled by Inductor (BatchNorm folded, fp32 or bf16), with the call contract of `PSPNet`:
    normalised float batch in, float32 logits at the input size out.

    The compiled model is a BatchNorm-folded copy of `model`; `model` itself is kept as the eager fallback,
    which runs when compilation is impossible or fails (in fp32, or as `BFloat16Model` of it); `strict`
    (default: `PSPNET_COMPILE_STRICT`) raises `CompileError` instead.
    """

    def __init__(self, model: nn.Module, bf16: bool = False, strict: bool | None = None):
        super().__init__()
        self.card = model.card
        self.bf16 = bf16
        self.strict = strict_from_env() if strict is None else strict
        self.compilations = 0
        """Graphs Dynamo compiled during this model's calls: 1 for inputs of any size (see docs/compile.md)."""
        self.fallback_reason: str | None = None
        device = next(model.parameters()).device
        example = torch.randn(1, model.card.in_channels, 33, 33, generator=torch.Generator().manual_seed(0))
        folded = fold_batchnorm(model, example.to(device))
        self.eager = model.eval()  # converted to bf16 (`BFloat16Model`) only if it has to run
        self.model = BFloat16Model(folded) if bf16 else folded
        self.compiled = compile_module(self.model.forward)  # a function, not a submodule: no second state dict
        self._checked = False

    @property
    def classes(self):
        return self.card.classes

    @property
    def compiled_ok(self) -> bool:
        return self.fallback_reason is None

    def _fall_back(self, reason: str) -> None:
        name = "torch-compile-bf16" if self.bf16 else "torch-compile"
        if self.strict:
            raise CompileError(f"{name}: {reason} (strict mode, {STRICT_ENV}=1)")
        eager = "torch-bf16" if self.bf16 else "torch"
        log.warning("%s: %s; running on %s (eager) instead", name, reason, eager)
        self.fallback_reason = reason

    def _run_eager(self, x: torch.Tensor) -> torch.Tensor:
        if self.bf16 and not isinstance(self.eager, BFloat16Model):
            self.eager = BFloat16Model(self.eager)
        return self.eager(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._checked:
            self._checked = True
            reason = missing_compiler(x.device)
            if reason:
                self._fall_back(reason)
        if self.fallback_reason is not None:
            return self._run_eager(x)
        if x.ndim == 4:
            torch._dynamo.mark_dynamic(x, 2)
            torch._dynamo.mark_dynamic(x, 3)
        before = _frames_compiled()
        try:
            logits = self.compiled(x)
        except Exception as error:
            logits = self._run_eager(x)  # the model's own errors (a wrong input) raise here, as they do eagerly
            self._fall_back(f"compilation failed: {type(error).__name__}: {_first_line(error)}")
            return logits
        finally:
            self.compilations += _frames_compiled() - before
        return logits.float().contiguous()

    def predict(self, image: Any, settings: EvalConfig | None = None) -> np.ndarray:
        """Label map (H, W) uint8 of one image, as `PSPNet.predict`."""
        return predict_image(self, image, settings)


def _frames_compiled() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else "no message"
