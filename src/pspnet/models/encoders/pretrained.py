"""Encoder weights: local state dicts (timm, torchvision, ours, the references' ImageNet ResNets) and
timm's ImageNet weights.

Keys are matched after normalisation, so a full classification model's state dict loads into a
`features_only` encoder: wrapper prefixes (`module.`, `backbone.`, `encoder.`, `body.`, `model.`)
are dropped and `.` and `_` are treated alike (timm's feature wrappers rename `layers.0` to
`layers_0`). Keys the encoder does not use (the classifier, a final norm) are reported, not fatal;
missing keys and wrong shapes are errors. A 3-channel first conv is adapted to other `in_channels`
as timm does (summed for 1 channel, repeated and rescaled otherwise).

The ImageNet ResNets the reference implementations train from are recognised by their stem and
renamed to timm's names: semseg's `initmodel/resnet{50,101,152}_v2.pth` (deep stem 64-64-128 as
`conv1..conv3`/`bn1..bn3`, for `resnet{D}_deepstem`) and mmcv's `resnet{D}_v1c` (deep stem 32-32-64 as
`stem.{0,1,3,4,6,7}`, for `resnet{D}_v1c`). For these, only the classifier (`fc.*`) may be left over.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...io.weights import read_state_dict
from ..state_dicts import MAX_LISTED, compare_state_dicts

log = logging.getLogger(__name__)

WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.", "body.", "model.")
HUB_TIMEOUT_S = 3.0
"""How long `encoder_weights: imagenet` waits for a connection before giving up."""


@dataclass
class LoadReport:
    """What a weights file gave the encoder."""

    loaded: int
    unused: list[str]
    adapted: list[str]


def _normalize(key: str, keep_dots: bool = False) -> str:
    """`key` without wrapper prefixes, with `.` written as `_` (unless `keep_dots`)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key if keep_dots else key.replace(".", "_")


def _adapt_input_conv(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A 3-channel first-conv weight adapted to `shape`'s input channels, or None if that is not the case."""
    if weight.ndim != 4 or weight.shape[1] != 3 or weight.shape[:1] + weight.shape[2:] != shape[:1] + shape[2:]:
        return None
    return timm.models.adapt_input_conv(shape[1], weight)


STEM_LAYOUTS = {
    "semseg deep-stem ResNet": {
        "conv1.": "conv1.0.",
        "bn1.": "conv1.1.",
        "conv2.": "conv1.3.",
        "bn2.": "conv1.4.",
        "conv3.": "conv1.6.",
        "bn3.": "bn1.",
    },
    "mmcv ResNetV1c": {
        "stem.0.": "conv1.0.",
        "stem.1.": "conv1.1.",
        "stem.3.": "conv1.3.",
        "stem.4.": "conv1.4.",
        "stem.6.": "conv1.6.",
        "stem.7.": "bn1.",
    },
}
"""Stem key prefixes of the references' ImageNet ResNets -> timm's deep-stem names (blocks are named alike)."""
CLASSIFIER_PREFIX = "fc."


def reference_stem_layout(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the reference ResNet layout `state` is in (see STEM_LAYOUTS), or None."""
    keys = {_strip_wrappers(key) for key in state}
    if "layer1.0.conv1.weight" not in keys:
        return None
    if len(keys & {"conv2.weight", "bn2.weight", "conv3.weight", "bn3.weight"}) >= 2:
        return "semseg deep-stem ResNet"
    if any(key.startswith("stem.") for key in keys):
        return "mmcv ResNetV1c"
    return None


def _strip_wrappers(key: str) -> str:
    return _normalize(key, keep_dots=True)


def _rename_stem(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, tensor in state.items():
        name = _strip_wrappers(key)
        for old, new in STEM_LAYOUTS[layout].items():
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        renamed[name] = tensor
    return renamed


def load_encoder_state(encoder: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Load `state` into `encoder`, matching keys as the module docstring says."""
    layout = reference_stem_layout(state)
    if layout is not None:
        state = _rename_stem(state, layout)
    own = encoder.state_dict()
    by_name = {_normalize(key): key for key in state}
    names = {key: by_name.get(_normalize(key), key) for key in own}  # unmatched keys keep their own name: missing
    tensors, adapted = dict(state), []
    for key, name in names.items():
        if name in state and state[name].shape != own[key].shape:
            converted = _adapt_input_conv(state[name], own[key].shape)
            if converted is not None:
                tensors[name] = converted
                adapted.append(key)
    # num_batches_tracked: absent from older torchvision files
    diff = compare_state_dicts(own, tensors, names, optional=("num_batches_tracked",))
    if diff.missing or diff.wrong_shape:
        matched = len(own) - len(diff.missing) - len(diff.wrong_shape)
        diff.unexpected = []  # a classifier's tensors are expected to be left over
        raise CheckpointError(
            diff.describe(
                f"encoder weights {source} do not match the encoder ({matched} of {len(own)} tensors matched):",
                MAX_LISTED,
            )
        )
    loaded = {key: tensors[name] for key, name in names.items() if name in tensors}
    used = {names[key] for key in loaded}
    unused = sorted(key for key in state if key not in used)
    if layout is not None and any(not key.startswith(CLASSIFIER_PREFIX) for key in unused):
        extra = [key for key in unused if not key.startswith(CLASSIFIER_PREFIX)]
        raise CheckpointError(
            f"encoder weights {source} ({layout}): tensors the encoder has no place for: "
            + ", ".join(extra[:MAX_LISTED])
            + (f", ... ({len(extra)} in all)" if len(extra) > MAX_LISTED else "")
        )
    encoder.load_state_dict(loaded, strict=False)
    if unused:
        shown = ", ".join(unused[:MAX_LISTED]) + (", ..." if len(unused) > MAX_LISTED else "")
        log.info(
            "encoder weights %s: %d tensors the encoder does not use (classifier etc.): %s", source, len(unused), shown
        )
    return LoadReport(len(loaded), unused, adapted)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> LoadReport:
    """Load a local `.safetensors` or torch file (read with `weights_only=True`) into the encoder."""
    return load_encoder_state(encoder, read_state_dict(path), str(path))


def _weights_cached(pretrained_cfg) -> bool:
    """Whether timm's weights are already in the Hugging Face or torch hub cache (no network needed)."""
    if pretrained_cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache  # timm's own dependency, needed only here

        filename = getattr(pretrained_cfg, "hf_hub_filename", None)
        files = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]
        if any(isinstance(try_to_load_from_cache(pretrained_cfg.hf_hub_id, name), str) for name in files):
            return True
    if pretrained_cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pretrained_cfg.url).path).name).is_file()
    return False


def _unreachable(url: str) -> str | None:
    """Why `url`'s host cannot be reached within HUB_TIMEOUT_S, or None when it can."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=HUB_TIMEOUT_S).close()
    except OSError as exc:
        return f"{parsed.hostname}:{port} cannot be reached ({exc or type(exc).__name__})"
    return None


def imagenet_state_dict(arch: str, in_channels: int) -> dict[str, torch.Tensor]:
    """timm's ImageNet weights of `arch` (downloaded and cached by timm); fails fast when offline."""
    pretrained_cfg = timm.models.get_pretrained_cfg(arch)
    if pretrained_cfg is None or not (pretrained_cfg.hf_hub_id or pretrained_cfg.url):
        raise ConfigError(f"model.encoder_weights: timm has no ImageNet weights for {arch}; pass a local file instead")
    if not _weights_cached(pretrained_cfg):
        url = (
            os.environ.get("HF_ENDPOINT", "https://huggingface.co") if pretrained_cfg.hf_hub_id else pretrained_cfg.url
        )
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        reason = "HF_HUB_OFFLINE is set" if offline else _unreachable(url)
        if reason:
            raise ConfigError(
                f"model.encoder_weights: 'imagenet' downloads timm's {arch} weights, but {reason}. "
                f'On a machine with internet access run: python -c "import timm, safetensors.torch as st; '
                f"st.save_file(timm.create_model('{arch}', pretrained=True).state_dict(), '{arch}.safetensors')\" "
                f"and set model.encoder_weights: /path/to/{arch}.safetensors"
            )
    return timm.create_model(arch, pretrained=True, in_chans=in_channels).state_dict()
