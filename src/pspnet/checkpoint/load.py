"""Loading any checkpoint pspnet understands; the format is detected from the file's contents, not its name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..io.weights import is_safetensors, require_file
from ..models import PSPNet
from .native import load_native
from .reference import load_reference


def load_checkpoint(path: str | Path) -> tuple[PSPNet, Config, dict[str, Any]]:
    """A checkpoint's model (eval mode), resolved config and metadata.

    A native file carries its config; a semseg or mmsegmentation file gets one inferred from its
    tensors (see `pspnet.checkpoint.reference`).
    """
    path = require_file(path)
    if is_safetensors(path):
        return load_native(path)
    return load_reference(path)


def load_model(path: str | Path) -> PSPNet:
    """An eval-mode model from a checkpoint file; `forward(x)` gives logits (N, K, H, W) at the input size."""
    return load_checkpoint(path)[0]
