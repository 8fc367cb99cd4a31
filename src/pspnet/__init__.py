"""pspnet: Pyramid Scene Parsing Network for semantic segmentation (train, evaluate, predict).

The public API is imported on first use, so that `import pspnet` (and the `pspnet` command's
help) does not pay for torch and timm until a model is needed.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "PSPNet": "pspnet.models",
    "create_model": "pspnet.models",
    "load_model": "pspnet.checkpoint",
    "Config": "pspnet.config",
    "load_config": "pspnet.config",
    "ClassInfo": "pspnet.classes",
    "ModelCard": "pspnet.card",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:  # lazy: heavy modules (torch, timm) load on first use
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pspnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
