"""An exported `.onnx` file run by onnxruntime, behind the PyTorch model's call contract.

`OnnxModel(path)(x)` takes a normalised (N, C, H, W) float tensor and returns logits (N, K, H, W)
as a tensor, so every inference protocol (whole, slide, multi-scale, flip) and `predict` work
unchanged. The card (classes, mean/std) and config come from the file's metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import EvalConfig
from ..errors import CheckpointError, DataError
from ..inference.predict import predict_image
from .metadata import read_export_metadata
from .optional import import_deploy_module


def default_threads() -> int:
    """Intra-op threads for onnxruntime: torch's count, which follows OMP_NUM_THREADS and `--threads`."""
    return torch.get_num_threads()


def open_session(path: str | Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on `path` with `threads` intra-op threads (default `default_threads()`)."""
    onnxruntime = import_deploy_module("onnxruntime")  # optional (extra `deploy`): only when an ONNX file is used
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for invalid graphs
        raise CheckpointError(f"{path}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None


class OnnxModel:
    """An ONNX model exported by `pspnet export`, run on the CPU by onnxruntime; `metadata` holds the
    file's entries, `card` and `config` what they describe."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = open_session(self.path, threads)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.card, self.config = read_export_metadata(self.metadata, str(self.path))
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(
                f"{self.path}: expected one 4-d image input, found {[(i.name, i.shape) for i in inputs]}"
            )
        self.input_name = inputs[0].name

    @property
    def classes(self):
        return self.card.classes

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K, H, W) of a normalised float batch (N, C, H, W), C the model's input channels."""
        channels = self.card.in_channels
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DataError(f"{self.path}: the model takes a float batch (N, {channels}, H, W), got {shape}")
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        try:
            (logits,) = self.session.run(None, {self.input_name: array})
        except Exception as exc:  # onnxruntime's own exception types
            raise DataError(
                f"{self.path}: onnxruntime failed on an input of shape {tuple(x.shape)}: {str(exc).splitlines()[0]}"
            ) from None
        return torch.from_numpy(logits).to(x.device)

    def predict(self, image: Any, settings: EvalConfig | None = None) -> np.ndarray:
        """Label map (H, W) uint8 of one image, as `PSPNet.predict`."""
        return predict_image(self, image, settings)
