"""Decoder options: progressive stages, learned upsampling, aux heads, class-presence loss, settings."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config_dict
from torch import nn

from pspnet import PSPNet, load_model
from pspnet.config import Config, load_config
from pspnet.errors import ConfigError
from pspnet.losses import PSPLoss, class_presence
from pspnet.models.heads import LearnedUpsample
from pspnet.training.trainer import Trainer

K = 5
STAGES = [12, 8, 6]
# the tiny ResNet of conftest: stage channels 8, 16, 32, 64 (PPM on 64, aux heads on 32), fusion 16, aux width 8


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_progressive_decoder_adds_upsampling_stages(tiny_model_options):
    psp = PSPNet(K, **tiny_model_options)
    progressive = PSPNet(K, **tiny_model_options, decoder="progressive", progressive_channels=STAGES)
    # each stage: 3x3 conv without bias, BatchNorm (2 per channel), PReLU (1); the 1x1 classifier now reads 6 channels, not 16
    widths = list(zip([16, *STAGES], STAGES))
    stage_params = sum(9 * cin * cout + 2 * cout + 1 for cin, cout in widths)
    assert count(progressive) - count(psp) == stage_params + (STAGES[-1] - 16) * K
    assert [type(stage.conv[2]) for stage in progressive.decode_head.stages] == [nn.PReLU] * 3

    x = torch.randn(2, 3, 17, 30)
    deepest = progressive.encoder(x)[-1]  # stride 8: 3 x 4
    assert progressive.eval().decode_head(deepest).shape == (2, K, 24, 32)  # three x2 stages
    assert progressive(x).shape == (2, K, 17, 30)  # then resized to the input


def test_transposed_upsampling_is_learned(tiny_model_options):
    psp = PSPNet(K, **tiny_model_options)
    learned = PSPNet(K, **tiny_model_options, upsample="transposed")
    assert count(learned) - count(psp) == K * 16 * 16  # depthwise 16x16 kernel (x8, no bias) per class
    upsampler = learned.decode_head.logits_upsample
    assert (upsampler.stride, upsampler.groups) == ((8, 8), K)

    options = {**tiny_model_options, "decoder": "progressive", "progressive_channels": STAGES}
    progressive = PSPNet(K, **options)
    progressive_learned = PSPNet(K, **options, upsample="transposed")
    # a depthwise 4x4 kernel per stage input
    assert count(progressive_learned) - count(progressive) == (16 + 12 + 8) * 4 * 4
    x = torch.randn(2, 3, 17, 30)
    for model in (learned, progressive_learned):
        outputs = model.train()(x)
        assert outputs["out"].shape == (2, K, 17, 30)
        outputs["out"].mean().backward()
        assert all(p.grad is not None for p in model.decode_head.parameters())


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_learned_upsampling_starts_as_bilinear(factor):
    x = torch.randn(1, 3, 6, 7)
    learned = LearnedUpsample(3, factor)(x)
    bilinear = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert learned.shape == bilinear.shape == (1, 3, 6 * factor, 7 * factor)
    inner = (..., slice(factor, -factor), slice(factor, -factor))  # borders differ: zero padding vs clamping
    torch.testing.assert_close(learned[inner], bilinear[inner])


@pytest.mark.parametrize(
    "aux,outputs",
    [("seg", {"out", "aux"}), ("cls", {"out", "cls"}), ("both", {"out", "aux", "cls"}), ("none", {"out"})],
)
def test_aux_options(tiny_model_options, aux, outputs):
    model = PSPNet(K, **{**tiny_model_options, "aux": aux})
    result = model.train()(torch.randn(2, 3, 17, 30))
    assert set(result) == outputs
    if "cls" in outputs:
        assert result["cls"].shape == (2, K)
    seg_head = 9 * 32 * 8 + 2 * 8 + 8 * K + K  # 3x3 conv, BN, 1x1 classifier with bias
    cls_head = 32 * 8 + 8 + 8 * K + K  # Linear(32, 8), Linear(8, K)
    expected = {"seg": seg_head, "cls": cls_head, "both": seg_head + cls_head, "none": 0}[aux]
    assert count(model) - count(model.encoder) - count(model.decode_head) == expected
    assert isinstance(model.eval()(torch.randn(2, 3, 17, 30)), torch.Tensor)


def test_class_presence_target_skips_ignored_pixels():
    masks = torch.tensor(
        [
            [[0, 0, 255], [2, 255, 255]],
            [[255, 255, 255], [3, 3, 255]],
            [[255, 255, 255], [255, 255, 255]],
            [[1, 1, 1], [1, 1, 1]],
        ],
        dtype=torch.uint8,
    )
    expected = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.float32)
    torch.testing.assert_close(class_presence(masks, 4), expected)


def test_loss_adds_weighted_class_presence_bce():
    torch.manual_seed(0)
    out, cls = torch.randn(2, 4, 3, 3), torch.randn(2, 4)
    target = torch.tensor([[[0, 1, 1], [255, 1, 0], [0, 0, 0]], [[3, 3, 255], [3, 3, 3], [255, 255, 255]]])
    present = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    p = cls.double().sigmoid()
    bce = -(present * p.log() + (1 - present) * (1 - p).log()).mean()
    ce = F.cross_entropy(out.double(), target, ignore_index=255)
    losses = PSPLoss(aux_weight=0.4, cls_weight=0.7)({"out": out, "cls": cls}, target)
    assert losses["cls"].item() == pytest.approx(bce.item(), rel=1e-5)
    assert losses["loss"].item() == pytest.approx((ce + 0.7 * bce).item(), rel=1e-5)
    assert "cls" not in PSPLoss(cls_weight=0)({"out": out, "cls": cls}, target)


def test_decoder_settings_shape_the_head(tiny_model_options):
    model = PSPNet(
        K,
        **{**tiny_model_options, "bins": [1, 2, 3, 4, 6, 8], "ppm_channels": 4, "decoder_channels": 24, "dropout": 0.7},
    )
    head = model.decode_head
    assert [branch[0].output_size for branch in head.ppm.branches] == [1, 2, 3, 4, 6, 8]
    assert head.ppm.out_channels == 64 + 6 * 4 and head.fusion[0].in_channels == 88
    assert head.fusion[0].out_channels == head.classifier.in_channels == 24
    assert head.dropout.p == 0.7
    assert PSPNet(K, **{**tiny_model_options, "dropout": 0.0}).decode_head.dropout.p == 0.0


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.dropout=1.5", r"model.dropout: expected a probability in \[0, 1\], got 1.5"),
        ("model.decoder=unet", r"model.decoder: expected one of 'psp', 'progressive'"),
        ("model.upsample=nearest", r"model.upsample: expected one of 'bilinear', 'transposed'"),
        ("model.aux=fcn", r"model.aux: expected one of 'seg', 'none', 'cls', 'both'"),
        ("model.progressive_channels=[]", r"model.progressive_channels: expected a non-empty list"),
        ("train.cls_weight=-1", r"train.cls_weight: expected a non-negative float"),
    ],
)
def test_invalid_decoder_values_are_specific(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_training_with_progressive_decoder_and_both_aux_heads(tmp_path):
    data = tiny_config_dict(max_iters=2, eval_interval=2, checkpoint_interval=2)
    data["model"].update(decoder="progressive", progressive_channels=[8, 8, 8], upsample="transposed", aux="both")
    data["train"]["cls_weight"] = 0.5
    trainer = Trainer(Config.from_dict(data), tmp_path / "run", progress=False)
    assert trainer.criterion.cls_weight == 0.5
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert result.iteration == 2 and result.last_checkpoint.is_file()
    # every part of the decoder and both auxiliary heads were trained
    for part in ("decode_head.stages", "decode_head.classifier", "aux_head", "cls_head"):
        changed = [
            name
            for name, p in trainer.model.named_parameters()
            if name.startswith(part) and not torch.equal(p, before[name])
        ]
        assert changed, f"no parameter of {part} changed"
    rows = list(csv.DictReader(open(tmp_path / "run" / "train_log.csv")))
    assert len(rows) == 2 and all(float(row["cls"]) > 0 and float(row["aux"]) > 0 for row in rows)
    # the checkpoint holds the trained progressive model: same logits after reloading
    loaded = load_model(result.last_checkpoint)
    x = torch.randn(1, 3, 40, 44)
    torch.testing.assert_close(loaded(x), trainer.model.eval()(x))
