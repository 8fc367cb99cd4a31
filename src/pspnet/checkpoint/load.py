"""Loading any model file pspnet understands; the format is detected from the file's contents, not its name.

PyTorch checkpoints (native safetensors, semseg, mmsegmentation) run on a `backend` (`torch`: eager
fp32, `torch-bf16`: see `pspnet.runtime.bf16`); `.onnx` files exported by `pspnet export` run on
onnxruntime. Every result has the same call contract (normalised NCHW float in, logits at the
input size out), a `.card` and `.predict`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..io.weights import is_onnx, is_safetensors, require_file
from ..models import PSPNet
from ..runtime.bf16 import BFloat16Model
from ..runtime.onnx_model import OnnxModel, load_onnx
from .native import load_native
from .reference import load_reference

BACKENDS = ("torch", "torch-bf16")
"""Backends of PyTorch checkpoints; ONNX files always run on onnxruntime."""

Model = PSPNet | BFloat16Model | OnnxModel


def load_pytorch_checkpoint(path: str | Path) -> tuple[PSPNet, Config, dict[str, Any]]:
    """A PyTorch checkpoint's PSPNet (eval mode, fp32), config and metadata; an ONNX file is refused."""
    path = require_file(path)
    if is_safetensors(path):
        return load_native(path)
    if is_onnx(path):
        raise CheckpointError(
            f"{path} is an ONNX file; this needs a PyTorch checkpoint (.safetensors, semseg or mmseg .pth)"
        )
    return load_reference(path)


def load_checkpoint(
    path: str | Path, backend: str | None = None, threads: int | None = None
) -> tuple[Model, Config, dict[str, Any]]:
    """A model file's model (eval mode, on `backend`), resolved config and metadata.

    A native file carries its config, and so does an exported ONNX file; a semseg or mmsegmentation
    file gets one inferred from its tensors (see `pspnet.checkpoint.reference`). `threads` sets the
    intra-op threads (torch: process-wide `torch.set_num_threads`; default: OMP_NUM_THREADS or the cores).
    """
    path = require_file(path)
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    if not is_safetensors(path) and is_onnx(path):
        if backend is not None:
            raise ConfigError(
                f"{path} is an ONNX file: it runs on onnxruntime, --backend {backend} applies to PyTorch checkpoints"
            )
        return load_onnx(path, threads)
    model, config, meta = load_pytorch_checkpoint(path)
    return (BFloat16Model(model) if backend == "torch-bf16" else model), config, meta


def backend_name(model: Model) -> str:
    """The backend a loaded model runs on: `torch`, `torch-bf16` or `onnxruntime`."""
    if isinstance(model, OnnxModel):
        return "onnxruntime"
    return "torch-bf16" if isinstance(model, BFloat16Model) else "torch"


def load_model(path: str | Path, backend: str | None = None, threads: int | None = None) -> Model:
    """An eval-mode model from a checkpoint or ONNX file; `model(x)` gives logits (N, K, H, W) at the
    input size and `model.predict(image)` a label map. See `load_checkpoint` for `backend` and `threads`."""
    return load_checkpoint(path, backend, threads)[0]
