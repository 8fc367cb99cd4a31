"""Shared fixtures: tiny models and configs that train in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

from pspnet.checkpoint import save_checkpoint
from pspnet.config import Config
from pspnet.data.synthetic import ContextScenes
from pspnet.models import create_model

# tiny models: one thread is as fast, and immune to oversubscription when loader workers or other jobs share the cores
torch.set_num_threads(1)

TINY_RESNET = {
    "encoder": "resnet18_deepstem",
    "encoder_kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8},
    "decoder_channels": 16,
    "aux_channels": 8,
}


@pytest.fixture
def tiny_model_options() -> dict:
    """PSPNet keyword options for a ResNet-18-shaped model with 8-64 channels."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in TINY_RESNET.items()}


def unavailable(reason: str) -> NoReturn:
    """Skip a test whose tool (a browser, PyAV) is missing on this machine; on CI (`CI=true`), where every
    tool is installed, fail it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; on CI (CI=true) it must be installed")
    pytest.skip(reason)


def _missing_module(report: pytest.TestReport | pytest.CollectReport) -> bool:
    """Whether `report` is a skip by `pytest.importorskip` (a package of an extra is not installed)."""
    return report.skipped and "could not import" in str(report.longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """On CI, a test module skipped for a missing package fails instead (`unavailable`'s rule)."""
    report = yield
    if os.environ.get("CI") == "true" and _missing_module(report):
        report.outcome = "failed"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, a test skipped for a missing package fails instead (`unavailable`'s rule)."""
    report = yield
    if os.environ.get("CI") == "true" and _missing_module(report):
        report.outcome = "failed"
    return report


def tiny_config_dict(**train) -> dict:
    return {
        "model": dict(TINY_RESNET),
        "data": {
            "format": "synthetic",
            "synthetic": {"image_size": [48, 48], "num_train": 16, "num_val": 4, "seed": 0},
            "augment": {"scale": [0.75, 1.25], "rotate": 5, "blur": 0.5, "flip": True, "crop_size": [40, 40]},
            "num_workers": 0,
        },
        "train": {
            "max_iters": 4,
            "batch_size": 2,
            "eval_interval": 2,
            "checkpoint_interval": 2,
            "log_interval": 1,
            **train,
        },
        "eval": {"batch_size": 4},
    }


def save_tiny_checkpoint(path: Path) -> Path:
    """An untrained tiny model of the synthetic classes (seed 0), saved at `path` as a native checkpoint."""
    config = Config.from_dict(tiny_config_dict())
    torch.manual_seed(0)
    model = create_model(config, ContextScenes.classes)
    return save_checkpoint(path, model, config.with_num_classes(model.config.num_classes))


@pytest.fixture
def tiny_config() -> Config:
    return Config.from_dict(tiny_config_dict())


def open_source(format: str, root, split: str, classes_file=None, options=None):
    """The source of `split` of a dataset in `format` at `root` (what a config's data section builds)."""
    from pspnet.config import DataConfig
    from pspnet.data.sources import build_source

    data = DataConfig(
        format=format,
        root=None if root is None else str(root),
        classes_file=None if classes_file is None else str(classes_file),
        options=dict(options or {}),
    )
    return build_source(data, split)
