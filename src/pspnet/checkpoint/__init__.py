"""Checkpoint files: pspnet's native safetensors format (native.py), the semseg and mmsegmentation
formats (reference.py), and loading whichever a file holds, exported ONNX included, on a backend (load.py)."""

from .load import BACKENDS, load_checkpoint, load_model, load_pytorch_checkpoint
from .native import load_strict, read_metadata, save_checkpoint
from .reference import convert_checkpoint

__all__ = [
    "BACKENDS",
    "load_checkpoint",
    "load_model",
    "load_pytorch_checkpoint",
    "save_checkpoint",
    "read_metadata",
    "load_strict",
    "convert_checkpoint",
]
