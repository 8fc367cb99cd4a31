"""The paper's architecture: shapes, PPM numerics, dilation, heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pspnet import PSPNet
from pspnet.errors import ConfigError
from pspnet.losses import PSPLoss
from pspnet.models import PyramidPoolingModule
from pspnet.models.ppm import AdaptiveAvgPool

SIZES = [(32, 32), (33, 47), (17, 95), (64, 40), (31, 31), (50, 61)]


@pytest.mark.parametrize("size", SIZES)
def test_logits_have_the_input_size(tiny_model_options, size):
    model = PSPNet(5, **tiny_model_options).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, *size))
    assert logits.shape == (2, 5, *size)


@pytest.mark.parametrize("size", [(33, 47), (40, 40)])
def test_lite_model_any_size(size):
    model = PSPNet(
        4,
        encoder="lite",
        bins=[1, 2, 4, 8],
        ppm_channels=64,
        decoder_channels=0,
        classifier_kernel=3,
        aux="none",
        output_stride=4,
    ).eval()
    assert model.decode_head.ppm.out_channels == 256 + 4 * 64  # the seed's 512 concatenated maps
    assert model.decode_head.fusion is None and model.decode_head.classifier.kernel_size == (3, 3)
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 4, *size)


def test_training_returns_main_and_aux_inference_only_main(tiny_model_options):
    model = PSPNet(3, **tiny_model_options)
    x = torch.randn(2, 3, 40, 44)
    outputs = model.train()(x)
    assert set(outputs) == {"out", "aux"} and outputs["aux"].shape == (2, 3, 40, 44)
    assert isinstance(model.eval()(x), torch.Tensor)
    no_aux = PSPNet(3, **{**tiny_model_options, "aux": "none"})
    assert set(no_aux.train()(x)) == {"out"}
    assert no_aux.aux_head is None


def test_aux_loss_weight_is_applied_in_training():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    target = torch.randint(0, 4, (2, 6, 6))
    target[0, 0, :3] = 255

    def reference_ce(logits):  # mean negative log-likelihood over non-ignored pixels, in float64
        logp = logits.double().log_softmax(1).permute(0, 2, 3, 1).reshape(-1, 4)
        flat = target.reshape(-1)
        keep = flat != 255
        return -logp[keep, flat[keep]].mean()

    losses = PSPLoss(aux_weight=0.4)({"out": out, "aux": aux}, target)
    assert losses["loss"].item() == pytest.approx((reference_ce(out) + 0.4 * reference_ce(aux)).item(), rel=1e-5)
    # at inference there is no aux output, so the loss is the main term only
    assert PSPLoss(0.4)({"out": out}, target)["loss"].item() == pytest.approx(reference_ce(out).item(), rel=1e-5)


def _adaptive_pool(x: np.ndarray, bins: int) -> np.ndarray:
    """Adaptive average pooling by definition: cell i spans [floor(i*H/b), ceil((i+1)*H/b))."""
    channels, height, width = x.shape
    out = np.zeros((channels, bins, bins))
    for i in range(bins):
        h0, h1 = (i * height) // bins, -((-(i + 1) * height) // bins)
        for j in range(bins):
            w0, w1 = (j * width) // bins, -((-(j + 1) * width) // bins)
            out[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    return out


def _bilinear(x: np.ndarray, height: int, width: int, align_corners: bool) -> np.ndarray:
    """Bilinear resize written out: source coordinate per output pixel, then the 4-neighbour blend."""
    _, in_h, in_w = x.shape

    def coords(out_size, in_size):
        index = np.arange(out_size, dtype=np.float64)
        if align_corners:
            src = index * (in_size - 1) / (out_size - 1) if out_size > 1 else np.zeros(out_size)
        else:
            src = np.clip((index + 0.5) * in_size / out_size - 0.5, 0, None)
        low = np.minimum(np.floor(src).astype(int), in_size - 1)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, src - low

    y0, y1, fy = coords(height, in_h)
    x0, x1, fx = coords(width, in_w)
    top = x[:, y0][:, :, x0] * (1 - fx) + x[:, y0][:, :, x1] * fx
    bottom = x[:, y1][:, :, x0] * (1 - fx) + x[:, y1][:, :, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.mark.parametrize("align_corners", [False, True])
def test_ppm_matches_float64_reference(align_corners):
    torch.manual_seed(0)
    bins, channels, branch = (1, 2, 3, 6), 8, 3
    ppm = PyramidPoolingModule(channels, bins, branch, align_corners=align_corners).double().eval()
    for module in ppm.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(1, channels, 13, 17, dtype=torch.float64)
    with torch.no_grad():
        actual = ppm(x)[0].numpy()

    feature = x[0].numpy()
    expected = [feature]
    for bins_n, branch_module in zip(bins, ppm.branches):
        conv, bn = branch_module[1], branch_module[2]
        pooled = _adaptive_pool(feature, bins_n)
        reduced = np.einsum("oc,chw->ohw", conv.weight.detach().numpy()[:, :, 0, 0], pooled)
        scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
        activated = np.maximum(reduced * scale[:, None, None] + shift[:, None, None], 0)
        expected.append(_bilinear(activated, 13, 17, align_corners))
    expected = np.concatenate(expected, axis=0)
    assert actual.shape == (channels + len(bins) * branch, 13, 17)
    np.testing.assert_allclose(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bins", [1, 2, 3, 6, 8])
def test_matrix_pooling_equals_adaptive_average_pooling_at_any_size(bins):
    """The PPM's exportable pooling against torch's and the by-definition reference, float64, H and W
    below, at, and above the bin count, odd and even, multiples of the bins or not."""
    pool = AdaptiveAvgPool(bins)
    assert list(pool.parameters()) == [] and list(pool.buffers()) == []
    for height, width in [(1, 1), (1, 5), (2, 7), (5, 3), (6, 6), (7, 13), (13, 17), (64, 64), (65, 88), (97, 31)]:
        x = torch.randn(2, 3, height, width, dtype=torch.float64)
        actual = pool(x)
        torch.testing.assert_close(actual, F.adaptive_avg_pool2d(x, bins), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(actual[1].numpy(), _adaptive_pool(x[1].numpy(), bins), rtol=1e-12, atol=1e-12)


def test_ppm_state_dict_keys_are_the_checkpoint_layout():
    """Pooling has no tensors, so branch i keeps its conv at `.1` and its BatchNorm at `.2` (published checkpoints)."""
    keys = {key.split(".", 2)[2] for key in PyramidPoolingModule(8, (1, 2), 4).state_dict()}
    assert keys == {"1.weight", "2.weight", "2.bias", "2.running_mean", "2.running_var", "2.num_batches_tracked"}


def test_default_branch_width_is_c_over_bins():
    ppm = PyramidPoolingModule(2048, (1, 2, 3, 6))
    assert [b[1].out_channels for b in ppm.branches] == [512] * 4 and ppm.out_channels == 4096


@pytest.mark.parametrize("output_stride,expected", [(8, [4, 8, 8, 8]), (16, [4, 8, 16, 16]), (32, [4, 8, 16, 32])])
def test_output_stride(tiny_model_options, output_stride, expected):
    model = PSPNet(3, **tiny_model_options, output_stride=output_stride)
    assert model.encoder.reductions == expected
    features = model.encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in features] == [64 // r for r in expected]


def test_paper_resnet50_dilation_pattern():
    model = PSPNet(19)  # the paper's default: ResNet-50, deep stem 64-64-128, output stride 8
    enc = model.encoder
    assert [enc.conv1[i].out_channels for i in (0, 3, 6)] == [64, 64, 128]
    assert model.output_stride == 8
    # contracted (timm/mmseg): first block of layer3 keeps dilation 1, the rest use 2; layer4: 2 then 4
    assert [b.conv2.dilation[0] for b in enc.layer3] == [1] + [2] * 5
    assert [b.conv2.dilation[0] for b in enc.layer4] == [2, 4, 4]
    assert all(b.conv2.stride == (1, 1) for b in [*enc.layer3, *enc.layer4])
    assert enc.layer3[0].downsample[0].stride == (1, 1)
    uniform = PSPNet(19, dilation_style="uniform").encoder  # semseg: every block fully dilated
    assert [b.conv2.dilation[0] for b in uniform.layer3] == [2] * 6
    assert [b.conv2.padding[0] for b in uniform.layer4] == [4] * 3


def test_fcn_baseline_drops_only_the_ppm(tiny_model_options):
    with_ppm = PSPNet(3, **tiny_model_options)
    baseline = PSPNet(3, **tiny_model_options, use_ppm=False)
    assert baseline.decode_head.ppm is None
    channels, branch = 64, 64 // 4
    # PPM: 4 branches of 1x1 conv (no bias) + BN (2 params each); fusion conv input grows by 4*branch
    ppm_params = 4 * (channels * branch + 2 * branch)
    fusion_extra = 4 * branch * 16 * 9
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(with_ppm) - count(baseline) == ppm_params + fusion_extra


def test_head_parameters_are_everything_but_the_encoder(tiny_model_options):
    model = PSPNet(3, **tiny_model_options)
    head = {id(p) for p in model.head_parameters()}
    encoder = {id(p) for p in model.encoder.parameters()}
    assert head.isdisjoint(encoder) and head | encoder == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.decode_head.parameters()} <= head


def test_invalid_options_are_specific():
    with pytest.raises(ConfigError, match="model.dropout"):
        PSPNet(3, dropout=1.5)
    with pytest.raises(ConfigError, match="did you mean resnet50_deepstem"):
        PSPNet(3, encoder="resnet50_deepstm")
    with pytest.raises(ConfigError, match="num_classes"):
        PSPNet()


def test_predict_returns_label_map(tiny_model_options):
    model = PSPNet(4, **tiny_model_options)
    image = np.random.default_rng(0).integers(0, 255, (37, 45, 3), dtype=np.uint8)
    label = model.predict(image)
    assert label.shape == (37, 45) and label.dtype == np.uint8 and label.max() < 4
    assert model.training  # predict restores the mode
    with torch.no_grad():
        from pspnet.inference.predict import image_to_tensor as normalize_image

        expected = model.eval()(normalize_image(image, model.mean, model.std)[None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(label, expected)
