"""Deployment: `pspnet export` (ONNX fp32 and int8, torch.export), the onnxruntime and bf16 backends.

The exported files are checked here independently of the exporter's own verification: onnxruntime's
logits against the PyTorch model's at sizes the export never saw, the metadata against the model
card, the int8 graph's structure, and every error path (exit 2, no file left behind).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config_dict
from PIL import Image

from pspnet import load_model
from pspnet.checkpoint import open_model, save_checkpoint
from pspnet.cli import main
from pspnet.config import Config, EvalConfig
from pspnet.data.synthetic import ContextScenes
from pspnet.deploy import export as export_module
from pspnet.deploy.verify import VERIFY_SIZES, random_batches, relative_l2, verify_fp32
from pspnet.errors import CheckpointError, ConfigError, DataError, ExportError
from pspnet.inference.protocol import Inferencer
from pspnet.models import create_model
from pspnet.runtime.bf16 import BFloat16Model
from pspnet.runtime.onnx_model import OnnxModel

if os.environ.get("CI") != "true":  # CI installs every extra: there a missing onnxruntime is a failure
    pytest.importorskip("onnxruntime", reason="needs the deploy extra: pip install 'pspnet[deploy]'")
    pytest.importorskip("onnxscript", reason="needs the deploy extra: pip install 'pspnet[deploy]'")
import onnx

EXPORT_SIZE = (40, 40)  # the tiny config's training crop, the default export size


@pytest.fixture(autouse=True)
def keep_thread_count():
    """`--threads` and `threads=` set torch's process-wide count: restore it for the other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint with non-trivial BatchNorm statistics, for the 11 synthetic classes (48x48 images)."""
    root = tmp_path_factory.mktemp("deploy")
    config = Config.from_dict(tiny_config_dict())
    torch.manual_seed(0)
    model = create_model(config, ContextScenes("val", 1).classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
    config_path = root / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config_dict()))
    return save_checkpoint(root / "tiny.safetensors", model.eval(), config), config_path


@pytest.fixture(scope="module")
def exported(tiny):
    """The tiny checkpoint exported to fp32 ONNX through the command line."""
    checkpoint, _ = tiny
    out = checkpoint.with_name("tiny.onnx")
    assert main(["export", str(checkpoint), str(out)]) == 0
    return checkpoint, out


# --- onnx fp32: numbers, metadata, dynamic axes -----------------------------------------------------


def test_onnx_logits_equal_pytorch_at_sizes_the_export_never_saw(exported):
    checkpoint, onnx_path = exported
    reference, runtime = load_model(checkpoint), load_model(onnx_path)
    assert isinstance(runtime, OnnxModel)
    generator = torch.Generator().manual_seed(1)
    for shape in [(1, 3, 41, 59), (3, 3, 33, 17), (1, 3, 64, 112), (2, 3, 9, 9)]:
        x = torch.randn(*shape, generator=generator)
        with torch.inference_mode():
            expected, actual = reference(x), runtime(x)
        assert actual.shape == (shape[0], 11, *shape[2:])
        assert relative_l2(actual, expected) < 1e-5, shape


def test_onnx_file_describes_itself(exported):
    checkpoint, onnx_path = exported
    card = load_model(checkpoint).card
    proto = onnx.load(str(onnx_path))
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(card.classes.names)
    assert json.loads(meta["palette"]) == [list(color) for color in card.classes.palette]
    assert json.loads(meta["mean"]) == list(card.mean) and json.loads(meta["std"]) == list(card.std)
    assert json.loads(meta["in_channels"]) == 3 and json.loads(meta["align_corners"]) is False
    assert meta["precision"] == "fp32" and meta["source"] == "tiny.safetensors"
    (image,) = proto.graph.input
    assert [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert not [t.name for t in proto.graph.initializer if "aux" in t.name]  # training-only head dropped
    # the loaded model has the card, and the stored config
    loaded = open_model(onnx_path)
    assert loaded.card == card and loaded.config.model.encoder == "resnet18_deepstem"
    assert (loaded.format, loaded.backend) == ("onnx", "onnxruntime")


def test_every_protocol_runs_on_onnx_unchanged(exported):
    """slide + flip + multi-scale through the same Inferencer: the probabilities match PyTorch's."""
    checkpoint, onnx_path = exported
    settings = EvalConfig(
        mode="slide", crop_size=[32, 40], stride=[21, 27], scales=[0.75, 1.25], flip=True, window_batch=3
    )
    x = torch.randn(1, 3, 53, 71, generator=torch.Generator().manual_seed(2))
    expected = Inferencer(load_model(checkpoint), settings).probabilities(x)
    actual = Inferencer(load_model(onnx_path), settings).probabilities(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_onnx_predict_and_cli_match_pytorch(exported, tmp_path):
    checkpoint, onnx_path = exported
    image = np.random.default_rng(0).integers(0, 255, (37, 45, 3), dtype=np.uint8)
    expected = load_model(checkpoint).predict(image)
    np.testing.assert_array_equal(load_model(onnx_path).predict(image), expected)
    Image.fromarray(image).save(tmp_path / "photo.png")
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(onnx_path),
                str(tmp_path / "photo.png"),
                "--out",
                str(tmp_path / "out"),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert torch.get_num_threads() == 1
    np.testing.assert_array_equal(np.array(Image.open(tmp_path / "out/labels/photo.png")), expected)
    # evaluate reads the dataset from the config stored in the ONNX file, and agrees with PyTorch
    for model_file, name in [(checkpoint, "torch"), (onnx_path, "onnx")]:
        assert main(["--quiet", "evaluate", str(model_file), "--out", str(tmp_path / f"{name}.json")]) == 0
    torch_result, onnx_result = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("torch", "onnx"))
    for key in ("miou", "macc", "aacc"):
        assert onnx_result[key] == pytest.approx(torch_result[key], abs=1e-6)


def test_onnx_wrong_inputs_are_clear_errors(exported, capsys):
    _, onnx_path = exported
    model = load_model(onnx_path)
    with pytest.raises(DataError, match=r"takes a float batch \(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(DataError, match=r"got \(3, 32, 32\)"):
        model(torch.zeros(3, 32, 32))
    with pytest.raises(ConfigError, match="ONNX file: it runs on onnxruntime, --backend torch-bf16"):
        load_model(onnx_path, backend="torch-bf16")
    assert main(["evaluate", str(onnx_path), "--device", "cuda"]) == 2  # onnxruntime runs on the CPU
    err = capsys.readouterr().err
    assert err.startswith("error: ") and ("runs on the CPU" in err or "CUDA is not available" in err)


def test_threads_reach_onnxruntime_and_default_to_torch(exported):
    _, onnx_path = exported
    assert OnnxModel(onnx_path, threads=1).session.get_session_options().intra_op_num_threads == 1
    assert OnnxModel(onnx_path).session.get_session_options().intra_op_num_threads == torch.get_num_threads()


def test_onnx_without_pspnet_metadata_is_refused(exported, tmp_path):
    _, onnx_path = exported
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(CheckpointError, match="no pspnet metadata"):
        load_model(tmp_path / "bare.onnx")


# --- int8 and pt2 ---------------------------------------------------------------------------------


def test_int8_export_is_quantized_per_channel_and_agrees(tiny, exported, capsys):
    checkpoint, config_path = tiny
    out = checkpoint.with_name("tiny-int8.onnx")
    assert (
        main(
            [
                "export",
                str(checkpoint),
                str(out),
                "--format",
                "onnx-int8",
                "--calibration",
                str(config_path),
                "--calibration-images",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "calibration: 8 train images" in printed and "argmax agreement" in printed
    proto = onnx.load(str(out))
    nodes = proto.graph.node
    convs = [node for node in nodes if node.op_type == "Conv"]
    weights = {init.name: init for init in proto.graph.initializer}
    dequantized = {node.output[0]: node for node in nodes if node.op_type == "DequantizeLinear"}
    for conv in convs:  # every conv reads int8 weights through a per-output-channel DequantizeLinear
        weight = dequantized[conv.input[1]]
        assert weights[weight.input[0]].data_type == onnx.TensorProto.INT8
        scale = onnx.numpy_helper.to_array(weights[weight.input[1]])
        assert scale.shape == (onnx.numpy_helper.to_array(weights[weight.input[0]]).shape[0],)
    assert not [node for node in nodes if node.op_type == "BatchNormalization"]  # folded before quantization
    assert out.stat().st_size < 0.6 * exported[1].stat().st_size
    meta = {entry.key: entry.value for entry in proto.metadata_props}
    assert meta["precision"] == "int8" and json.loads(meta["classes"])[0] == "sky"
    reference, quantized = load_model(checkpoint), load_model(out)
    images = (
        torch.stack(
            [
                torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)
                for s in (ContextScenes("val", 4, (48, 48), seed=5).load(i) for i in range(4))
            ]
        )
        .float()
        .div(255)
    )
    mean, std = torch.tensor(reference.card.mean)[:, None, None], torch.tensor(reference.card.std)[:, None, None]
    batch = (images - mean) / std
    with torch.inference_mode():
        agreement = (reference(batch).argmax(1) == quantized(batch).argmax(1)).double().mean()
    assert agreement > 0.95


def test_pt2_export_is_dynamic_and_carries_the_metadata(tmp_path):
    """A model whose logits come out at the input size when it is a multiple of 8 (learned x2 upsampling
    stages): the final resize must stay in the graph for the other sizes."""
    data = tiny_config_dict()
    data["model"].update(decoder="progressive", upsample="transposed", progressive_channels=[8, 8, 8])
    config = Config.from_dict(data)
    torch.manual_seed(0)
    checkpoint = save_checkpoint(
        tmp_path / "progressive.safetensors", create_model(config, ContextScenes("val", 1).classes).eval(), config
    )
    out = tmp_path / "tiny.pt2"
    report = export_module.export_model(checkpoint, out, "pt2")
    assert [check.shape[2:] for check in report.checks] == [EXPORT_SIZE, *VERIFY_SIZES]
    extra = {"pspnet.json": ""}
    with open(out, "rb") as handle:
        program = torch.export.load(handle, extra_files=extra).module()
    assert json.loads(json.loads(extra["pspnet.json"])["classes"])[1] == "water"
    x = torch.randn(2, 3, 45, 29)
    with torch.inference_mode():
        expected = load_model(checkpoint)(x)
        torch.testing.assert_close(program(x), expected, rtol=1e-5, atol=1e-5)
    assert expected.shape == (2, 11, 45, 29)


# --- verification and bad input: exit 2, nothing written ----------------------------------------------


def test_verification_catches_a_model_that_disagrees(tiny):
    reference = load_model(tiny[0])
    slightly_off = lambda x: reference(x) * (1 + 1e-3)  # noqa: E731
    with pytest.raises(ExportError, match=r"relative L2 > 0.0001.*at 1x3x40x40: relative L2 1.00e-03"):
        verify_fp32(reference, slightly_off, EXPORT_SIZE, 3, "ONNX")
    shapes = [tuple(batch.shape) for batch in random_batches(EXPORT_SIZE, 3)]
    assert shapes[1:] == [(2, 3, 97, 131), (1, 3, 131, 67), (1, 3, 203, 157)]
    assert all(h % 2 and w % 2 and h != w for _, _, h, w in shapes[1:])  # odd (so not multiples of 6 or 8), non-square


def test_a_refused_export_leaves_no_file(tiny, tmp_path, monkeypatch, capsys):
    """The file is written under a temporary name and only renamed once verified."""

    def write_then_fail(model, size, opset, metadata, path):
        path.write_bytes(b"half an export")
        raise ExportError("the ONNX export does not reproduce the model")

    monkeypatch.setattr(export_module, "_write_onnx", write_then_fail)
    assert main(["export", str(tiny[0]), str(tmp_path / "m.onnx")]) == 2
    assert "does not reproduce" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "case,message",
    [
        ("not_a_checkpoint", "cannot be read as a checkpoint"),
        ("onnx_input", "is an ONNX file; this needs a PyTorch checkpoint"),
        ("out_under_a_file", "is not a writable directory"),
        ("unknown_format", "unknown export format 'tflite'; choose one of onnx, onnx-int8, pt2"),
        ("old_opset", "--opset: ONNX formats only, 18 or newer"),
        ("calibration_data_missing", "dataset root not found"),
    ],
)
def test_export_bad_input_is_one_line_and_writes_nothing(tiny, exported, tmp_path, case, message, capsys):
    checkpoint, _ = tiny
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    config = tiny_config_dict()
    config["data"] = {"format": "folders", "root": str(tmp_path / "missing")}
    (tmp_path / "folders.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out" / "m.onnx"
    argv = {
        "not_a_checkpoint": [str(tmp_path / "notes.txt"), str(out)],
        "onnx_input": [str(exported[1]), str(out)],
        "out_under_a_file": [str(checkpoint), str(tmp_path / "notes.txt" / "m.onnx")],
        "unknown_format": [str(checkpoint), str(out), "--format", "tflite"],
        "old_opset": [str(checkpoint), str(out), "--opset", "13"],
        "calibration_data_missing": [
            str(checkpoint),
            str(out),
            "--format",
            "onnx-int8",
            "--calibration",
            str(tmp_path / "folders.yaml"),
        ],
    }[case]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


# --- bf16 -------------------------------------------------------------------------------------------


def test_bf16_backend_keeps_batchnorm_in_float32_and_agrees(tiny, tmp_path):
    checkpoint, _ = tiny
    reference = load_model(checkpoint)
    model = load_model(checkpoint, backend="torch-bf16", threads=2)
    assert isinstance(model, BFloat16Model) and model.card == reference.card
    dtypes = {name: p.dtype for name, p in model.model.named_parameters()}
    assert dtypes["decode_head.classifier.weight"] == torch.bfloat16
    assert dtypes["decode_head.ppm.branches.0.2.weight"] == torch.float32
    assert model.model.decode_head.ppm.branches[0][2].running_var.dtype == torch.float32
    x = torch.randn(2, 3, 45, 61, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected, actual = reference(x), model(x)
    assert actual.dtype == torch.float32 and actual.shape == expected.shape
    assert relative_l2(actual, expected) < 0.03
    assert (actual.argmax(1) == expected.argmax(1)).double().mean() > 0.97
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        load_model(checkpoint, backend="tensorrt")
    assert (
        main(["--quiet", "evaluate", str(checkpoint), "--backend", "torch-bf16", "--out", str(tmp_path / "r.json")])
        == 0
    )
