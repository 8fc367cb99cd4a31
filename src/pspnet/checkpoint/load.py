"""Opening any model file pspnet understands, once: `open_model` returns a `LoadedModel`.

The format is detected from the file's contents, not its name: pspnet's native safetensors, a semseg or
mmsegmentation checkpoint, an ONNX file from `pspnet export`, or a `.pt2` program (recognised, and refused:
loading one unpickles its constants). PyTorch checkpoints run on a `backend` (`torch`: eager fp32,
`torch-bf16`: see `pspnet.runtime.bf16`; `torch-compile`, `torch-compile-bf16`: see `pspnet.runtime.compiled`);
ONNX files run on onnxruntime. Every model has the same call
contract (normalised NCHW float in, logits at the input size out), a `.card` and `.predict`.

Every command that takes a model (evaluate, predict, serve, export, report) and the Python API work on the
one `LoadedModel` record: nothing asks again what the file is or reads its metadata a second time.
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..card import ModelCard
from ..config import IMAGENET_MEAN, IMAGENET_STD, Config, EvalConfig
from ..errors import CheckpointError, ConfigError
from ..inference.predict import model_device
from ..io.weights import is_onnx, is_safetensors, require_file
from ..models import PSPNet
from ..runtime.bf16 import BFloat16Model
from ..runtime.compiled import CompiledModel
from ..runtime.onnx_model import OnnxModel
from .native import load_native
from .reference import load_reference

BACKENDS = ("torch", "torch-bf16", "torch-compile", "torch-compile-bf16")
"""Backends of PyTorch checkpoints; ONNX files always run on onnxruntime."""

FORMATS = ("pspnet", "semseg", "mmseg", "onnx")
"""The formats `open_model` loads (`LoadedModel.format`)."""

NORMALIZATIONS = ("card", "config")
"""Where the input normalisation comes from (`LoadedModel.with_config`): the model card, or deliberately the config."""

Model = PSPNet | BFloat16Model | CompiledModel | OnnxModel


@dataclass(frozen=True)
class LoadedModel:
    """A model file opened once: the model on its backend, its card, config and metadata, and where it came from.

    `model` takes normalised (N, C, H, W) batches; `card` (classes, mean/std, input channels) is how every
    caller turns images into such batches, so a file is always run with the normalisation it was trained with.
    """

    model: Model
    config: Config
    """The file's config: stored in native and ONNX files, inferred from the tensors of semseg and mmseg files."""
    metadata: dict[str, Any]
    """Native files: the stored JSON document (iteration, ...); ONNX files: their metadata entries."""
    path: Path
    format: str
    """One of `FORMATS`."""
    backend: str
    """One of `BACKENDS`, or `onnxruntime`."""

    @property
    def card(self) -> ModelCard:
        return self.model.card

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @property
    def iteration(self) -> int | None:
        """The training iteration a native checkpoint was saved at (None for other files)."""
        return self.metadata.get("iteration") if self.format == "pspnet" else None

    def to(self, device: str | torch.device) -> LoadedModel:
        """This model on `device` (PyTorch backends; an ONNX model runs on the CPU and refuses any other)."""
        device = torch.device(device)
        if isinstance(self.model, torch.nn.Module):
            self.model.to(device)
        elif device.type != "cpu":
            raise ConfigError(
                f"{self.path} is an ONNX file: it runs on the CPU (onnxruntime); device {device} applies to "
                "PyTorch checkpoints"
            )
        return self

    def with_config(self, config: Config, normalization: str = "card", source: str = "the config") -> LoadedModel:
        """The same model run under `config` (another dataset's data section, an inference protocol applied).

        Images are normalised as the model was trained, so the card's mean/std replace `config`'s. A config
        that sets `data.mean`/`data.std` to other values (ImageNet's, the defaults, stand for "not set") is a
        ConfigError naming both, unless `normalization` is `config`: then the config's values deliberately
        replace the card's (for a model whose card is known to be wrong).
        """
        if normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
        card, data = self.card, config.data
        given = (tuple(data.mean), tuple(data.std))
        if normalization == "config":
            card = dataclasses.replace(card, mean=given[0], std=given[1])
            self.model.card = card
        elif given != (card.mean, card.std) and given != (IMAGENET_MEAN, IMAGENET_STD):
            raise ConfigError(
                f"{source} sets data.mean {list(given[0])} and data.std {list(given[1])}, but {self.path} was trained "
                f"with mean {list(card.mean)} and std {list(card.std)}: a model only gives its accuracy on images "
                "normalised as in training, so pspnet uses the checkpoint's values. Remove data.mean/std from the "
                "config, or pass --normalization config to use the config's values deliberately"
            )
        data = dataclasses.replace(data, mean=list(card.mean), std=list(card.std))
        return dataclasses.replace(self, config=dataclasses.replace(config, data=data))

    def predict(self, image: Any, settings: EvalConfig | None = None) -> np.ndarray:
        """Label map (H, W) uint8 of one image under `settings` (default: the file's own protocol)."""
        return self.model.predict(image, settings or self.config.eval)


def open_model(
    path: str | Path,
    backend: str | None = None,
    threads: int | None = None,
    device: str | torch.device | None = None,
    pytorch_only: bool = False,
) -> LoadedModel:
    """Open a model file: detect its format, build the model in eval mode on `backend` and `device`.

    `backend` None means the file's own (torch for checkpoints, onnxruntime for ONNX files); any of `BACKENDS`
    on an ONNX file is an error, and so is any ONNX file with `pytorch_only` (for training from
    a checkpoint's weights, or exporting it). `threads` sets the intra-op threads (torch: process-wide
    `torch.set_num_threads`; default: OMP_NUM_THREADS or the cores).
    """
    path = require_file(path)
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    file_format = detect_format(path)
    if file_format == "onnx":
        if pytorch_only:
            raise CheckpointError(
                f"{path} is an ONNX file; this needs a PyTorch checkpoint (.safetensors, semseg or mmseg .pth)"
            )
        if backend is not None:
            raise ConfigError(
                f"{path} is an ONNX file: it runs on onnxruntime, --backend {backend} applies to PyTorch "
                "checkpoints (.safetensors, semseg or mmseg .pth)"
            )
        onnx_model = OnnxModel(path, threads)
        loaded = LoadedModel(onnx_model, onnx_model.config, onnx_model.metadata, path, "onnx", "onnxruntime")
    else:
        if file_format == "pspnet":
            model, config, meta = load_native(path)
        else:
            model, config, meta = load_reference(path)
            file_format = meta["source_format"]
        backend = backend or "torch"
        wrapped = wrap_backend(model, backend)
        loaded = LoadedModel(wrapped, config, meta, path, file_format, backend)
    return loaded.to(device) if device is not None else loaded


def wrap_backend(model: PSPNet, backend: str) -> Model:
    """`model` (eval mode) on a PyTorch backend."""
    if backend == "torch-bf16":
        return BFloat16Model(model)
    if backend.startswith("torch-compile"):
        return CompiledModel(model, bf16=backend == "torch-compile-bf16")
    return model


def detect_format(path: Path) -> str:
    """`pspnet` (safetensors), `onnx`, or `torch` (a torch file: semseg, mmseg or unknown, decided by its keys);
    a `.pt2` program is refused here, with what to use instead."""
    if is_safetensors(path):
        return "pspnet"
    if is_onnx(path):
        return "onnx"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("extra/pspnet.json") or "/archive_format" in name for name in archive.namelist()):
                raise CheckpointError(
                    f"{path} is a torch.export program (.pt2): pspnet does not load these for inference, since "
                    "loading one unpickles its constants; use the .safetensors checkpoint it was exported from, "
                    "or export an .onnx file"
                )
    return "torch"


def load_model(path: str | Path, backend: str | None = None, threads: int | None = None) -> Model:
    """An eval-mode model from a checkpoint or ONNX file; `model(x)` gives logits (N, K, H, W) at the
    input size and `model.predict(image)` a label map. See `open_model` for `backend` and `threads`."""
    return open_model(path, backend, threads).model
