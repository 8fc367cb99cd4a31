"""Reading weight files without running pickled code: safetensors, or torch files with `weights_only=True`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError

STATE_DICT_WRAPPERS = ("state_dict", "model")
"""Keys under which training scripts nest a state dict (`{'state_dict': ...}`, `{'model': ...}`)."""


def require_file(path: str | Path) -> Path:
    """`path` as a Path; CheckpointError when it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def is_safetensors(path: str | Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length followed by '{'."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def is_onnx(path: str | Path) -> bool:
    """ONNX files are a serialised ModelProto whose first field is `ir_version`: tag byte 0x08, then a small varint."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return len(head) == 2 and head[0] == 0x08 and 0 < head[1] < 0x80


def read_safetensors_header(path: str | Path) -> dict[str, str]:
    """The `__metadata__` strings of a safetensors file (empty when it has none)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None


def load_torch_file(path: str | Path) -> Any:
    """`torch.load(weights_only=True, map_location='cpu')` with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated zips, pickles with code, etc.
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint (truncated, corrupt, or not a weights file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or of a torch file; a `{'state_dict': ...}` or `{'model': ...}` wrapper is unwrapped."""
    path = require_file(path)
    if is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file: {exc}") from None
    state = load_torch_file(path)
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())
    ):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
