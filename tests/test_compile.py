"""Compiled backends (`torch-compile`, `torch-compile-bf16`) and `train.compile`: agreement with eager, one
compilation across input sizes, the fallback without a C++ compiler, training and resuming compiled."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from conftest import tiny_config_dict

from pspnet import load_model
from pspnet.checkpoint import open_model, save_checkpoint
from pspnet.config import Config
from pspnet.data.synthetic import ContextScenes
from pspnet.models import create_model
from pspnet.runtime.compiled import CompiledModel, CompileError, fold_batchnorm
from pspnet.training.trainer import Trainer

# large enough that every convolution takes oneDNN's path: below about 20k input elements PyTorch picks another
# convolution kernel, and the compiled graph guards on that choice
SIZES = [(151, 157), (163, 149), (145, 171)]


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def tiny_checkpoint(root, channels: int):
    data = tiny_config_dict()
    data["model"]["in_channels"] = channels
    data["data"]["mean"], data["data"]["std"] = [0.5] * channels, [0.25] * channels
    config = Config.from_dict(data)
    torch.manual_seed(channels)
    model = create_model(config, ContextScenes.classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return save_checkpoint(root / f"tiny{channels}.safetensors", model.eval(), config)


@pytest.fixture(scope="module", params=[1, 4], ids=["1ch", "4ch"])
def checkpoint(request, tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("compile"), request.param)


@pytest.fixture(scope="module")
def compiled(checkpoint):
    """Eager fp32, torch-bf16 and both compiled backends of one checkpoint, each compiled once for the module."""
    return {
        backend: load_model(checkpoint, backend)
        for backend in ("torch", "torch-bf16", "torch-compile", "torch-compile-bf16")
    }


def test_folding_batchnorm_keeps_the_output(checkpoint):
    model = load_model(checkpoint)
    x = torch.randn(2, model.card.in_channels, 37, 41)
    folded = fold_batchnorm(model, x)
    left = [name for name, m in folded.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert left == ["aux_head.conv.1"]  # the auxiliary head does not run in eval mode
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is left as it was
    with torch.no_grad():
        assert relative_l2(folded(x), model(x)) < 1e-5


def test_compiled_backends_agree_with_eager_at_odd_sizes_without_recompiling(compiled):
    eager, bf16 = compiled["torch"], compiled["torch-bf16"]
    fp32, compiled_bf16 = compiled["torch-compile"], compiled["torch-compile-bf16"]
    assert isinstance(fp32, CompiledModel) and fp32.card == eager.card
    generator = torch.Generator().manual_seed(5)
    for size in SIZES:
        x = torch.randn(1, eager.card.in_channels, *size, generator=generator)
        with torch.inference_mode():
            expected, reference_bf16 = eager(x), bf16(x)
            actual, actual_bf16 = fp32(x), compiled_bf16(x)
        assert actual.dtype == actual_bf16.dtype == torch.float32 and actual.shape == expected.shape
        assert relative_l2(actual, expected) < 1e-4
        # as torch-bf16 is checked (tests/test_deploy.py), and no further from eager than torch-bf16 is
        assert relative_l2(actual_bf16, expected) < 0.03
        assert relative_l2(actual_bf16, expected) < 2 * relative_l2(reference_bf16, expected) + 1e-3
        assert (actual_bf16.argmax(1) == expected.argmax(1)).double().mean() > 0.97
    assert fp32.compiled_ok and compiled_bf16.compiled_ok
    assert fp32.compilations == 1 and compiled_bf16.compilations == 1, "a new input size recompiled"


def test_predict_runs_compiled(compiled, checkpoint):
    model = compiled["torch-compile"]
    image = (torch.rand(model.card.in_channels, 150, 160) * 255).byte().permute(1, 2, 0).numpy()
    if image.shape[2] == 1:
        image = image[..., 0]
    assert (model.predict(image) == compiled["torch"].predict(image)).mean() > 0.999


def test_without_a_compiler_it_falls_back_to_eager(checkpoint, monkeypatch, caplog):
    import torch._inductor.config

    eager = load_model(checkpoint)
    x = torch.randn(1, eager.card.in_channels, 150, 150)
    no_compiler = torch._inductor.config.patch({"cpp.cxx": (None, "/nonexistent/g++")})
    with no_compiler, caplog.at_level(logging.WARNING, "pspnet.runtime.compiled"), torch.inference_mode():
        model, model_bf16 = load_model(checkpoint, "torch-compile"), load_model(checkpoint, "torch-compile-bf16")
        assert torch.equal(model(x), eager(x))
        assert torch.equal(model_bf16(x), load_model(checkpoint, "torch-bf16")(x))
    assert model.compilations == 0 and not model.compiled_ok
    assert [r.message for r in caplog.records] == [
        "torch-compile: no C++ compiler found ('/nonexistent/g++'; set CXX to one); running on torch (eager) instead",
        "torch-compile-bf16: no C++ compiler found ('/nonexistent/g++'; set CXX to one); running on torch-bf16 "
        "(eager) instead",
    ]
    monkeypatch.setenv("PSPNET_COMPILE_STRICT", "1")
    with no_compiler, pytest.raises(CompileError, match=r"torch-compile: no C\+\+ compiler found .*strict mode"):
        load_model(checkpoint, "torch-compile")(x)


def test_a_failing_compilation_falls_back_unless_strict(checkpoint, monkeypatch, caplog):
    from torch._dynamo.exc import TorchRuntimeError

    def failing(x):
        raise TorchRuntimeError("simulated: the C++ build failed")

    eager = load_model(checkpoint)
    x = torch.randn(1, eager.card.in_channels, 150, 150)
    model = load_model(checkpoint, "torch-compile")
    monkeypatch.setattr(model, "compiled", failing)
    with caplog.at_level(logging.WARNING, "pspnet.runtime.compiled"), torch.inference_mode():
        assert torch.equal(model(x), eager(x))
    assert "compilation failed: TorchRuntimeError: simulated: the C++ build failed" in caplog.text
    strict = CompiledModel(load_model(checkpoint), strict=True)
    monkeypatch.setattr(strict, "compiled", failing)
    with pytest.raises(CompileError, match="strict mode"), torch.inference_mode():
        strict(x)


def test_the_models_own_errors_are_not_taken_for_compile_failures(compiled):
    model = compiled["torch-compile"]
    with pytest.raises(RuntimeError):
        model(torch.randn(1, model.card.in_channels + 1, 150, 150))
    assert model.compiled_ok


# --- train.compile ----------------------------------------------------------------------------------

TRAIN = dict(max_iters=5, eval_interval=100, checkpoint_interval=2, log_interval=1)
LITE = {"encoder": "lite", "bins": [1, 2], "ppm_channels": 8, "decoder_channels": 0, "aux": "none"}
"""The training tests' model: the lite encoder compiles in half the time of the tiny ResNet (fewer kernels)."""


def train_config(**train) -> Config:
    data = tiny_config_dict(**TRAIN, **train)
    data["model"] = dict(LITE)
    return Config.from_dict(data)


def losses(run_dir) -> list[float]:
    with open(run_dir / "train_log.csv") as file:
        return [float(row["loss"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def compiled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-compile")
    trainer = Trainer(train_config(compile=True), root / "compiled", progress=False)
    trainer.train()
    return root, trainer


def test_compiled_training_follows_the_eager_loss_curve(compiled_run):
    root, compiled_trainer = compiled_run
    assert compiled_trainer.network is not compiled_trainer.model  # the step ran compiled
    eager = Trainer(train_config(), root / "eager", progress=False)
    eager.train()
    expected, actual = losses(root / "eager"), losses(root / "compiled")
    assert len(expected) == len(actual) == 5
    assert actual == pytest.approx(expected, rel=1e-3)


def test_compiled_training_resumes(compiled_run):
    root, straight = compiled_run
    config = train_config(compile=True)
    crashing = Trainer(config, root / "crashed", progress=False)

    def crash(trainer, iteration):
        if iteration == 3:
            raise RuntimeError("simulated crash")

    crashing.callbacks.append(crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.train()
    resumed = Trainer(config, root / "crashed", resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.train()
    assert open_model(root / "crashed" / "checkpoints" / "last.safetensors").iteration == 5
    assert losses(root / "crashed")[-3:] == pytest.approx(losses(root / "compiled")[-3:], rel=1e-3)
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[key], value, rtol=1e-3, atol=1e-5), key
