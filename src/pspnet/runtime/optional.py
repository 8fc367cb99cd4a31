"""The optional dependencies of the `deploy` extra (onnx, onnxscript, onnxruntime), imported on use."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError


def import_deploy_module(name: str) -> ModuleType:
    """Import `name` (e.g. `onnxruntime.quantization`), or a ConfigError saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ConfigError(
            f"{name.split('.')[0]} is not installed; ONNX export and inference need the deploy extra: "
            "pip install 'pspnet[deploy]'"
        ) from None
