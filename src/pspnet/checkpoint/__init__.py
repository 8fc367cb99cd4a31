"""Checkpoint files: pspnet's native safetensors format (native.py), the semseg and mmsegmentation
formats (reference.py), and loading whichever a file holds (load.py)."""

from .load import load_checkpoint, load_model
from .native import load_strict, read_metadata, save_checkpoint
from .reference import convert_checkpoint

__all__ = ["load_checkpoint", "load_model", "save_checkpoint", "read_metadata", "load_strict", "convert_checkpoint"]
