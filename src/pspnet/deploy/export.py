"""`pspnet export`: a checkpoint to an ONNX file (fp32 or int8) or a torch.export program (`.pt2`).

Every export is written to a temporary name, checked against the PyTorch model (see verify.py) and
renamed to its destination only when it passes; a file that disagrees is deleted and the error says
at which input sizes and by how much. The training-only auxiliary heads are dropped; batch, height
and width stay dynamic. The files carry the model card and config (see `pspnet.runtime.metadata`).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import LoadedModel, open_model
from ..config import Config, load_config
from ..errors import ConfigError, ExportError
from ..io.files import atomic_path
from ..io.weights import file_sha256
from ..models import PSPNet
from ..runtime.metadata import export_metadata
from ..runtime.onnx_model import OnnxModel
from ..runtime.optional import import_deploy_module
from .quantize import DEFAULT_CALIBRATION_IMAGES, dataset_images, quantize_int8
from .verify import MIN_INT8_AGREEMENT, Check, verify_fp32, verify_int8

FORMATS = ("onnx", "onnx-int8", "pt2")
MIN_OPSET = 18
"""The oldest ONNX opset torch's exporter writes."""
INT8_CHECK_IMAGES = 8
"""Validation images on which an int8 export is compared with the PyTorch model."""
PT2_METADATA_FILE = "pspnet.json"
"""The extra file of a `.pt2` program holding the metadata (`torch.export.load(..., extra_files=...)`)."""


@dataclass
class ExportReport:
    """What `export_model` wrote and how it was checked."""

    path: Path
    format: str
    size: tuple[int, int]
    dropped: list[str]
    checks: list[Check] = field(default_factory=list)
    file_bytes: int = 0
    float_checks: list[Check] = field(default_factory=list)
    """int8: the checks of the fp32 graph it was quantized from."""
    agreement: float | None = None
    """int8: pixel-weighted argmax agreement with the PyTorch model on held-out images."""
    calibration_images: int = 0
    calibration_seconds: float | None = None


def export_model(
    checkpoint: str | Path | LoadedModel,
    out: str | Path,
    format: str = "onnx",
    opset: int | None = None,
    size: Sequence[int] | None = None,
    calibration: str | Path | Config | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    min_agreement: float = MIN_INT8_AGREEMENT,
) -> ExportReport:
    """Export `checkpoint` to `out` in `format` (see `FORMATS`), traced at `size` (default: the config's
    training crop) and verified. `calibration` is the config (or its file) whose train split calibrates
    an int8 export and whose val split checks it, which must agree with the PyTorch model on at least
    `min_agreement` of the pixels (default: the checkpoint's own config)."""
    out = Path(out)
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if opset is not None and (format == "pt2" or opset < MIN_OPSET):
        raise ConfigError(f"--opset: ONNX formats only, {MIN_OPSET} or newer (got {opset} for {format})")
    if calibration_images < 1:
        raise ConfigError(f"--calibration-images: expected a positive int, got {calibration_images}")
    _check_writable(out)
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else open_model(checkpoint, pytorch_only=True)
    if not isinstance(loaded.model, PSPNet):
        raise ConfigError(f"{loaded.path}: export needs a PyTorch checkpoint on the fp32 torch backend")
    if format == "onnx-int8":  # its images are normalised as the model's card says
        source = calibration if isinstance(calibration, (str, Path)) else "the calibration config"
        calibration = load_config(calibration) if isinstance(calibration, (str, Path)) else calibration
        calibration = loaded.with_config(calibration or loaded.config, source=str(source)).config
    model, dropped = inference_model(loaded.model)
    config = loaded.config
    size = tuple(size or config.data.augment.crop_size)
    metadata = export_metadata(
        model.card,
        config,
        source=loaded.path.name,
        source_sha256=file_sha256(loaded.path),
        precision="int8" if format == "onnx-int8" else "fp32",
    )
    report = ExportReport(out, format, size, dropped)
    with atomic_path(out) as tmp:
        if format == "onnx":
            report.checks = _write_onnx(model, size, opset, metadata, tmp)
        elif format == "pt2":
            report.checks = _write_pt2(model, size, metadata, tmp)
        else:
            _write_int8(model, size, opset, metadata, tmp, calibration, calibration_images, min_agreement, report)
        report.file_bytes = tmp.stat().st_size
    return report


def inference_model(model: PSPNet) -> tuple[PSPNet, list[str]]:
    """`model` without its training-only heads (removed in place) and the names of the dropped heads."""
    dropped = [name for name in ("aux_head", "cls_head") if getattr(model, name) is not None]
    for name in dropped:
        setattr(model, name, None)
    return model, dropped


def _check_writable(out: Path) -> None:
    """ConfigError now, before minutes of work, when `out` cannot be written."""
    if out.is_dir():
        raise ConfigError(f"cannot write {out}: it is a directory")
    existing = out.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {out}: {existing} is not a writable directory")


def _dynamic_shapes(named: bool) -> dict[str, Any]:
    """Batch, height and width dynamic: named (the ONNX exporter names the input's axes after them and
    narrows their ranges itself), or with ranges that torch.export infers (min size, e.g. 9 at stride 8)."""
    dim = torch.export.Dim
    if named:
        return {"x": {0: dim("batch"), 2: dim("height"), 3: dim("width")}}
    return {"x": {0: dim.DYNAMIC, 2: dim.DYNAMIC, 3: dim.DYNAMIC}}


def _example(size: Sequence[int], channels: int) -> torch.Tensor:
    """The tracing input: a batch of two (a batch of one would be specialised to a constant)."""
    return torch.randn(2, channels, *size, generator=torch.Generator().manual_seed(0))


def _write_onnx(
    model: PSPNet, size: Sequence[int], opset: int | None, metadata: dict[str, str], path: Path
) -> list[Check]:
    """fp32 ONNX with dynamic batch, height and width (torch's dynamo exporter), verified in onnxruntime."""
    import_deploy_module("onnxscript")  # the exporter's dependency: a clear message when it is missing
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                (_example(size, model.card.in_channels),),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(named=True),
                input_names=["image"],
                output_names=["logits"],
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the first line says what failed
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {_first_line(exc)}") from None
    _save_onnx(program.model_proto, path, metadata)
    return verify_fp32(model, OnnxModel(path), size, model.card.in_channels, "ONNX")


def _save_onnx(proto: Any, path: Path, metadata: dict[str, str]) -> None:
    onnx = import_deploy_module("onnx")  # optional (extra `deploy`)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    onnx.save_model(proto, str(path))


def _write_int8(
    model: PSPNet,
    size: Sequence[int],
    opset: int | None,
    metadata: dict[str, str],
    path: Path,
    calibration: Config,
    calibration_images: int,
    min_agreement: float,
    report: ExportReport,
) -> None:
    """A verified fp32 export, quantized to int8 with `calibration`'s train images, then compared with the
    PyTorch model on its validation images."""
    card = model.card
    images = dataset_images(calibration.data, calibration.data.train_split, calibration_images, card)
    held_out = [
        torch.from_numpy(image)
        for image in dataset_images(calibration.data, calibration.data.val_split, INT8_CHECK_IMAGES, card)
    ]
    with tempfile.TemporaryDirectory() as scratch:
        float_path = Path(scratch) / "fp32.onnx"
        report.float_checks = _write_onnx(model, size, opset, metadata, float_path)
        report.calibration_seconds = quantize_int8(float_path, path, "image", images)
    report.calibration_images = len(images)
    onnx = import_deploy_module("onnx")  # optional (extra `deploy`)
    _save_onnx(onnx.load(str(path)), path, metadata)
    report.checks, report.agreement = verify_int8(model, OnnxModel(path), held_out, size, min_agreement)


def _write_pt2(model: PSPNet, size: Sequence[int], metadata: dict[str, str], path: Path) -> list[Check]:
    """A torch.export program with dynamic batch, height and width, metadata in `PT2_METADATA_FILE`."""
    try:
        program = torch.export.export(
            model, (_example(size, model.card.in_channels),), dynamic_shapes=_dynamic_shapes(named=False)
        )
    except Exception as exc:  # torch.export raises many types; the first line says what failed
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {_first_line(exc)}") from None
    with open(path, "wb") as handle:  # a file object: torch.export insists on a .pt2 name otherwise
        torch.export.save(program, handle, extra_files={PT2_METADATA_FILE: json.dumps(metadata)})
    with open(path, "rb") as handle:
        loaded = torch.export.load(handle).module()
    return verify_fp32(model, loaded, size, model.card.in_channels, "pt2")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
