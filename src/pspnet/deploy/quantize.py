"""Static int8 quantization of an exported ONNX model with onnxruntime, calibrated on dataset images.

QDQ format, int8 weights with one scale per output channel, uint8 activations with ranges from the
calibration images (min/max). Only the convolutions are quantized: they are nearly all the FLOPs,
and quantizing the rest too (residual adds, pooling products, resizes, concat) was not faster on
the paper's R50 at 512x512 (0.49 s vs 0.51 s, noise level) while adding rounding to the logits.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from ..card import ModelCard
from ..config import DataConfig
from ..data.sources import build_source
from ..errors import DataError
from ..inference.predict import image_to_tensor
from ..io.images import read_image
from ..runtime.optional import import_deploy_module

DEFAULT_CALIBRATION_IMAGES = 32
QUANTIZED_OPS = ("Conv",)


def dataset_images(data: DataConfig, split: str, count: int, card: ModelCard) -> list[np.ndarray]:
    """`count` images spread evenly over `split`, without augmentation, normalised with the card's mean/std
    as `predict` does: (1, C, H, W) float32 arrays at each image's own size."""
    source = build_source(data, split)
    if len(source) == 0:
        raise DataError(f"split '{split}' of the {data.format} dataset has no images")
    indices = np.unique(np.linspace(0, len(source) - 1, min(count, len(source))).round().astype(int))
    return [
        image_to_tensor(read_image(source.load(int(index)).image, card.in_channels), card.mean, card.std)[None].numpy()
        for index in indices
    ]


class CalibrationImages:
    """The images as onnxruntime's calibration reader wants them: `get_next()` -> {input name: array}, then None."""

    def __init__(self, input_name: str, images: list[np.ndarray]):
        self.batches = iter([{input_name: image} for image in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def quantize_int8(float_model: Path, out: Path, input_name: str, images: list[np.ndarray]) -> float:
    """Write the int8 version of the ONNX file `float_model` to `out`; returns the calibration and
    quantization time in seconds (graph preparation excluded)."""
    # optional (extra `deploy`): only when an int8 export runs
    quantization = import_deploy_module("onnxruntime.quantization")
    preprocessing = import_deploy_module("onnxruntime.quantization.shape_inference")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # folds BatchNorm into the convs, infers shapes
        preprocessing.quant_pre_process(str(float_model), str(prepared))
        start = time.perf_counter()
        quantization.quantize_static(
            str(prepared),
            str(out),
            CalibrationImages(input_name, images),
            quant_format=quantization.QuantFormat.QDQ,
            per_channel=True,
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            op_types_to_quantize=list(QUANTIZED_OPS),
            calibrate_method=quantization.CalibrationMethod.MinMax,
        )
        return time.perf_counter() - start
