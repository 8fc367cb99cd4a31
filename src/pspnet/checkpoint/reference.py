"""PSPNet checkpoints published by the reference implementations: semseg and mmsegmentation.

semseg (github.com/hszhao/semseg, the authors' PyTorch code) saves `{'epoch', 'state_dict',
'optimizer'}` of a distributed model, so every key starts with `module.`. Its network: a 64-64-128
deep stem (`layer0`), every block of layer3 and layer4 dilated 2 and 4 (the first block included),
pooling branches of C/4 channels (`ppm.features`), the 3x3 fusion conv and classifier in `cls`,
the auxiliary head in `aux`, bilinear upsampling with align_corners=True.

mmsegmentation saves `{'meta', 'state_dict'}`: a ResNetV1c (32-32-64 deep stem, `backbone.stem`)
or a ResNet (7x7 stem) with dilations (1, 1, 2, 4), the first block of a dilated stage at half
the dilation and a BasicBlock dilating only its first conv; a PSPHead whose branches have
`channels` channels (`decode_head.psp_modules`, `bottleneck`, `conv_seg`), an FCNHead auxiliary
head, align_corners=False unless the config text in `meta` says True; class names and palette in `meta`.

A `Layout` renames each of our tensors to the file's name for it. A file loads only when every
tensor of the model is in it with the right shape and every tensor in it is used; BatchNorm's
`num_batches_tracked` counters, which do not affect inference and which mmseg's own loader treats
as optional, are the one exception: absent ones are set to 0.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..classes import IGNORE_INDEX, ClassInfo
from ..config import Config, DataConfig, ModelConfig
from ..data.sources import SOURCES, dataset_classes
from ..errors import CheckpointError, ConfigError, DataError
from ..io.weights import file_sha256, load_torch_file
from ..models import PSPNet
from ..models.encoders.resnet import STEMS
from ..models.state_dicts import compare_state_dicts
from .native import save_checkpoint

PAPER_BINS = [1, 2, 3, 6]
"""The pooling grid sizes of both references (they are not stored in the weights)."""

DEFAULT_PLANES = [64, 128, 256, 512]

RESNET_DEPTH = {
    ((2, 2, 2, 2), False): 18,
    ((3, 4, 6, 3), False): 34,
    ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101,
    ((3, 8, 36, 3), True): 152,
}
"""(blocks per stage, bottleneck blocks) -> ResNet depth."""

SEMSEG_RULES = (
    (r"encoder\.conv1\.", "layer0."),  # conv1.{0,1,3,4,6}: the stem's convs and first two BNs
    (r"encoder\.bn1\.", "layer0.7."),
    (r"encoder\.", ""),
    (r"decode_head\.ppm\.branches\.", "ppm.features."),
    (r"decode_head\.fusion\.", "cls."),
    (r"decode_head\.classifier\.", "cls.4."),
    (r"aux_head\.conv\.", "aux."),
    (r"aux_head\.classifier\.", "aux.4."),
)

MMSEG_DEEP_STEM_RULES = (
    (r"encoder\.conv1\.", "backbone.stem."),
    (r"encoder\.bn1\.", "backbone.stem.7."),
)

MMSEG_RULES = (
    (r"encoder\.", "backbone."),
    (r"decode_head\.ppm\.branches\.(\d+)\.1\.", r"decode_head.psp_modules.\1.1.conv."),
    (r"decode_head\.ppm\.branches\.(\d+)\.2\.", r"decode_head.psp_modules.\1.1.bn."),
    (r"decode_head\.fusion\.0\.", "decode_head.bottleneck.conv."),
    (r"decode_head\.fusion\.1\.", "decode_head.bottleneck.bn."),
    (r"decode_head\.classifier\.", "decode_head.conv_seg."),
    (r"aux_head\.conv\.0\.", "auxiliary_head.convs.0.conv."),
    (r"aux_head\.conv\.1\.", "auxiliary_head.convs.0.bn."),
    (r"aux_head\.classifier\.", "auxiliary_head.conv_seg."),
)


@dataclass(frozen=True)
class Layout:
    """How one reference implementation names PSPNet's tensors, and the architecture it builds."""

    format: str
    rules: tuple[tuple[str, str], ...]
    """(regex, replacement) pairs; the first regex matching the start of one of our keys renames it."""
    stem: str
    """Encoder name suffix, a key of `STEMS`."""
    dilation_style: str
    align_corners: bool
    prefix: str = ""
    """Prefix of every key in the file (`module.` for a model saved inside DistributedDataParallel)."""

    def source_key(self, key: str) -> str:
        """The file's name for our tensor (or key prefix) `key`."""
        for pattern, replacement in self.rules:
            renamed, count = re.subn(f"^{pattern}", replacement, key)
            if count:
                return self.prefix + renamed
        raise KeyError(f"the {self.format} layout has no name for '{key}'")

    def shared_prefix(self, *keys: str) -> str:
        """The start shared by the file's names for `keys`: the name of the module holding them."""
        return os.path.commonprefix([self.source_key(key) for key in keys])


@dataclass
class Conversion:
    """What `convert_checkpoint` wrote."""

    path: Path
    source_format: str
    sha256: str
    config: Config
    classes: ClassInfo
    reinitialised: list[str]


def detect_layout(state: dict[str, torch.Tensor], source: str | Path, meta: dict[str, Any] | None = None) -> Layout:
    """The reference layout of a state dict, recognised from its key names (and mmseg's `meta`)."""
    keys = list(state)
    prefix = "module." if all(key.startswith("module.") for key in keys) else ""
    names = [key[len(prefix) :] for key in keys]
    if any(name.startswith("layer0.") for name in names):
        return Layout("semseg", SEMSEG_RULES, "_deepstem", "uniform", True, prefix)
    if any(name.startswith("backbone.") for name in names) and any(name.startswith("decode_head.") for name in names):
        if not any(name.startswith("decode_head.psp_modules.") for name in names):
            raise CheckpointError(
                f"{source}: an mmsegmentation checkpoint, but its decode head is not a PSPHead "
                "(no decode_head.psp_modules.* tensors)"
            )
        deep_stem = f"{prefix}backbone.stem.0.weight" in state
        rules = (MMSEG_DEEP_STEM_RULES if deep_stem else ()) + MMSEG_RULES
        return Layout("mmseg", rules, "_v1c" if deep_stem else "", "mmseg", mmseg_align_corners(meta or {}), prefix)
    shown = ", ".join(keys[:5]) or "none"
    raise CheckpointError(
        f"{source}: a torch file, but not a checkpoint layout pspnet knows "
        f"(pspnet, semseg or mmsegmentation); first keys: {shown}"
    )


def mmseg_align_corners(meta: dict[str, Any]) -> bool:
    """The decode head's `align_corners` in the config text mmseg stores in `meta` (0.x: `config`, 1.x: `cfg`).

    Not in the weights: most mmseg PSPNets use False (the default, also without a config text), the
    Cityscapes 769x769 ones True.
    """
    text = meta.get("config") or meta.get("cfg")
    if not isinstance(text, str):
        return False
    match = re.search(
        r"decode_head['\"]?\s*[=:]\s*(?:dict\(|\{).*?align_corners['\"]?\s*[=:]\s*(True|False)", text, re.DOTALL
    )
    return match is not None and match.group(1) == "True"


def infer_model_config(state: dict[str, torch.Tensor], layout: Layout, source: str | Path) -> ModelConfig:
    """The architecture of the checkpoint: depth, widths, class count, heads, read from tensor shapes."""

    def shape(key: str) -> tuple[int, ...]:
        name = layout.source_key(key)
        if name not in state:
            raise CheckpointError(f"{source}: {layout.format} checkpoint without {name}")
        return tuple(state[name].shape)

    blocks = tuple(
        _count(state, lambda index, stage=stage: layout.source_key(f"encoder.layer{stage}.{index}."))
        for stage in range(1, 5)
    )
    stages = layout.source_key("encoder.layer")
    bottleneck = any(key.startswith(stages) and ".conv3." in key for key in state)
    depth = RESNET_DEPTH.get((blocks, bottleneck))
    if depth is None:
        kind = "bottleneck" if bottleneck else "basic"
        raise CheckpointError(
            f"{source}: {list(blocks)} {kind} blocks per stage match no ResNet (18, 34, 50, 101, 152)"
        )
    stem_conv = shape("encoder.conv1.0.weight" if layout.stem else "encoder.conv1.weight")
    planes = [shape(f"encoder.layer{stage}.0.conv1.weight")[0] for stage in range(1, 5)]
    encoder_kwargs: dict[str, Any] = {}
    if planes != DEFAULT_PLANES:
        encoder_kwargs["channels"] = planes
    if layout.stem and stem_conv[0] != STEMS[layout.stem]["stem_width"]:
        encoder_kwargs["stem_width"] = stem_conv[0]

    branches = _count(
        state,
        lambda index: layout.shared_prefix(
            f"decode_head.ppm.branches.{index}.1.weight", f"decode_head.ppm.branches.{index}.2.weight"
        ),
    )
    if branches not in (0, len(PAPER_BINS)):
        raise CheckpointError(
            f"{source}: {branches} pooling branches; pool sizes are not stored in the weights and "
            f"only the references' {len(PAPER_BINS)} (bins {PAPER_BINS}) are known"
        )
    aux_prefix = layout.shared_prefix("aux_head.conv.0.weight", "aux_head.classifier.weight")
    has_aux = any(key.startswith(aux_prefix) for key in state)
    classifier = shape("decode_head.classifier.weight")
    return ModelConfig(
        encoder=f"resnet{depth}{layout.stem}",
        encoder_kwargs=encoder_kwargs,
        output_stride=8,
        dilation_style=layout.dilation_style,
        in_channels=stem_conv[1],
        num_classes=classifier[0],
        use_ppm=branches > 0,
        bins=list(PAPER_BINS),
        ppm_channels=shape("decode_head.ppm.branches.0.1.weight")[0] if branches else None,
        decoder_channels=shape("decode_head.fusion.0.weight")[0],
        classifier_kernel=classifier[-1],
        align_corners=layout.align_corners,
        aux="seg" if has_aux else "none",
        aux_channels=shape("aux_head.conv.0.weight")[0] if has_aux else ModelConfig.aux_channels,
    )


def _count(state: dict[str, torch.Tensor], prefix_of: Callable[[int], str]) -> int:
    """How many consecutive indices 0, 1, ... have tensors whose names start with `prefix_of(index)`."""
    count = 0
    while any(key.startswith(prefix_of(count)) for key in state):
        count += 1
    return count


def convert_state(
    state: dict[str, torch.Tensor], model: PSPNet, layout: Layout, source: str | Path
) -> dict[str, torch.Tensor]:
    """`model`'s state dict filled from the file's tensors, or an error listing every mismatch.

    Missing, unexpected and wrong-shaped tensors are all reported, under the file's own names.
    """
    own = model.state_dict()
    names = {key: layout.source_key(key) for key in own}
    diff = compare_state_dicts(own, state, names, optional=("num_batches_tracked",))
    if diff:
        raise CheckpointError(
            diff.describe(
                f"{source}: the {layout.format} checkpoint does not match the architecture "
                f"inferred from it ({model.config.encoder}, {model.config.num_classes} classes)"
            )
        )
    return {key: state[name] if name in state else torch.zeros_like(own[key]) for key, name in names.items()}


@dataclass
class ReferenceFile:
    """A semseg or mmseg checkpoint as read: its tensors, their layout, mmseg's `meta` and the architecture."""

    path: Path
    state: dict[str, torch.Tensor]
    layout: Layout
    meta: dict[str, Any]
    model_config: ModelConfig

    def build_model(self, classes: ClassInfo) -> PSPNet:
        """An eval-mode PSPNet holding the file's weights, with `classes` in its card."""
        model = PSPNet(config=self.model_config, classes=classes)
        model.load_state_dict(convert_state(self.state, model, self.layout, self.path))
        return model.eval()


def read_reference(path: str | Path) -> ReferenceFile:
    """Read a semseg or mmseg checkpoint with `weights_only=True` (no code stored in it runs) and infer its architecture."""
    path = Path(path)
    checkpoint = load_torch_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__}, not a dict of tensors)")
    state = checkpoint.get("state_dict", checkpoint)
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())
    ):
        raise CheckpointError(f"{path}: not a checkpoint (no state dict of tensors)")
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), dict) else {}
    layout = detect_layout(state, path, meta)
    return ReferenceFile(path, state, layout, meta, infer_model_config(state, layout, path))


def meta_classes(meta: dict[str, Any], source: str | Path) -> ClassInfo | None:
    """Class names and palette stored by mmseg: `meta['dataset_meta']` (1.x) or `CLASSES`/`PALETTE` (0.x)."""
    dataset_meta = meta.get("dataset_meta") or {}
    names = dataset_meta.get("classes") or meta.get("CLASSES")
    if not names:
        return None
    palette = dataset_meta.get("palette") or meta.get("PALETTE")
    try:  # mmseg's ADE20K names carry stray spaces ('bed ')
        return ClassInfo.from_dict({"names": [str(name).strip() for name in names], "palette": palette})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: unusable class names/palette in the checkpoint's meta: {exc}") from None


def resolve_classes(
    num_classes: int, stored: ClassInfo | None, dataset: str | None, source: str | Path
) -> tuple[ClassInfo, DataConfig]:
    """Names and palette (the checkpoint's, else `dataset`'s, else generic) and the matching data section.

    Without `dataset`, the data section names a known dataset only when the stored names are exactly its names.
    """
    if stored is not None and stored.num_classes != num_classes:
        raise CheckpointError(
            f"{source}: the meta lists {stored.num_classes} classes but the classifier predicts {num_classes}"
        )
    known = dataset_classes(dataset) if dataset else None
    if known is not None and known.num_classes != num_classes:
        raise ConfigError(f"--dataset {dataset}: {known.num_classes} classes, but the model predicts {num_classes}")
    if dataset is None and stored is not None:
        dataset = _dataset_named(stored.names)
    classes = stored or known or ClassInfo.generic(num_classes)
    return classes, DataConfig(format=dataset) if dataset else DataConfig()


def _dataset_named(names: tuple[str, ...]) -> str | None:
    """The first dataset format whose fixed classes have exactly these names."""
    for name, spec in SOURCES.items():
        try:
            if spec.classes is not None and spec.classes().names == names:
                return name
        except DataError:  # cityscapes' names need the cityscapesscripts package
            continue
    return None


def load_reference(path: str | Path, dataset: str | None = None) -> tuple[PSPNet, Config, dict[str, Any]]:
    """An eval-mode model, a config and metadata from a semseg or mmseg checkpoint file.

    Class names come from the file's meta, else from `dataset` (cityscapes, ade20k, voc), else are generic.
    """
    reference = read_reference(path)
    classes, data = resolve_classes(
        reference.model_config.num_classes, meta_classes(reference.meta, path), dataset, path
    )
    model = reference.build_model(classes)
    return model, Config(model=model.config, data=data), {"source_format": reference.layout.format}


def convert_checkpoint(
    source: str | Path, dest: str | Path, dataset: str | None = None, num_classes: int | None = None
) -> Conversion:
    """Write a semseg or mmseg checkpoint in pspnet's native format (safetensors + JSON metadata).

    The metadata records the source format, the source file's name and sha256 and the architecture
    read from it. `num_classes` re-initialises the classifiers for fine-tuning on another label set.
    """
    reference = read_reference(source)
    classes, data = resolve_classes(
        reference.model_config.num_classes,
        meta_classes(reference.meta, source),
        None if num_classes is not None else dataset,
        source,
    )
    model = reference.build_model(classes)
    reinitialised = []
    if num_classes is not None:
        if not 0 < num_classes < IGNORE_INDEX:
            raise ConfigError(f"--num-classes: expected 1..{IGNORE_INDEX - 1}, got {num_classes}")
        # the file's names belong to the label set being replaced
        classes, data = resolve_classes(num_classes, None, dataset, source)
        reinitialised = model.reset_classifiers(classes)
    config = Config(model=model.config, data=data)
    sha256 = file_sha256(source)
    converted_from = {
        "format": reference.layout.format,
        "file": Path(source).name,
        "sha256": sha256,
        "architecture": dataclasses.asdict(reference.model_config),
        "reinitialised": reinitialised,
    }
    path = save_checkpoint(dest, model, config, converted_from=converted_from)
    return Conversion(path, reference.layout.format, sha256, config, classes, reinitialised)
