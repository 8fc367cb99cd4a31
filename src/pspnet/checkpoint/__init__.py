"""Checkpoint files: pspnet's native safetensors format (native.py), the semseg and mmsegmentation
formats (reference.py), and opening whichever a file holds, exported ONNX included, as one `LoadedModel`
(load.py)."""

from .load import BACKENDS, LoadedModel, load_model, open_model
from .native import load_strict, read_metadata, save_checkpoint
from .reference import convert_checkpoint

__all__ = [
    "BACKENDS",
    "LoadedModel",
    "open_model",
    "load_model",
    "save_checkpoint",
    "read_metadata",
    "load_strict",
    "convert_checkpoint",
]
