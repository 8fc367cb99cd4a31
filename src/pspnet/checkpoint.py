"""Checkpoints: our native format (safetensors + JSON metadata) and pickle-safe reading of others.

A native checkpoint is one `.safetensors` file: the model's tensors, plus a JSON document in the
safetensors header (`__metadata__["pspnet"]`) holding the full resolved config, class names and
palette, the normalisation and training progress. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .classes import ClassInfo
from .config import Config, ModelConfig
from .errors import CheckpointError, ConfigError
from .utils.io import atomic_path

FORMAT_NAME = "pspnet"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, model: torch.nn.Module, config: Config, **extra: Any) -> Path:
    """Write `model`'s weights and metadata (config, classes, normalisation, `extra`) atomically."""
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "classes": model.classes.to_dict(),
        "mean": list(model.mean),
        "std": list(model.std),
        **extra,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT_NAME, FORMAT_NAME: json.dumps(meta)})
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a native checkpoint."""
    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {exc}") from None
    if header.get("format") != FORMAT_NAME or FORMAT_NAME not in header:
        raise CheckpointError(f"{path}: a safetensors file without pspnet metadata; convert it with `pspnet convert`")
    return json.loads(header[FORMAT_NAME])


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file or a torch file loaded with `weights_only=True` (no pickle code runs).

    A `{'state_dict': ...}` or `{'model': ...}` wrapper is unwrapped.
    """
    path = _existing(path)
    if _is_safetensors(path):
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: handle.get_tensor(key) for key in handle.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file: {exc}") from None
    state = load_torch_file(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


def load_torch_file(path: str | Path) -> Any:
    """`torch.load(weights_only=True, map_location='cpu')` with errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated zips, pickles with code, etc.
        raise CheckpointError(f"{path}: cannot be read as a checkpoint (truncated, corrupt, or not a weights file): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def _is_safetensors(path: Path) -> bool:
    """safetensors files start with an 8-byte little-endian header length followed by '{'."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def create_model(config: Config | ModelConfig, classes: ClassInfo | None = None) -> torch.nn.Module:
    """Build a PSPNet from a config; `classes` sets names/palette (and num_classes if unset)."""
    from .models import PSPNet

    model_cfg = config.model if isinstance(config, Config) else config
    num_classes = model_cfg.num_classes or (classes.num_classes if classes else None)
    if classes is not None and num_classes != classes.num_classes:
        raise ConfigError(f"model.num_classes is {num_classes} but the dataset has {classes.num_classes} classes")
    model = PSPNet(num_classes=num_classes, config=model_cfg)
    if classes is not None:
        model.classes = classes
    if isinstance(config, Config):
        model.mean, model.std = tuple(config.data.mean), tuple(config.data.std)
    return model


def load_checkpoint(path: str | Path) -> tuple[torch.nn.Module, Config, dict[str, Any]]:
    """A checkpoint's model (eval mode), resolved config and metadata.

    The format is detected from the file's contents: a native file carries its config; a semseg or
    mmsegmentation file gets one inferred from its tensors (see `pspnet.convert.load_reference`).
    """
    path = _existing(path)
    if not _is_safetensors(path):
        from .convert import load_reference

        return load_reference(path)
    meta = read_metadata(path)
    try:
        config = Config.from_dict(meta["config"], source=str(path))
    except (KeyError, ConfigError) as exc:
        raise CheckpointError(f"{path}: invalid metadata: {exc}") from None
    model = create_model(config, ClassInfo.from_dict(meta["classes"]))
    model.mean, model.std = tuple(meta["mean"]), tuple(meta["std"])
    load_strict(model, read_state_dict(path), str(path))
    return model.eval(), config, meta


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail listing all missing, unexpected and wrong-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                        for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = [f"{source}: weights do not match the model"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                parts.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state, strict=True)


def load_model(path: str | Path) -> torch.nn.Module:
    """An eval-mode model from a checkpoint file; `forward(x)` gives logits (N, K, H, W) at the input size.

    The format (pspnet, semseg or mmsegmentation) is detected from the file's contents, not its name.
    """
    return load_checkpoint(path)[0]
