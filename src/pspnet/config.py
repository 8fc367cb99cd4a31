"""Typed configuration: nested dataclasses, YAML loading and `--set key=value` overrides.

Every value is checked against its annotation when the config is built, so a typo or a wrong type
fails at start-up with the key's dotted name instead of hours into a run.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError
from .presets import resolve_config_path

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
"""Device names pspnet accepts: `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`."""

LOGGERS = ("csv", "tensorboard", "mlflow")
"""Names `train.loggers` accepts."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelConfig:
    """The network: encoder, pyramid pooling module, heads."""

    encoder: str = "resnet50_deepstem"
    """Encoder name: see `pspnet models`. Default: ResNet-50 with the 64-64-128 deep stem (PSPNet's)."""
    encoder_weights: str | None = None
    """None (random init), `imagenet` (timm's ImageNet weights, downloaded once and cached) or the path of
    a local timm/torchvision state dict (.safetensors or .pth)."""
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the timm encoder constructor (e.g. `drop_path_rate`)."""
    output_stride: int = 8
    """Encoder output stride: 8 (the paper's dilated ResNet), 16 or 32. Encoders that cannot dilate
    (Swin, some timm models) run at their native stride when this is left at the default 8; any
    other value they cannot reach is an error."""
    dilation_style: Literal["contracted", "uniform", "mmseg"] = "contracted"
    """`contracted`: the first block of a dilated stage uses half the dilation (timm, mmseg);
    `uniform`: every block of the stage uses the full dilation (semseg, the authors' code);
    `mmseg`: `contracted`, but a basic block (ResNet-18/34) dilates only its first 3x3 conv, as
    mmseg's BasicBlock does (bottleneck blocks are as in `contracted`)."""
    in_channels: int = 3
    """Input channels (e.g. 1 for grey, 4 for RGB + infrared); data.mean/std need one value per channel."""
    width_multiplier: float | None = None
    """MobileNetV2 width multiplier in [0.25, 2.0] (encoder `mobilenetv2`); default 1.0."""
    num_classes: int | None = None
    """Filled in from the dataset when left empty."""
    use_ppm: bool = True
    """False gives the dilated-FCN baseline of the paper's ablation."""
    bins: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    """Pyramid bin sizes: each branch pools the feature map to bins x bins (the paper: 1, 2, 3, 6)."""
    ppm_channels: int | None = None
    """Channels of each pooling branch; default C / len(bins)."""
    decoder_channels: int = 512
    """Channels of the 3x3 fusion conv after the PPM; 0 removes the fusion conv (the seed's lite model)."""
    classifier_kernel: int = 1
    """Kernel of the final classifier conv: 1 (the paper) or 3 (the seed's lite model)."""
    dropout: float = 0.1
    """Dropout2d probability right before the classifier."""
    decoder: Literal["psp", "progressive"] = "psp"
    """`psp`: classify at the encoder's stride (the paper); `progressive`: after the PPM and fusion,
    x2 upsampling stages of conv3x3-BN-PReLU (`progressive_channels`, seed 001's decoder)."""
    progressive_channels: list[int] = field(default_factory=lambda: [256, 64, 64])
    """Output channels of the progressive decoder's x2 stages, one entry per stage."""
    upsample: Literal["bilinear", "transposed"] = "bilinear"
    """Decoder upsampling: `bilinear`, or `transposed` (learned depthwise transposed convs initialised
    to bilinear): of the logits for the `psp` decoder, in each stage for `progressive`."""
    align_corners: bool = False
    """Bilinear upsampling convention. semseg uses True, mmseg and torchvision False."""
    ppm_feature: int = -1
    """Index of the encoder feature map that feeds the PPM (negative counts from the deepest)."""
    aux: Literal["seg", "none", "cls", "both"] = "seg"
    """Auxiliary heads, used in training only, on the `aux_feature` map: `seg` is the paper's FCN head
    (loss weight train.aux_weight); `cls` the image-level class-presence classifier of seed 001 (BCE,
    train.cls_weight); `both`; or `none`."""
    aux_feature: int = -2
    """Index of the encoder feature map the auxiliary heads read (negative counts from the deepest; -2 = stage 3)."""
    aux_channels: int = 256
    """Width of the aux FCN head's conv and of the class-presence classifier's hidden layer."""

    def __post_init__(self) -> None:
        _check(
            self.output_stride in (1, 2, 4, 8, 16, 32),
            "model.output_stride",
            "one of 1, 2, 4, 8, 16, 32",
            self.output_stride,
        )
        _check(0.0 <= self.dropout <= 1.0, "model.dropout", "a probability in [0, 1]", self.dropout)
        _check(
            len(self.bins) > 0 and all(b >= 1 for b in self.bins),
            "model.bins",
            "a non-empty list of positive ints",
            self.bins,
        )
        _check(self.in_channels >= 1, "model.in_channels", "a positive int", self.in_channels)
        _check(
            self.num_classes is None or self.num_classes >= 1, "model.num_classes", "a positive int", self.num_classes
        )
        _check(
            self.ppm_channels is None or self.ppm_channels >= 1,
            "model.ppm_channels",
            "a positive int or null",
            self.ppm_channels,
        )
        _check(self.decoder_channels >= 0, "model.decoder_channels", "a non-negative int", self.decoder_channels)
        _check(self.classifier_kernel in (1, 3), "model.classifier_kernel", "1 or 3", self.classifier_kernel)
        _check(self.aux_channels >= 1, "model.aux_channels", "a positive int", self.aux_channels)
        _check(
            self.width_multiplier is None or 0.25 <= self.width_multiplier <= 2.0,
            "model.width_multiplier",
            "a float in [0.25, 2.0] or null",
            self.width_multiplier,
        )
        _check(
            len(self.progressive_channels) > 0 and min(self.progressive_channels) >= 1,
            "model.progressive_channels",
            "a non-empty list of positive ints",
            self.progressive_channels,
        )


@dataclass
class AugmentConfig:
    """Training augmentation (the paper's recipe); each step can be switched off."""

    scale: list[float] | None = field(default_factory=lambda: [0.5, 2.0])
    """Random scale range [min, max] (the paper: 0.5 to 2.0); null disables."""
    rotate: float = 10.0
    """Maximum rotation in degrees (0 disables)."""
    blur: float = 0.5
    """Probability of a Gaussian blur (0 disables)."""
    flip: bool = True
    """Random horizontal mirroring."""
    crop_size: list[int] = field(default_factory=lambda: [473, 473])
    """Training crop [height, width], padded with the mean colour (image) and 255 (mask) when larger than the image."""

    def __post_init__(self) -> None:
        if self.scale is not None:
            _check(
                len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1],
                "data.augment.scale",
                "[min, max] with 0 < min <= max, or null",
                self.scale,
            )
        _check(0 <= self.rotate <= 180, "data.augment.rotate", "degrees in [0, 180]", self.rotate)
        _check(0 <= self.blur <= 1, "data.augment.blur", "a probability in [0, 1]", self.blur)
        _check(
            len(self.crop_size) == 2 and min(self.crop_size) >= 1,
            "data.augment.crop_size",
            "[height, width]",
            self.crop_size,
        )


@dataclass
class SyntheticConfig:
    """The built-in `context scenes` dataset (see pspnet.data.synthetic)."""

    image_size: list[int] = field(default_factory=lambda: [128, 128])
    """Scene size [height, width]."""
    num_train: int = 2000
    """Scenes in the train split."""
    num_val: int = 200
    """Scenes in the val split."""
    seed: int = 0
    """Seed of the scene generator: another seed gives other scenes."""

    def __post_init__(self) -> None:
        _check(
            len(self.image_size) == 2 and min(self.image_size) >= 32,
            "data.synthetic.image_size",
            "[height, width], each >= 32",
            self.image_size,
        )
        _check(
            self.num_train >= 1 and self.num_val >= 1,
            "data.synthetic.num_train/num_val",
            "positive ints",
            (self.num_train, self.num_val),
        )


@dataclass
class DataConfig:
    """Where the data comes from and how it is loaded."""

    format: str = "synthetic"
    """Dataset format: synthetic, cityscapes, ade20k, voc, pairs, folders, shards, or an annotation tool's export:
    label-studio, coco or cvat (see `pspnet.data.sources`)."""
    root: str | None = None
    """Folder of the dataset (unused by the synthetic format); for `shards`, a folder or a URL (https://, s3://, ...)."""
    train_split: str = "train"
    """Split trained on."""
    val_split: str = "val"
    """Split validated (and evaluated) on."""
    classes_file: str | None = None
    """Class names/palette file for the `folders` and `pairs` formats; for label-studio, coco and cvat, the classes
    (and ids) that the export's classes are matched to by name."""
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    """Per-channel mean subtracted from images scaled to [0, 1] (ImageNet's by default)."""
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    """Per-channel standard deviation images are divided by after the mean."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    options: dict[str, Any] = field(default_factory=dict)
    """Format-specific settings (e.g. colour tolerance of the `pairs` format)."""
    num_workers: int | None = None
    """Loader worker processes (0: load in the training process); null: chosen from the cores and the device
    (`pspnet.data.loaders.default_workers`)."""
    skip_bad: bool = False
    """Skip unreadable samples with a warning instead of stopping the run."""

    def __post_init__(self) -> None:
        _check(
            self.num_workers is None or self.num_workers >= 0,
            "data.num_workers",
            "a non-negative int or null",
            self.num_workers,
        )
        _check(
            len(self.mean) == len(self.std) and all(s > 0 for s in self.std),
            "data.mean/std",
            "equal-length lists with positive std",
            (self.mean, self.std),
        )


@dataclass
class TrainConfig:
    """Optimisation: SGD with the poly learning-rate policy, as in the paper."""

    max_iters: int = 1000
    """Training iterations; the poly schedule decays to 0 at this iteration."""
    batch_size: int = 8
    """Images per training step (the paper: 16)."""
    base_lr: float = 0.01
    """Learning rate of the encoder at iteration 0 (the paper: 0.01)."""
    lr_power: float = 0.9
    """Power of the poly policy: lr = base_lr * (1 - iter / max_iters) ** power."""
    head_lr_mult: float = 10.0
    """Learning-rate multiplier of everything that is not the encoder (PPM, fusion, classifiers)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    aux_weight: float = 0.4
    """Weight of the auxiliary FCN head's loss (the paper: 0.4)."""
    cls_weight: float = 1.0
    """Weight of the class-presence BCE loss (model.aux `cls` or `both`); 1.0 as in seed 001's training code."""
    log_interval: int = 10
    """Iterations between rows of train_log.csv."""
    eval_interval: int = 250
    """Iterations between validations (and best-checkpoint updates)."""
    checkpoint_interval: int = 250
    """Iterations between saves of last.safetensors and the resume state."""
    seed: int = 0
    """Seed of the weights' initialisation, the data order and the augmentation."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N; each process of a torchrun job uses its local rank's GPU."""
    amp: Literal["none", "bf16", "fp16", "auto"] | bool = "none"
    """Mixed precision: `none` (fp32), `bf16` (autocast on CPU and CUDA), `fp16` (autocast with a gradient
    scaler, CUDA only) or `auto`: bf16 where the hardware computes in it natively (CUDA with bf16 support,
    CPUs with AVX512-BF16 or AMX), fp16 on older GPUs, fp32 on other CPUs (where bf16 is emulated and slower).
    The booleans of older configs mean none (false) and bf16 (true)."""
    channels_last: bool = False
    """Train with NHWC memory format (often faster on GPUs with tensor cores; measure on a CPU)."""
    compile: bool = False
    """Compile the training step's forward and backward with torch.compile (Inductor); without a C++ compiler it
    runs eagerly, with a warning (docs/compile.md)."""
    sync_bn: bool | None = None
    """Synchronize BatchNorm statistics across processes (the paper's recipe); null: on when training on
    several processes. PyTorch's SyncBatchNorm on CUDA, pspnet's own over gloo on the CPU."""
    init_from: str | None = None
    """Start from the weights of a whole model (a pspnet, semseg or mmseg checkpoint, e.g. one converted
    with `pspnet convert --num-classes K`): fine-tuning. The config must describe the same architecture."""
    loggers: list[str] = field(default_factory=lambda: ["csv", "tensorboard"])
    """Where training metrics go: `csv` (train_log.csv, val_log.csv: always on, the run's own record that
    --resume and `pspnet runs` read), `tensorboard` (RUN_DIR/tensorboard) and `mlflow` (extra `pspnet[mlflow]`;
    MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME are honoured, else a SQLite store beside the run directory and
    the config file's name; MLflow's telemetry is off unless MLFLOW_DISABLE_TELEMETRY is set). See docs/tracking.md."""
    mlflow_log_checkpoint: bool = False
    """With the `mlflow` logger: also upload the best checkpoint as an artifact when a session ends."""

    def __post_init__(self) -> None:
        _check(self.max_iters >= 1, "train.max_iters", "a positive int", self.max_iters)
        _check(
            self.batch_size >= 2,
            "train.batch_size",
            "an int >= 2 (BatchNorm in the pooling branches needs 2 samples)",
            self.batch_size,
        )
        _check(self.base_lr > 0, "train.base_lr", "a positive float", self.base_lr)
        _check(self.lr_power >= 0, "train.lr_power", "a non-negative float", self.lr_power)
        for key in ("log_interval", "eval_interval", "checkpoint_interval"):
            _check(getattr(self, key) >= 1, f"train.{key}", "a positive int", getattr(self, key))
        _check(
            DEVICE_PATTERN.fullmatch(self.device) is not None, "train.device", "auto, cpu, cuda or cuda:N", self.device
        )
        _check(self.aux_weight >= 0, "train.aux_weight", "a non-negative float", self.aux_weight)
        _check(self.cls_weight >= 0, "train.cls_weight", "a non-negative float", self.cls_weight)
        if isinstance(self.amp, bool):
            self.amp = "bf16" if self.amp else "none"
        unknown = [name for name in self.loggers if name not in LOGGERS]
        _check(not unknown, "train.loggers", f"names among {', '.join(LOGGERS)}", self.loggers)
        _check(
            "csv" in self.loggers,
            "train.loggers",
            "a list with csv (always on: the run's own logs, which --resume and `pspnet runs` read), "
            "e.g. [csv, mlflow]",
            self.loggers,
        )


@dataclass
class EvalConfig:
    """Inference protocol and metric conventions for evaluation and prediction.

    `protocol` names a preset of `PROTOCOLS` (documented in docs/evaluation.md). It fills the
    inference settings (`mode` to `flip`) that are not given explicitly; those given win. Settings
    left unset without a protocol take the defaults in `DEFAULTS` (whole image, scale 1, no flip).
    """

    _UNSET: typing.ClassVar[Any] = object()  # default of the settings a protocol can fill
    DEFAULTS: typing.ClassVar[dict[str, Any]] = dict(
        mode="whole", crop_size=None, stride=None, base_size=None, resize="long", scales=[1.0], flip=False
    )
    _SIX_SCALES: typing.ClassVar[list[float]] = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    PROTOCOLS: typing.ClassVar[dict[str, dict[str, Any]]] = {  # settings not listed take DEFAULTS
        "semseg-cityscapes": dict(mode="slide", crop_size=[713, 713], base_size=2048, flip=True),
        "semseg-cityscapes-ms": dict(mode="slide", crop_size=[713, 713], base_size=2048, scales=_SIX_SCALES, flip=True),
        "semseg-ade20k": dict(mode="slide", crop_size=[473, 473], base_size=512, flip=True),
        "semseg-ade20k-ms": dict(mode="slide", crop_size=[473, 473], base_size=512, scales=_SIX_SCALES, flip=True),
        "semseg-voc": dict(mode="slide", crop_size=[473, 473], base_size=512, flip=True),
        "semseg-voc-ms": dict(mode="slide", crop_size=[473, 473], base_size=512, scales=_SIX_SCALES, flip=True),
        "mmseg-whole": dict(mode="whole"),
        "mmseg-whole-ms": dict(mode="whole", scales=_SIX_SCALES, flip=True),
        "mmseg-ade20k": dict(mode="whole", base_size=512, resize="short"),
    }

    protocol: str | None = None
    """Preset name, e.g. `semseg-cityscapes` (see `PROTOCOLS`); null: the settings below alone."""
    mode: Literal["whole", "slide"] = _UNSET
    """`whole`: the full image at once; `slide`: overlapping `crop_size` windows. Default whole."""
    crop_size: list[int] | None = _UNSET
    """Sliding-window size [h, w] (mode `slide`). Smaller images are padded with the mean colour,
    evenly on both sides (the extra pixel at the bottom/right), and the probabilities cropped back."""
    stride: list[int] | None = _UNSET
    """Sliding-window stride [h, w], at most the crop; null: ceil(2/3 of the crop), as in the paper and
    semseg (713 -> 476, 473 -> 316). The last window is aligned to the border."""
    base_size: int | None = _UNSET
    """With `resize`, sets the image size at each scale: that side = round(scale * base_size), the aspect
    ratio kept. Null: each scale is a factor of the original size."""
    resize: Literal["long", "short"] = _UNSET
    """Which side `base_size` sets: `long` (semseg) or `short` (mmseg-style). Default long."""
    scales: list[float] = _UNSET
    """Test scales; probabilities are averaged at the original size. Default [1.0]."""
    flip: bool = _UNSET
    """Average with the horizontally flipped image's probabilities. Default false."""
    window_batch: int = 1
    """Windows per forward pass in `slide` mode (flip doubles the batch)."""
    max_pixels: int | None = None
    """Largest input image (width x height) that predict and evaluate accept; larger ones are refused from
    the file header, before decoding. Null: `pixel_cap()` of the inference settings."""
    batch_size: int = 1
    """Images per evaluation batch (more than 1 only when all images share a size)."""
    absent: Literal["exclude", "zero"] = "exclude"
    """Classes absent from ground truth and prediction: `exclude` from the mean (mmseg, Cityscapes)
    or count as IoU 0 (semseg)."""

    def __post_init__(self) -> None:
        preset = self.protocol_settings(self.protocol) if self.protocol is not None else self.DEFAULTS
        for key in self.DEFAULTS:
            if getattr(self, key) is self._UNSET:
                setattr(self, key, _deepcopy(preset[key]))
        for key in ("crop_size", "stride"):
            value = getattr(self, key)
            _check(
                value is None or (len(value) == 2 and min(value) >= 1),
                f"eval.{key}",
                "[height, width] of positive ints, or null",
                value,
            )
        _check(
            self.mode == "whole" or self.crop_size is not None,
            "eval.crop_size",
            "[height, width] (required by eval.mode slide)",
            self.crop_size,
        )
        _check(
            self.stride is None or self.crop_size is None or all(s <= c for s, c in zip(self.stride, self.crop_size)),
            "eval.stride",
            f"at most the crop size {self.crop_size} (larger strides leave pixels uncovered)",
            self.stride,
        )
        _check(
            self.base_size is None or self.base_size >= 1, "eval.base_size", "a positive int or null", self.base_size
        )
        _check(
            len(self.scales) > 0 and all(s > 0 for s in self.scales),
            "eval.scales",
            "a non-empty list of positive floats",
            self.scales,
        )
        _check(self.window_batch >= 1, "eval.window_batch", "a positive int", self.window_batch)
        _check(
            self.max_pixels is None or self.max_pixels >= 1,
            "eval.max_pixels",
            "a positive int or null",
            self.max_pixels,
        )
        _check(self.batch_size >= 1, "eval.batch_size", "a positive int", self.batch_size)

    @classmethod
    def protocol_settings(cls, name: str) -> dict[str, Any]:
        """Every setting that protocol `name` fixes (`mode` to `flip`)."""
        if name not in cls.PROTOCOLS:
            raise ConfigError(f"eval.protocol: unknown protocol {name!r}; choose one of {', '.join(cls.PROTOCOLS)}")
        return _deepcopy({**cls.DEFAULTS, **cls.PROTOCOLS[name]})

    def changed_from_protocol(self) -> list[str]:
        """Settings that differ from the named protocol's (empty without a protocol)."""
        if self.protocol is None:
            return []
        preset = self.protocol_settings(self.protocol)
        return [key for key in preset if getattr(self, key) != preset[key]]

    def with_protocol(self, name: str | None) -> EvalConfig:
        """This config with protocol `name` (None: no name) and every inference setting it fixes."""
        settings = self.protocol_settings(name) if name is not None else {}
        return dataclasses.replace(self, protocol=name, **settings)

    def updated(self, **settings: Any) -> EvalConfig:
        """This config with the given settings changed; None values are ignored."""
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ConfigError(f"eval: unknown settings {unknown}")
        return dataclasses.replace(self, **{key: value for key, value in settings.items() if value is not None})

    def describe(self) -> str:
        """One line naming the inference protocol that produced a number, e.g. `semseg-cityscapes:
        sliding window 713x713 stride 476x476, long side 2048 x scales [1], flip`. A named protocol
        whose settings were changed lists the changed keys."""
        if self.mode == "whole":
            mode = "whole image"
        else:
            (crop_h, crop_w), (stride_h, stride_w) = self.crop_size, self.window_stride
            mode = f"sliding window {crop_h}x{crop_w} stride {stride_h}x{stride_w}"
        scales = f"scales [{', '.join(f'{s:g}' for s in self.scales)}]"
        if self.base_size is not None:
            scales = f"{self.resize} side {self.base_size} x {scales}"
        text = f"{mode}, {scales}, {'flip' if self.flip else 'no flip'}"
        if self.protocol is None:
            return text
        changed = self.changed_from_protocol()
        name = f"{self.protocol} (changed: {', '.join(changed)})" if changed else self.protocol
        return f"{name}: {text}"

    WHOLE_MAX_PIXELS: typing.ClassVar[int] = 8_000_000
    """Default cap in `whole` mode: memory grows with the image (PSPNet-R50 at output stride 8 needs about
    1.1 GiB per million pixels, twice that with flip)."""
    SLIDE_MAX_PIXELS: typing.ClassVar[int] = 100_000_000
    """Default cap for sliding windows at one scale: the network sees crops, and the probabilities are
    decided band by band, so memory grows with the image width only (about 0.3 GB per 10 M pixels for input and labels)."""
    RESIZED_MAX_PIXELS: typing.ClassVar[int] = 40_000_000
    """Default cap when images are resized (several scales, or `base_size`): full-size probability maps
    (4 bytes x classes per pixel) are accumulated."""

    def pixel_cap(self) -> int:
        """`max_pixels`, or the default cap of these inference settings."""
        if self.max_pixels is not None:
            return self.max_pixels
        if self.mode == "whole":
            return self.WHOLE_MAX_PIXELS
        if self.scales == [1.0] and self.base_size is None:
            return self.SLIDE_MAX_PIXELS
        return self.RESIZED_MAX_PIXELS

    @property
    def window_stride(self) -> tuple[int, int]:
        """The effective sliding-window stride: `stride`, or ceil(2/3 * crop_size)."""
        if self.stride is not None:
            return self.stride[0], self.stride[1]
        return (2 * self.crop_size[0] + 2) // 3, (2 * self.crop_size[1] + 2) // 3


@dataclass
class Config:
    """A whole experiment. `pspnet train CONFIG` reads one from YAML."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        channels = self.model.in_channels
        if len(self.data.mean) != channels:
            raise ConfigError(
                f"data.mean/std: {len(self.data.mean)} values but model.in_channels is {channels}; give one "
                f"value per input channel, e.g. data.mean={[0.449] * channels} data.std={[0.226] * channels}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        return _build(cls, data, prefix="", source=source)

    def with_num_classes(self, num_classes: int) -> Config:
        """This config with `model.num_classes` set (e.g. from the dataset)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, num_classes=num_classes))

    def replace(self, overrides: list[str] | None = None) -> Config:
        """A new config with `key=value` overrides applied (type-checked)."""
        return Config.from_dict(apply_overrides(self.to_dict(), overrides or []), source="--set")


INFERENCE_SETTINGS = (
    "mode",
    "crop_size",
    "stride",
    "base_size",
    "resize",
    "scales",
    "flip",
    "window_batch",
    "max_pixels",
    "absent",
)
"""The `eval` settings an inference request may set besides `protocol` (`with_inference_settings`)."""


def with_inference_settings(
    config: Config, settings: dict[str, Any] | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """`config` with an inference request applied, in the one order the CLI, the server and Python callers share.

    1. `settings["protocol"]` (a name of `EvalConfig.PROTOCOLS`) brings all of that preset's settings, replacing
       those `config` holds (e.g. the ones stored in a checkpoint);
    2. the other entries of `settings` (keys of `INFERENCE_SETTINGS`) change parts of it; None means "not given",
       and a `crop_size` or `stride` of one int (or a one-element list) is square;
    3. `overrides`, `key=value` items as for `--set`, in their order; `eval.protocol=NAME` among them applies
       that preset at its place.
    """
    settings = dict(settings or {})
    protocol = settings.pop("protocol", None)
    unknown = sorted(set(settings) - set(INFERENCE_SETTINGS))
    if unknown:
        raise ConfigError(f"unknown inference settings {unknown}; expected protocol or {', '.join(INFERENCE_SETTINGS)}")
    for key in ("crop_size", "stride"):
        value = settings.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            settings[key] = [value, value]
        elif isinstance(value, (list, tuple)) and len(value) == 1:
            settings[key] = [value[0], value[0]]
    eval_config = config.eval.with_protocol(protocol) if protocol else config.eval
    config = dataclasses.replace(config, eval=eval_config.updated(**settings))
    for item in overrides:
        key, _, raw = item.partition("=")
        if key.strip() == "eval.protocol":
            config = dataclasses.replace(config, eval=config.eval.with_protocol(yaml.safe_load(raw)))
        else:
            config = config.replace([item])
    return config


def _check(ok: bool, key: str, expected: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a file, or a preset's name: see `pspnet.presets`; the defaults when `path` is None) and
    apply `key=value` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = resolve_config_path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (model, data, train, eval), got {type(loaded).__name__}"
            )
        data = loaded or {}
        source = str(path)
    Config.from_dict(data, source=source)  # report file errors before override errors
    return Config.from_dict(
        apply_overrides(data, overrides or []), source=source if not overrides else f"{source} + --set"
    )


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, e.g. `model.dropout`."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            keys.extend(all_keys(hint, name + "."))
        else:
            keys.append(name)
    return keys


def field_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of a config dataclass (first paragraph, one line)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split("\n\n")[0].split())
    return docs


def describe_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(dotted key, type, default, description) of every key of the schema."""
    rows = []
    defaults, docs, hints = cls(), field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            rows.extend(describe_keys(hint, f"{prefix}{f.name}."))
        else:
            default = (
                yaml.safe_dump(getattr(defaults, f.name), default_flow_style=True).strip().removesuffix("...").strip()
            )
            rows.append((f"{prefix}{f.name}", _type_name(hint), default, docs.get(f.name, "")))
    return rows


def _unknown_key_error(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(), n=3, cutoff=0.6)
    if not close:  # a typo in the leaf name only: compare leaves
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in all_keys() if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)][:3]
    hint = f"; did you mean {', '.join(close)}?" if close else "; run `pspnet config --keys` for the list"
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys from `key=value` strings; values are parsed as YAML (`0.5`, `[1, 2]`, `null`)."""
    result = _deepcopy(data)
    valid = set(all_keys())
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key not in valid and not _is_dict_entry(key):
            raise _unknown_key_error(key, "--set")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return result


def _is_dict_entry(key: str) -> bool:
    """`model.encoder_kwargs.drop_path_rate` sets an entry of a free-form dict field."""
    parts = key.split(".")
    return len(parts) > 2 and ".".join(parts[:2]) in {"model.encoder_kwargs", "data.options"}


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


def _build(cls: type, data: Any, prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key_error(f"{prefix}{key}", source)
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value if value is not None else {}, f"{prefix}{name}.", source)
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}", source)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _type_name(hint: Any) -> str:
    """A readable name of a type annotation: `int`, `list[int] | null`, `'none' | 'bf16' | 'fp16' | bool`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in args)
    if hint is type(None):
        return "null"
    text = hint.__name__ if isinstance(hint, type) and not args else str(hint)
    return text.replace("typing.", "").replace("NoneType", "null")


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `hint`, converting only where lossless (int -> float, list -> tuple)."""

    def fail() -> ConfigError:
        return ConfigError(f"{source}: {key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise fail()
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{source}: {key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise fail()


def dump_yaml(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
