"""Encoder families: shapes and strides, MobileNetV2 widths, Swin at any size, weights, `pspnet models`.

All models are built with random weights; nothing here may reach the network (see `no_network`).
"""

from __future__ import annotations

import math
import socket
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from pspnet import PSPNet
from pspnet.cli import main
from pspnet.config import Config, ModelConfig
from pspnet.errors import CheckpointError, ConfigError
from pspnet.models.encoders import build_encoder, load_encoder_weights
from pspnet.models.encoders import pretrained as weights

SWIN_TINY = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 1, 2, 2]}  # every stage has a shifted block
VIT_TINY = {"dynamic_img_size": True, "depth": 3, "embed_dim": 32, "num_heads": 2}
HEAD = {"decoder_channels": 16, "aux_channels": 8, "ppm_channels": 4}

# family -> (PSPNet options, output stride of the deepest map with output_stride left at its default 8)
FAMILIES = {
    "resnet": ({"encoder": "resnet18_v1c", "encoder_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8}}, 8),
    "efficientnet": ({"encoder": "efficientnet_b0"}, 8),
    "mobilenetv2": ({"encoder": "mobilenetv2", "width_multiplier": 0.25}, 8),
    "swin": ({"encoder": "swin_tiny_patch4_window7_224", "encoder_kwargs": SWIN_TINY}, 32),
    "timm": ({"encoder": "timm:convnext_atto", "encoder_kwargs": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}}, 8),
    "timm-no-dilation": ({"encoder": "timm:vit_tiny_patch16_224", "encoder_kwargs": VIT_TINY}, 16),
    "lite": ({"encoder": "lite"}, 4),
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any connection attempt beyond the loopback interface fails the test."""
    connect = socket.socket.connect

    def guarded(sock, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"a test tried to reach {address}")
        return connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_at_odd_sizes(family):
    options, stride = FAMILIES[family]
    torch.manual_seed(0)
    model = PSPNet(3, **options, **HEAD)
    encoder = model.encoder
    assert max(encoder.reductions) == stride and model.output_stride == stride
    for height, width in [(33, 47), (24, 30)]:
        x = torch.randn(2, 3, height, width)
        features = encoder(x)
        assert [f.shape[1] for f in features] == list(encoder.out_channels)
        expected = [(math.ceil(height / r), math.ceil(width / r)) for r in encoder.reductions]
        assert [tuple(f.shape[-2:]) for f in features] == expected
        model.zero_grad()
        outputs = model.train()(x)
        assert outputs["out"].shape == outputs["aux"].shape == (2, 3, height, width)
        (outputs["out"].mean() + outputs["aux"].mean()).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize(
    "output_stride,reductions", [(8, [2, 4, 8, 8, 8]), (16, [2, 4, 8, 16, 16]), (32, [2, 4, 8, 16, 32])]
)
def test_dilatable_encoders_honour_the_output_stride(output_stride, reductions):
    encoder = build_encoder(ModelConfig(encoder="mobilenetv2_x0.25", output_stride=output_stride))
    assert encoder.reductions == reductions
    assert [f.shape[-1] for f in encoder(torch.randn(1, 3, 64, 64))] == [64 // r for r in reductions]


def _make_divisible(value: float, divisor: int = 8) -> int:
    """Nearest multiple of `divisor`, at least `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@pytest.mark.parametrize("width", [0.25, 0.35, 0.5, 0.75, 1.3, 2.0])
def test_mobilenetv2_width_multiplier_sets_the_channels(width):
    expected = [_make_divisible(c * width) for c in (16, 24, 32, 96, 320)]  # MobileNetV2's stage outputs
    named = build_encoder(ModelConfig(encoder=f"mobilenetv2_x{width}"))
    configured = build_encoder(ModelConfig(encoder="mobilenetv2", width_multiplier=width))
    assert named.out_channels == configured.out_channels == expected
    assert named.body.conv_stem.out_channels == _make_divisible(32 * width)


def test_mobilenetv2_width_errors():
    with pytest.raises(ConfigError, match=r"width multiplier must be in \[0.25, 2.0\], got 3.0"):
        build_encoder(ModelConfig(encoder="mobilenetv2_x3.0"))
    with pytest.raises(ConfigError, match="model.width_multiplier: expected a float in"):
        ModelConfig(width_multiplier=0.1)
    with pytest.raises(ConfigError, match="contradicts the encoder name"):
        build_encoder(ModelConfig(encoder="mobilenetv2_x0.5", width_multiplier=0.75))
    with pytest.raises(ConfigError, match="only MobileNetV2 encoders have one"):
        build_encoder(ModelConfig(encoder="resnet18", width_multiplier=0.5))


def test_swin_matches_a_fixed_size_reference_at_non_window_sizes():
    """Our Swin at 33x47 equals timm's Swin built for a fixed 64x64 input (static masks) on the
    zero-padded image, cropped: padding, window handling, layout and cropping are right, and so
    are the logits computed from them."""
    torch.manual_seed(0)
    model = PSPNet(3, encoder="swin_tiny_patch4_window7_224", encoder_kwargs=SWIN_TINY, **HEAD).eval()
    reference = timm.create_model(
        "swin_tiny_patch4_window7_224", features_only=True, img_size=(64, 64), always_partition=True, **SWIN_TINY
    ).eval()
    reference.load_state_dict(model.encoder.body.state_dict())
    shifted = [block for layer in list(reference.children())[1:] for block in layer.blocks[1::2]]
    assert len(shifted) == 4 and all(block.attn_mask is not None for block in shifted)  # static shifted-window masks
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        ours = model.encoder(x)
        padded = reference(F.pad(x, (0, 64 - 47, 0, 64 - 33)))
        expected = [
            f.permute(0, 3, 1, 2)[..., : math.ceil(33 / r), : math.ceil(47 / r)] for f, r in zip(padded, [4, 8, 16, 32])
        ]
        for feature, cropped in zip(ours, expected):
            torch.testing.assert_close(feature, cropped, rtol=1e-4, atol=1e-5)
        logits = F.interpolate(model.decode_head(expected[-1]), size=(33, 47), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)


def test_swin_output_stride_rules():
    options = {"encoder": "swin_tiny_patch4_window7_224", "encoder_kwargs": SWIN_TINY, **HEAD}
    assert PSPNet(3, **options, output_stride=32).output_stride == 32
    assert PSPNet(3, **options, ppm_feature=-2).output_stride == 16  # the default 8 falls back to 32
    with pytest.raises(ConfigError, match="runs at output stride 32, not 16; it cannot dilate"):
        PSPNet(3, **options, output_stride=16)
    with pytest.raises(ConfigError, match="resnet18 runs at output stride 8, 16, 32, not 4"):
        build_encoder(ModelConfig(encoder="resnet18", output_stride=4))


@pytest.mark.parametrize(
    "family,channels", [("resnet", 4), ("mobilenetv2", 4), ("swin", 1), ("timm-no-dilation", 4), ("lite", 1)]
)
def test_in_channels(family, channels):
    options, _ = FAMILIES[family]
    model = PSPNet(3, **options, **HEAD, in_channels=channels).eval()
    assert len(model.mean) == len(model.std) == channels
    image = np.random.default_rng(0).integers(0, 255, (29, 35, channels), dtype=np.uint8)
    label = model.predict(image[..., 0] if channels == 1 else image)
    assert label.shape == (29, 35)
    with pytest.raises(ValueError, match=f"HxWx{channels} image"):
        model.predict(np.zeros((29, 35, 3), dtype=np.uint8))


def test_normalisation_must_match_in_channels():
    with pytest.raises(ConfigError, match=r"data.mean/std: 3 values but model.in_channels is 1"):
        Config.from_dict({"model": {"in_channels": 1}})
    config = Config.from_dict({"model": {"in_channels": 1}, "data": {"mean": [0.5], "std": [0.25]}})
    assert config.data.mean == [0.5]


def test_unknown_names_suggest_close_ones():
    with pytest.raises(ConfigError, match="unknown encoder 'efficientnet_b9'; did you mean efficientnet_b"):
        build_encoder(ModelConfig(encoder="efficientnet_b9"))
    with pytest.raises(ConfigError, match="did you mean swin_tiny_patch4_window7_224"):
        build_encoder(ModelConfig(encoder="swin_tiny_patch4_window7"))
    with pytest.raises(ConfigError, match="unknown encoder 'timm:not_a_model'"):
        build_encoder(ModelConfig(encoder="timm:not_a_model"))
    assert build_encoder(ModelConfig(encoder="mobilenetv3_small_050")).out_channels  # a bare timm name


def _full_model_state(arch: str, **kwargs) -> dict[str, torch.Tensor]:
    """The state dict of a complete timm classifier (random weights), as a downloaded file holds it."""
    return {k: v.contiguous() for k, v in timm.create_model(arch, **kwargs).state_dict().items()}


def test_local_weights_of_a_full_timm_model_load(tmp_path):
    state = _full_model_state("mobilenetv2_050")
    path = tmp_path / "mobilenetv2_050.safetensors"
    save_file(state, str(path))
    model = PSPNet(3, encoder="mobilenetv2_x0.5", encoder_weights=str(path), **HEAD)
    torch.testing.assert_close(model.encoder.body.conv_stem.weight, state["conv_stem.weight"])
    torch.testing.assert_close(model.encoder.body.blocks[6][0].conv_pwl.weight, state["blocks.6.0.conv_pwl.weight"])
    report = load_encoder_weights(model.encoder, path)
    assert {"classifier.weight", "conv_head.weight", "bn2.weight"} <= set(report.unused)
    assert report.loaded == len(model.encoder.state_dict())


def test_swin_weights_load_across_timm_feature_names(tmp_path):
    """timm's feature wrapper names Swin's stages `layers_0`...; a full model's file says `layers.0`."""
    state = _full_model_state("swin_tiny_patch4_window7_224", **SWIN_TINY)
    path = tmp_path / "swin.pth"
    torch.save(state, path)
    encoder = build_encoder(
        ModelConfig(encoder="swin_tiny_patch4_window7_224", encoder_kwargs=SWIN_TINY, encoder_weights=str(path))
    )
    torch.testing.assert_close(
        encoder.body.layers_2.blocks[0].attn.qkv.weight, state["layers.2.blocks.0.attn.qkv.weight"]
    )


def test_three_channel_weights_are_adapted_to_one_channel(tmp_path):
    state = _full_model_state("resnet18")
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))
    encoder = build_encoder(ModelConfig(encoder="resnet18", in_channels=1, encoder_weights=str(path)))
    torch.testing.assert_close(encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))


def test_mismatched_weights_are_reported(tmp_path):
    wrong_model = tmp_path / "resnet18.safetensors"
    save_file(_full_model_state("resnet18"), str(wrong_model))
    with pytest.raises(CheckpointError, match=r"missing \(\d+\): body\.conv_stem\.weight, .*\(\d+ in all\)"):
        build_encoder(ModelConfig(encoder="mobilenetv2_x0.5", encoder_weights=str(wrong_model)))
    wrong_width = tmp_path / "mobilenetv2_100.safetensors"
    save_file(_full_model_state("mobilenetv2_100"), str(wrong_width))
    with pytest.raises(
        CheckpointError, match=r"wrong shape \(\d+\): conv_stem.weight \(file \(32, 3, 3, 3\), model \(16, 3, 3, 3\)\)"
    ):
        build_encoder(ModelConfig(encoder="mobilenetv2_x0.5", encoder_weights=str(wrong_width)))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        build_encoder(ModelConfig(encoder="resnet18", encoder_weights=str(tmp_path / "missing.pth")))


@pytest.fixture
def no_download(monkeypatch):
    """ImageNet weights are never in the cache and timm must not be asked to download them."""
    monkeypatch.setattr(weights, "_weights_cached", lambda cfg: False)

    def refuse(*args, **kwargs):
        raise AssertionError("timm.create_model(pretrained=True) must not run in tests")

    monkeypatch.setattr(weights.timm, "create_model", refuse)


def test_imagenet_weights_fail_fast_offline(monkeypatch, no_download):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        ConfigError, match=r"HF_HUB_OFFLINE is set.*model.encoder_weights: /path/to/resnet18.safetensors"
    ):
        build_encoder(ModelConfig(encoder="resnet18", encoder_weights="imagenet"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(
        ConfigError, match=r"127.0.0.1:9 cannot be reached.*st.save_file\(timm.create_model\('swin_tiny"
    ):
        build_encoder(ModelConfig(encoder="swin_tiny_patch4_window7_224", encoder_weights="imagenet"))
    assert time.monotonic() - start < weights.HUB_TIMEOUT_S + 2


def test_encoders_without_imagenet_weights_say_so(no_download):
    for name in ("resnet50_deepstem", "efficientnet_b7", "mobilenetv2_x0.75", "lite"):
        with pytest.raises(ConfigError, match=f"timm has no ImageNet weights for {name}; pass a local file"):
            build_encoder(ModelConfig(encoder=name, encoder_weights="imagenet"))


def test_models_command_lists_families_and_reports_size(capsys):
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for line in ("resnet101_deepstem", "efficientnet_b7", "mobilenetv2_x0.5", "lite "):
        assert line in listing
    assert any(row.startswith("swin_tiny_patch4_window7_224") and " 32 " in row for row in listing.splitlines())
    assert main(["models", "--info", "mobilenetv2_x0.25", "--size", "64", "96", "--set", "model.num_classes=5"]) == 0
    info = capsys.readouterr().out
    model = PSPNet(5, encoder="mobilenetv2_x0.25")
    assert f"parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M" in info
    assert "strides [2, 4, 8, 8, 8]; PPM at stride 8" in info and "input 64x96" in info
    flops = float(info.split("FLOPs: ")[1].split(" G")[0])
    assert 0 < flops < 5


def _bn(prefix: str, channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(channels, generator=generator),
        f"{prefix}.bias": torch.randn(channels, generator=generator),
        f"{prefix}.running_mean": torch.randn(channels, generator=generator),
        f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def _reference_resnet50(stem_names: list[str], width: int, planes=(8, 16, 32, 64)) -> dict[str, torch.Tensor]:
    """An ImageNet ResNet-50 state dict named as a reference implementation names it: `stem_names` are the
    three stem convs and their BNs in order (semseg: conv1 bn1 conv2 bn2 conv3 bn3; mmcv: stem.0 ... stem.7)."""
    generator = torch.Generator().manual_seed(0)
    conv = lambda out, inp, k: torch.randn(out, inp, k, k, generator=generator)  # noqa: E731
    c1, b1, c2, b2, c3, b3 = stem_names
    state = {
        f"{c1}.weight": conv(width, 3, 3),
        **_bn(b1, width, generator),
        f"{c2}.weight": conv(width, width, 3),
        **_bn(b2, width, generator),
        f"{c3}.weight": conv(2 * width, width, 3),
        **_bn(b3, 2 * width, generator),
    }
    inplanes = 2 * width
    for stage, (count, plane) in enumerate(zip((3, 4, 6, 3), planes), 1):
        for block in range(count):
            name = f"layer{stage}.{block}"
            state.update(
                {
                    f"{name}.conv1.weight": conv(plane, inplanes, 1),
                    **_bn(f"{name}.bn1", plane, generator),
                    f"{name}.conv2.weight": conv(plane, plane, 3),
                    **_bn(f"{name}.bn2", plane, generator),
                    f"{name}.conv3.weight": conv(4 * plane, plane, 1),
                    **_bn(f"{name}.bn3", 4 * plane, generator),
                }
            )
            if block == 0:
                state.update(
                    {
                        f"{name}.downsample.0.weight": conv(4 * plane, inplanes, 1),
                        **_bn(f"{name}.downsample.1", 4 * plane, generator),
                    }
                )
            inplanes = 4 * plane
    state.update({"fc.weight": torch.randn(1000, inplanes, generator=generator), "fc.bias": torch.zeros(1000)})
    return state


@pytest.mark.parametrize(
    "encoder,stem_names",
    [
        ("resnet50_deepstem", ["conv1", "bn1", "conv2", "bn2", "conv3", "bn3"]),  # semseg's initmodel/resnet50_v2.pth
        ("resnet50_v1c", ["stem.0", "stem.1", "stem.3", "stem.4", "stem.6", "stem.7"]),  # mmcv's resnet50_v1c
    ],
)
def test_reference_imagenet_resnets_load_into_their_encoder(tmp_path, encoder, stem_names):
    state = _reference_resnet50(stem_names, width=8)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save({"state_dict": state}, path)
    model = PSPNet(
        3,
        encoder=encoder,
        encoder_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8},
        encoder_weights=str(path),
        **HEAD,
    )
    stem, bn = model.encoder.conv1, model.encoder.bn1
    pairs = [
        (stem[0].weight, state[f"{stem_names[0]}.weight"]),
        (stem[1].running_mean, state[f"{stem_names[1]}.running_mean"]),
        (stem[3].weight, state[f"{stem_names[2]}.weight"]),
        (stem[4].bias, state[f"{stem_names[3]}.bias"]),
        (stem[6].weight, state[f"{stem_names[4]}.weight"]),
        (bn.running_var, state[f"{stem_names[5]}.running_var"]),
        (model.encoder.layer3[5].conv2.weight, state["layer3.5.conv2.weight"]),
        (model.encoder.layer4[0].downsample[1].weight, state["layer4.0.downsample.1.weight"]),
    ]
    for loaded, stored in pairs:
        torch.testing.assert_close(loaded, stored, rtol=0, atol=0)
    report = load_encoder_weights(model.encoder, path)
    assert report.unused == ["fc.bias", "fc.weight"] and report.loaded == len(model.encoder.state_dict())
    extra = tmp_path / "extra.pth"
    torch.save({**state, "layer5.0.conv1.weight": torch.zeros(1)}, extra)
    with pytest.raises(CheckpointError, match="tensors the encoder has no place for: layer5.0.conv1.weight"):
        load_encoder_weights(model.encoder, extra)
    missing = tmp_path / "missing.pth"
    torch.save({key: value for key, value in state.items() if key != f"{stem_names[4]}.weight"}, missing)
    with pytest.raises(CheckpointError, match=r"missing \(1\): conv1\.6\.weight"):
        load_encoder_weights(model.encoder, missing)
