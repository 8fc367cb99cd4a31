"""Loading semseg and mmsegmentation checkpoints: same function, strict, any input size; `pspnet convert`.

The checkpoints are built here from the references' naming (their code is not needed), with tiny
widths, and their logits are checked against `reference_logits`: a float64 re-implementation of
both networks with torch.nn.functional ops on the raw state dict, independent of pspnet's modules.
"""

from __future__ import annotations

import copy
import hashlib
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pspnet import load_model
from pspnet.checkpoint import open_model, read_metadata
from pspnet.checkpoint.reference import convert_state, detect_layout, infer_model_config, load_reference
from pspnet.cli import main
from pspnet.data.formats.voc import VOC_NAMES
from pspnet.errors import CheckpointError, ConfigError
from pspnet.models import PSPNet

BINS = (1, 2, 3, 6)
BOTTLENECK_BLOCKS = (3, 4, 6, 3)  # ResNet-50
BASIC_BLOCKS = (2, 2, 2, 2)  # ResNet-18
PLANES = (64, 128, 256, 512)  # published widths of the four stages


# --- checkpoint builders: the references' key names, tensors of any width -------------------------


class Builder:
    """Tensors under the given names: random convs (He-scaled) and BatchNorms (eval statistics).

    With `shapes_only`, tensors live on the meta device: names and shapes at full size, no memory.
    """

    def __init__(self, seed: int = 0, batches_tracked: bool = True, shapes_only: bool = False):
        self.state: dict[str, torch.Tensor] = {}
        self.gen = torch.Generator().manual_seed(seed)
        self.batches_tracked = batches_tracked
        self.shapes_only = shapes_only

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        if self.shapes_only:
            return torch.empty(shape, device="meta")
        return low + (high - low) * torch.rand(shape, generator=self.gen)

    def conv(self, name: str, out: int, inp: int, kernel: int, bias: bool = False) -> None:
        bound = (6 / (inp * kernel * kernel)) ** 0.5
        self.state[f"{name}.weight"] = self.uniform(-bound, bound, out, inp, kernel, kernel)
        if bias:
            self.state[f"{name}.bias"] = self.uniform(-0.2, 0.2, out)

    def bn(self, name: str, channels: int) -> None:
        self.state.update(
            {
                f"{name}.weight": self.uniform(0.5, 1.0, channels),
                f"{name}.bias": self.uniform(-0.2, 0.2, channels),
                f"{name}.running_mean": self.uniform(-0.2, 0.2, channels),
                f"{name}.running_var": self.uniform(0.5, 1.5, channels),
            }
        )
        if self.batches_tracked:
            self.state[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    def conv_bn(self, conv: str, bn: str, out: int, inp: int, kernel: int) -> None:
        self.conv(conv, out, inp, kernel)
        self.bn(bn, out)

    def resnet_stages(
        self, prefix: str, inplanes: int, planes: list[int], blocks: tuple[int, ...], bottleneck: bool
    ) -> list[int]:
        """torchvision-named stages `{prefix}layer{1-4}`; returns each stage's output channels."""
        expansion = 4 if bottleneck else 1
        outputs = []
        for stage, (width, count) in enumerate(zip(planes, blocks), start=1):
            for index in range(count):
                block = f"{prefix}layer{stage}.{index}."
                if bottleneck:
                    self.conv_bn(block + "conv1", block + "bn1", width, inplanes, 1)
                    self.conv_bn(block + "conv2", block + "bn2", width, width, 3)
                    self.conv_bn(block + "conv3", block + "bn3", width * expansion, width, 1)
                else:
                    self.conv_bn(block + "conv1", block + "bn1", width, inplanes, 3)
                    self.conv_bn(block + "conv2", block + "bn2", width, width, 3)
                if index == 0 and (stage == 2 or inplanes != width * expansion):
                    self.conv_bn(block + "downsample.0", block + "downsample.1", width * expansion, inplanes, 1)
                inplanes = width * expansion
            outputs.append(inplanes)
        return outputs


def semseg_checkpoint(
    classes: int = 5, blocks: tuple[int, ...] = BOTTLENECK_BLOCKS, scale: int = 16, shapes_only: bool = False
) -> dict:
    """semseg's `torch.save({'epoch', 'state_dict', 'optimizer'})` of a DDP-wrapped PSPNet, widths / `scale`."""
    b = Builder(shapes_only=shapes_only)
    stem = 64 // scale  # layer0: 64-64-128
    b.conv_bn("layer0.0", "layer0.1", stem, 3, 3)
    b.conv_bn("layer0.3", "layer0.4", stem, stem, 3)
    b.conv_bn("layer0.6", "layer0.7", 2 * stem, stem, 3)
    widths = b.resnet_stages("", 2 * stem, [w // scale for w in PLANES], blocks, bottleneck=True)
    top, fusion, aux = widths[3], 512 // scale, 256 // scale
    for index in range(len(BINS)):  # reduction_dim = fea_dim / len(bins)
        b.conv_bn(f"ppm.features.{index}.1", f"ppm.features.{index}.2", top // len(BINS), top, 1)
    b.conv_bn("cls.0", "cls.1", fusion, 2 * top, 3)
    b.conv("cls.4", classes, fusion, 1, bias=True)
    b.conv_bn("aux.0", "aux.1", aux, widths[2], 3)
    b.conv("aux.4", classes, aux, 1, bias=True)
    state = {f"module.{key}": value for key, value in b.state.items()}
    return {"epoch": 200, "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "params": [0]}]}}


def mmseg_checkpoint(
    depth: int = 18,
    deep_stem: bool = True,
    aux: bool = True,
    classes: int = 3,
    meta: dict | None = None,
    batches_tracked: bool = True,
    scale: int = 8,
    channels: int | None = 6,
    shapes_only: bool = False,
) -> dict:
    """mmseg's `{'meta', 'state_dict'}` of an EncoderDecoder(ResNetV1c or ResNet, PSPHead, FCNHead), widths / `scale`.

    `channels`: the PSPHead's width (the configs' value / `scale` when None); 6 is not C / 4, to tell them apart.
    """
    b = Builder(1, batches_tracked, shapes_only)
    if deep_stem:  # ResNetV1c, stem_channels 64: 32-32-64
        stem = 32 // scale
        b.conv_bn("backbone.stem.0", "backbone.stem.1", stem, 3, 3)
        b.conv_bn("backbone.stem.3", "backbone.stem.4", stem, stem, 3)
        b.conv_bn("backbone.stem.6", "backbone.stem.7", 2 * stem, stem, 3)
        inplanes = 2 * stem
    else:  # ResNet (the "b" models): the torchvision 7x7 stem, 64 channels at any scale (timm's is fixed)
        b.conv_bn("backbone.conv1", "backbone.bn1", 64, 3, 7)
        inplanes = 64
    bottleneck = depth >= 50
    blocks = {18: BASIC_BLOCKS, 50: BOTTLENECK_BLOCKS, 101: (3, 4, 23, 3)}[depth]
    widths = b.resnet_stages("backbone.", inplanes, [w // scale for w in PLANES], blocks, bottleneck)
    channels = channels or (512 if bottleneck else 128) // scale
    for index in range(len(BINS)):
        b.conv_bn(
            f"decode_head.psp_modules.{index}.1.conv", f"decode_head.psp_modules.{index}.1.bn", channels, widths[3], 1
        )
    b.conv_bn("decode_head.bottleneck.conv", "decode_head.bottleneck.bn", channels, widths[3] + len(BINS) * channels, 3)
    b.conv("decode_head.conv_seg", classes, channels, 1, bias=True)
    if aux:
        aux_channels = (256 if bottleneck else 64) // scale
        b.conv_bn("auxiliary_head.convs.0.conv", "auxiliary_head.convs.0.bn", aux_channels, widths[2], 3)
        b.conv("auxiliary_head.conv_seg", classes, aux_channels, 1, bias=True)
    return {"meta": meta or {}, "state_dict": b.state}


# --- the references' forward pass, float64, functional ops on the raw state dict -------------------


def reference_logits(state: dict[str, torch.Tensor], x: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """Logits of a semseg or mmseg PSPNet, following each code base's conventions."""
    semseg = any(key.startswith("module.layer0.") for key in state)
    sd = {key.removeprefix("module."): value.double() for key, value in state.items()}
    size, x = x.shape[-2:], x.double()

    def conv(x, name, stride=1, dilation=1):
        weight = sd[f"{name}.weight"]
        return F.conv2d(x, weight, sd.get(f"{name}.bias"), stride, dilation * (weight.shape[-1] // 2), dilation)

    def bn(x, name, relu=True):
        x = F.batch_norm(
            x,
            sd[f"{name}.running_mean"],
            sd[f"{name}.running_var"],
            sd[f"{name}.weight"],
            sd[f"{name}.bias"],
            training=False,
            eps=1e-5,
        )
        return F.relu(x) if relu else x

    if semseg:
        stem, backbone = [("layer0.0", "layer0.1", 2), ("layer0.3", "layer0.4", 1), ("layer0.6", "layer0.7", 1)], ""
    elif "backbone.stem.0.weight" in sd:
        stem, backbone = (
            [(f"backbone.stem.{c}", f"backbone.stem.{c + 1}", 2 if c == 0 else 1) for c in (0, 3, 6)],
            "backbone.",
        )
    else:
        stem, backbone = [("backbone.conv1", "backbone.bn1", 2)], "backbone."
    for conv_name, bn_name, stride in stem:
        x = bn(conv(x, conv_name, stride), bn_name)
    x = F.max_pool2d(x, 3, 2, 1)

    features = []
    for stage in range(1, 5):
        stage_dilation = {3: 2, 4: 4}.get(stage, 1)
        index = 0
        while f"{backbone}layer{stage}.{index}.conv1.weight" in sd:
            block = f"{backbone}layer{stage}.{index}."
            stride = 2 if stage == 2 and index == 0 else 1
            # semseg dilates every block; mmseg's contract_dilation halves the first block's dilation
            dilation = stage_dilation // 2 if (not semseg and index == 0 and stage_dilation > 1) else stage_dilation
            if f"{block}conv3.weight" in sd:  # bottleneck: the stride and dilation sit on the 3x3 conv2
                out = bn(conv(x, block + "conv1"), block + "bn1")
                out = bn(conv(out, block + "conv2", stride, dilation), block + "bn2")
                out = bn(conv(out, block + "conv3"), block + "bn3", relu=False)
            else:  # mmseg BasicBlock: conv1 strided and dilated, conv2 plain 3x3
                out = bn(conv(x, block + "conv1", stride, dilation), block + "bn1")
                out = bn(conv(out, block + "conv2"), block + "bn2", relu=False)
            if f"{block}downsample.0.weight" in sd:
                x = bn(conv(x, block + "downsample.0", stride), block + "downsample.1", relu=False)
            x = F.relu(out + x)
            index += 1
        features.append(x)

    top = features[3]
    align = align_corners  # semseg: True everywhere; mmseg: the config's value (False by default)
    pooled = [top]  # concat order: input first, then bins 1, 2, 3, 6
    for index, bins in enumerate(BINS):
        y = F.adaptive_avg_pool2d(top, bins)
        if semseg:
            y = bn(conv(y, f"ppm.features.{index}.1"), f"ppm.features.{index}.2")
        else:
            y = bn(conv(y, f"decode_head.psp_modules.{index}.1.conv"), f"decode_head.psp_modules.{index}.1.bn")
        pooled.append(F.interpolate(y, top.shape[-2:], mode="bilinear", align_corners=align))
    y = torch.cat(pooled, 1)
    if semseg:
        y = conv(bn(conv(y, "cls.0"), "cls.1"), "cls.4")
    else:
        y = conv(bn(conv(y, "decode_head.bottleneck.conv"), "decode_head.bottleneck.bn"), "decode_head.conv_seg")
    return F.interpolate(y, size, mode="bilinear", align_corners=align)


# --- loading: architecture, numerics, every tensor used ---------------------------------------------

MMSEG_769_CONFIG = """model = dict(
    type='EncoderDecoder',
    backbone=dict(type='ResNet', depth=50, norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(
        type='PSPHead',
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=True,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    test_cfg=dict(mode='slide', crop_size=(769, 769), stride=(513, 513)))
"""
"""The part of a 769x769 Cityscapes config text (mmseg 0.x `meta['config']`) that matters here."""

CASES = {  # name -> (checkpoint builder, expected encoder, dilation style, align_corners, aux head)
    "semseg-r50": (semseg_checkpoint, "resnet50_deepstem", "uniform", True, "seg"),
    "mmseg-r18-v1c": (mmseg_checkpoint, "resnet18_v1c", "mmseg", False, "seg"),
    "mmseg-r50b-769-noaux": (
        lambda: mmseg_checkpoint(
            50, deep_stem=False, aux=False, batches_tracked=False, meta={"config": MMSEG_769_CONFIG}
        ),
        "resnet50",
        "mmseg",
        True,
        "none",
    ),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    """(name, checkpoint dict, file, loaded model) for each reference layout."""
    checkpoint = CASES[request.param][0]()
    path = tmp_path_factory.mktemp("reference") / f"{request.param}.pth"
    torch.save(checkpoint, path)
    return request.param, checkpoint, path, load_model(path)


def test_architecture_is_read_from_the_file(case):
    name, checkpoint, _, model = case
    _, encoder, dilation_style, align_corners, aux = CASES[name]  # align_corners: mmseg's from its config text
    config = model.config
    assert (config.encoder, config.dilation_style, config.align_corners, config.aux) == (
        encoder,
        dilation_style,
        align_corners,
        aux,
    )
    classifier = next(
        v for k, v in checkpoint["state_dict"].items() if k.endswith(("cls.4.weight", "decode_head.conv_seg.weight"))
    )
    assert config.num_classes == classifier.shape[0] and not model.training


def test_logits_equal_the_reference_at_sizes_it_accepts(case):
    name, checkpoint, _, model = case
    image = torch.randn(2, 3, 65, 49, generator=torch.Generator().manual_seed(0))  # 8n+1: semseg's only sizes
    with torch.no_grad():
        ours = copy.deepcopy(model).double()(image.double())
    expected = reference_logits(checkpoint["state_dict"], image, align_corners=CASES[name][3])
    assert ours.shape == expected.shape == (2, model.config.num_classes, 65, 49)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())


@pytest.mark.parametrize("size", [(50, 37), (64, 64)])
def test_any_input_size_works(case, size):
    name, checkpoint, _, model = case
    image = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(image)
    assert logits.shape == (1, model.config.num_classes, *size) and torch.isfinite(logits).all()
    if name.startswith("mmseg"):  # mmseg itself accepts any size: the same function there too
        expected = reference_logits(checkpoint["state_dict"], image, align_corners=CASES[name][3])
        torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4)


def test_every_tensor_of_the_file_is_used_once(case):
    _, checkpoint, _, model = case
    state = checkpoint["state_dict"]
    own = model.state_dict()
    counters = [key for key in own if key.endswith("num_batches_tracked")]
    if not any(key.endswith("num_batches_tracked") for key in state):  # absent counters are set to 0, explicitly
        assert all(own.pop(key).item() == 0 for key in counters)

    def fingerprints(tensors):
        return sorted((tuple(t.shape), t.double().sum().item()) for t in tensors)

    assert len(own) == len(state) and fingerprints(own.values()) == fingerprints(state.values())


@pytest.mark.parametrize(
    "checkpoint, encoder, widths",
    [
        (semseg_checkpoint(19, (3, 4, 23, 3), scale=1, shapes_only=True), "resnet101_deepstem", (512, 512, 256)),
        (mmseg_checkpoint(50, classes=19, scale=1, channels=None, shapes_only=True), "resnet50_v1c", (512, 512, 256)),
        (mmseg_checkpoint(18, classes=19, scale=1, channels=None, shapes_only=True), "resnet18_v1c", (128, 128, 64)),
    ],
    ids=["semseg-pspnet101", "mmseg-r50-d8", "mmseg-r18-d8"],
)
def test_published_sizes_give_the_stock_encoders(checkpoint, encoder, widths):
    """At full width (shapes only), the files map onto the named encoders with no width overrides."""
    state = checkpoint["state_dict"]
    layout = detect_layout(state, "file")
    config = infer_model_config(state, layout, "file")
    assert (config.encoder, config.encoder_kwargs, config.num_classes) == (encoder, {}, 19)
    assert (config.ppm_channels, config.decoder_channels, config.aux_channels) == widths
    with torch.device("meta"):
        model = PSPNet(config=config)
    assert convert_state(state, model, layout, "file").keys() == model.state_dict().keys()


# --- strictness: every problem reported, under the file's names -------------------------------------


def _drop(key):
    return lambda state: state.pop(key)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (_drop("module.layer3.1.conv2.weight"), "missing (1): module.layer3.1.conv2.weight"),
        (_drop("module.layer1.0.conv3.weight"), "missing (1): module.layer1.0.conv3.weight"),
        (_drop("module.ppm.features.3.1.weight"), "missing (1): module.ppm.features.3.1.weight"),
        (_drop("module.aux.4.weight"), "missing (1): module.aux.4.weight"),
        (
            lambda s: s.update({"module.ppm.features.0.3.weight": torch.ones(1)}),
            "unexpected (1): module.ppm.features.0.3.weight",
        ),
        (
            lambda s: s.update({"module.layer2.0.bn1.weight": torch.ones(5)}),
            "wrong shape (1): module.layer2.0.bn1.weight (file (5,), model (8,))",
        ),
    ],
)
def test_semseg_mismatches_are_errors(tmp_path, mutate, message):
    checkpoint = semseg_checkpoint()
    mutate(checkpoint["state_dict"])
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(tmp_path / "bad.pth")


def test_all_mismatches_are_listed_together_in_mmseg_names(tmp_path):
    checkpoint = mmseg_checkpoint()
    state = checkpoint["state_dict"]
    del state["decode_head.psp_modules.2.1.bn.running_var"]
    state["auxiliary_head.convs.1.conv.weight"] = torch.ones(5, 5, 3, 3)
    state["backbone.layer4.1.conv2.weight"] = torch.ones(64, 64, 1, 1)
    torch.save(checkpoint, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path / "bad.pth")
    text = str(error.value)
    assert "missing (1): decode_head.psp_modules.2.1.bn.running_var" in text
    assert "unexpected (1): auxiliary_head.convs.1.conv.weight" in text
    assert "wrong shape (1): backbone.layer4.1.conv2.weight (file (64, 64, 1, 1), model (64, 64, 3, 3))" in text


def _truncated(path):
    torch.save(semseg_checkpoint(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _renamed(checkpoint, old, new):
    checkpoint["state_dict"] = {k.replace(old, new): v for k, v in checkpoint["state_dict"].items()}
    return checkpoint


class CodeInPickle:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "write, message",
    [
        (_truncated, "cannot be read as a checkpoint"),
        (lambda p: p.write_text("not a checkpoint"), "cannot be read as a checkpoint"),
        (lambda p: Image.new("RGB", (4, 4)).save(p, format="PNG"), "cannot be read as a checkpoint"),
        (lambda p: torch.save({"state_dict": {"w": CodeInPickle()}}, p), "cannot be read as a checkpoint"),
        (lambda p: torch.save([torch.ones(1)], p), "not a checkpoint (holds a list"),
        (lambda p: torch.save({"epoch": 3}, p), "no state dict of tensors"),
        (
            lambda p: torch.save({"state_dict": {"fc.weight": torch.ones(2, 2)}}, p),
            "not a checkpoint layout pspnet knows",
        ),
        (
            lambda p: torch.save(_renamed(mmseg_checkpoint(), "psp_modules", "aspp_modules"), p),
            "decode head is not a PSPHead",
        ),
    ],
    ids=["truncated", "text", "png", "pickled-code", "list", "no-state-dict", "unknown-layout", "other-mmseg-head"],
)
def test_unreadable_files_are_errors(tmp_path, write, message, capsys):
    path = tmp_path / "file.pth"
    write(path)
    with pytest.raises(CheckpointError, match=re.escape(message)):
        load_model(path)
    assert "must never run" not in capsys.readouterr().out


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path / "absent.pth")


# --- class names: the file's meta, else --dataset, else generic -------------------------------------


def test_mmseg_meta_gives_names_and_palette(tmp_path):
    meta = {"CLASSES": ("sky", "road ", "car"), "PALETTE": [[1, 2, 3], [4, 5, 6], [7, 8, 9]]}
    torch.save(mmseg_checkpoint(meta=meta), tmp_path / "m.pth")
    loaded = open_model(tmp_path / "m.pth")
    model, config = loaded.model, loaded.config
    assert model.classes.names == ("sky", "road", "car") and model.classes.palette[1] == (4, 5, 6)
    assert loaded.format == "mmseg" and loaded.backend == "torch" and config.data.format == "synthetic"


def test_mmseg_1x_dataset_meta_names_a_known_dataset(tmp_path):
    meta = {"dataset_meta": {"classes": VOC_NAMES, "palette": [[i, i, i] for i in range(21)]}}
    torch.save(mmseg_checkpoint(classes=21, meta=meta), tmp_path / "m.pth")
    loaded = open_model(tmp_path / "m.pth")
    model, config = loaded.model, loaded.config
    assert model.classes.names == VOC_NAMES and config.data.format == "voc"
    assert config.replace([]).model == config.model  # the inferred config round-trips like any other


def test_dataset_supplies_names_when_the_file_has_none(tmp_path):
    torch.save(semseg_checkpoint(classes=21), tmp_path / "s.pth")
    model, config, _ = load_reference(tmp_path / "s.pth", dataset="voc")
    assert model.classes.names == VOC_NAMES and config.data.format == "voc"
    assert load_model(tmp_path / "s.pth").classes.names[:2] == ("class_0", "class_1")
    with pytest.raises(ConfigError, match="150 classes, but the model predicts 21"):
        load_reference(tmp_path / "s.pth", dataset="ade20k")
    with pytest.raises(ConfigError, match="unknown dataset 'kitti'"):
        load_reference(tmp_path / "s.pth", dataset="kitti")


def test_meta_with_another_class_count_is_an_error(tmp_path):
    torch.save(mmseg_checkpoint(meta={"CLASSES": ["a", "b"]}), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="meta lists 2 classes but the classifier predicts 3"):
        load_model(tmp_path / "m.pth")


# --- pspnet convert --------------------------------------------------------------------------------


def test_convert_writes_native_checkpoint_with_provenance(tmp_path, capsys):
    source, dest = tmp_path / "train_epoch_200.pth", tmp_path / "psp.safetensors"
    torch.save(semseg_checkpoint(classes=21), source)
    assert main(["convert", str(source), str(dest), "--dataset", "voc"]) == 0
    printed = capsys.readouterr().out
    assert "semseg" in printed and "resnet50_deepstem" in printed and "background, aeroplane" in printed

    provenance = read_metadata(dest)["converted_from"]
    assert provenance["format"] == "semseg" and provenance["file"] == source.name
    assert provenance["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert provenance["architecture"]["dilation_style"] == "uniform" and provenance["reinitialised"] == []

    loaded = open_model(dest)
    converted, config = loaded.model, loaded.config
    assert loaded.format == "pspnet"
    original = load_model(source)
    assert converted.classes.names == VOC_NAMES and config.data.format == "voc"
    image = torch.randn(1, 3, 41, 33)
    with torch.no_grad():
        torch.testing.assert_close(converted(image), original(image), rtol=0, atol=0)


def test_num_classes_reinitialises_only_the_classifiers(tmp_path, capsys):
    source = tmp_path / "m.pth"
    torch.save(mmseg_checkpoint(meta={"CLASSES": ["a", "b", "c"]}), source)
    assert main(["convert", str(source), str(tmp_path / "k.safetensors"), "--num-classes", "4"]) == 0
    printed = capsys.readouterr().out
    assert (
        "re-initialised for 4 classes: decode_head.classifier.weight, decode_head.classifier.bias, "
        "aux_head.classifier.weight, aux_head.classifier.bias"
    ) in printed

    before = load_model(source).state_dict()
    loaded = open_model(tmp_path / "k.safetensors")
    model, config, meta = loaded.model, loaded.config, loaded.metadata
    after = model.state_dict()
    classifiers = {
        "decode_head.classifier.weight",
        "decode_head.classifier.bias",
        "aux_head.classifier.weight",
        "aux_head.classifier.bias",
    }
    assert set(meta["converted_from"]["reinitialised"]) == classifiers
    assert after.keys() == before.keys() and config.model.num_classes == 4
    for key in after:
        if key in classifiers:
            assert after[key].shape[0] == 4
        else:
            assert torch.equal(after[key], before[key]), key
    assert model.classes.names == ("class_0", "class_1", "class_2", "class_3")  # the file's names were for 3 classes
    with torch.no_grad():
        assert model(torch.randn(1, 3, 20, 28)).shape == (1, 4, 20, 28)

    assert (
        main(["convert", str(source), str(tmp_path / "voc.safetensors"), "--num-classes", "21", "--dataset", "voc"])
        == 0
    )
    assert load_model(tmp_path / "voc.safetensors").classes.names == VOC_NAMES


def test_convert_errors_exit_2(tmp_path, capsys):
    torch.save(semseg_checkpoint(), tmp_path / "s.pth")
    assert main(["convert", str(tmp_path / "s.pth"), str(tmp_path / "o.safetensors"), "--dataset", "voc"]) == 2
    assert "error: --dataset voc: 21 classes, but the model predicts 5" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_predict_accepts_an_unconverted_file(tmp_path):
    torch.save(mmseg_checkpoint(), tmp_path / "m.pth")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 45, 3), dtype=np.uint8)).save(
        tmp_path / "in" / "a.png"
    )
    assert (
        main(["--quiet", "predict", str(tmp_path / "m.pth"), str(tmp_path / "in"), "--out", str(tmp_path / "out")]) == 0
    )
    labels = np.asarray(Image.open(tmp_path / "out" / "labels" / "a.png"))
    assert labels.shape == (30, 45) and labels.max() < 3


def test_mmseg_dilation_style_matches_mmseg_resnet():
    """mmseg's BasicBlock dilates conv1 only (first block of a stage at half dilation); bottlenecks as timm."""
    basic = PSPNet(3, encoder="resnet18_v1c", dilation_style="mmseg").encoder
    assert [b.conv1.dilation[0] for b in (*basic.layer3, *basic.layer4)] == [1, 2, 2, 4]
    assert [b.conv2.dilation[0] for b in (*basic.layer3, *basic.layer4)] == [1, 1, 1, 1]
    assert all(b.conv2.padding == (1, 1) for b in (*basic.layer3, *basic.layer4))
    bottleneck = PSPNet(3, encoder="resnet50_v1c", dilation_style="mmseg").encoder
    assert [b.conv2.dilation[0] for b in bottleneck.layer4] == [2, 4, 4]
