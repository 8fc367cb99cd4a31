"""pspnet's own checkpoint format: one `.safetensors` file, the model's tensors plus a JSON document.

The JSON (`__metadata__["pspnet"]` in the safetensors header) holds the resolved config, the model
card (class names and palette, normalisation) and training progress. Writes are atomic (temp file
+ rename); reads validate the document and name the file and the field that is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..card import ModelCard
from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..io.files import atomic_path
from ..io.weights import read_safetensors_header, read_state_dict, require_file
from ..models import PSPNet
from ..models.state_dicts import compare_state_dicts

FORMAT_NAME = "pspnet"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: PSPNet, config: Config, **extra: Any) -> Path:
    """Write `model`'s weights, card and `config` (plus `extra` fields) atomically."""
    path = Path(path)
    meta = {"format_version": FORMAT_VERSION, "config": config.to_dict(), **model.card.to_dict(), **extra}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME, FORMAT_NAME: json.dumps(meta)})
    return path


def is_native(path: str | Path) -> bool:
    """Whether a safetensors file carries pspnet metadata."""
    header = read_safetensors_header(path)
    return header.get("format") == FORMAT_NAME and FORMAT_NAME in header


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a native checkpoint, checked: `config` builds and the model card is valid."""
    path = require_file(path)
    header = read_safetensors_header(path)
    if header.get("format") != FORMAT_NAME or FORMAT_NAME not in header:
        raise CheckpointError(f"{path}: a safetensors file without pspnet metadata; convert it with `pspnet convert`")
    try:
        meta = json.loads(header[FORMAT_NAME])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: the pspnet metadata is not valid JSON ({exc})") from None
    ModelCard.from_dict(meta, str(path))
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path}: metadata field 'config' is missing or not an object")
    return meta


def read_config(path: str | Path, meta: dict[str, Any]) -> Config:
    """The config stored in a native checkpoint's (validated) metadata."""
    try:
        return Config.from_dict(meta["config"], source=f"{path} (metadata field 'config')")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail listing all missing, unexpected and wrong-shaped keys."""
    diff = compare_state_dicts(model.state_dict(), state)
    if diff:
        raise CheckpointError(diff.describe(f"{source}: weights do not match the model"))
    model.load_state_dict(state, strict=True)


def load_native(path: str | Path) -> tuple[PSPNet, Config, dict[str, Any]]:
    """An eval-mode model, its config and metadata from a native checkpoint."""
    meta = read_metadata(path)
    config = read_config(path, meta)
    card = ModelCard.from_dict(meta, str(path))
    try:
        model = PSPNet(config=config.model, classes=card.classes, mean=card.mean, std=card.std)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: the stored config does not build a model: {exc}") from None
    load_strict(model, read_state_dict(path), str(path))
    return model.eval(), config, meta
