"""Agreement with the official Cityscapes evaluator and the `--format cityscapes` submission files."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config_dict
from PIL import Image

from pspnet.checkpoint import open_model, save_checkpoint
from pspnet.cli import main
from pspnet.config import Config, DataConfig
from pspnet.data.formats.cityscapes import cityscapes_classes, label_id_to_train_id, train_id_to_label_id
from pspnet.data.sources import build_source
from pspnet.metrics import ConfusionMatrix
from pspnet.models import create_model

official = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")

FRAMES = ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"]


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def official_evaluation(ground_truth: list[Path], results: Path) -> dict:
    """cityscapesscripts' evalPixelLevelSemanticLabeling, run in-process on its own file matching."""
    args = copy.copy(official.args)
    args.evalInstLevelScore = False  # its instance-level part calls np.in1d, which numpy 2 removed
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    args.predictionPath, args.predictionWalk = str(results), None
    predictions = [official.getPrediction(args, str(path)) for path in ground_truth]
    return official.evaluateImgLists(predictions, [str(path) for path in ground_truth], args)


def test_miou_and_class_iou_agree_with_the_official_evaluator(tmp_path):
    rng = np.random.default_rng(0)
    # every label id (ignored ones too) except train (31: predicted, never in the ground truth) and
    # motorcycle (32, train id 17: in neither)
    gt_ids = np.array([label_id for label_id in range(34) if label_id not in (31, 32)])
    pred_train_ids = np.array([train_id for train_id in range(19) if train_id != 17])
    to_train = label_id_to_train_id()
    confusion = ConfusionMatrix(19)
    ground_truth = []
    for frame in FRAMES:
        city = frame.split("_")[0]
        blocks = rng.choice(gt_ids, size=(6, 8))
        gt = np.kron(blocks, np.ones((7, 7), dtype=np.int64)).astype(np.uint8)  # 42x56, blocky like real scenes
        pred = np.where(rng.random(gt.shape) < 0.6, to_train[gt], rng.choice(pred_train_ids, size=gt.shape)).astype(
            np.uint8
        )
        pred[pred == 255] = rng.choice(pred_train_ids, size=int((pred == 255).sum()))
        write_png(
            tmp_path / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", np.zeros((*gt.shape, 3), np.uint8)
        )
        ground_truth.append(tmp_path / "gtFine" / "val" / city / f"{frame}_gtFine_labelIds.png")
        write_png(ground_truth[-1], gt)
        write_png(tmp_path / "results" / city / f"{frame}_labelIds.png", train_id_to_label_id()[pred])
        confusion.update(torch.from_numpy(pred), torch.from_numpy(to_train[gt]))

    # our ground truth comes through the cityscapes dataset format, not the table above
    source = build_source(DataConfig(format="cityscapes", root=str(tmp_path)), "val")
    decoded = sorted((source.load(i) for i in range(len(source))), key=lambda sample: sample.name)
    for sample, path in zip(decoded, sorted(ground_truth)):
        np.testing.assert_array_equal(sample.mask, to_train[np.array(Image.open(path))])

    ours = confusion.compute(absent="exclude")
    theirs = official_evaluation(ground_truth, tmp_path / "results")
    for name, iou in zip(cityscapes_classes().names, ours.iou):
        assert (math.isnan(iou) and math.isnan(theirs["classScores"][name])) or abs(
            iou - theirs["classScores"][name]
        ) < 1e-6, name
    assert math.isnan(ours.iou[17]) and ours.iou[16] == 0  # absent everywhere / predicted only
    assert abs(ours.miou - theirs["averageScoreClasses"]) < 1e-6
    # semseg's convention averages over all 19 classes, the absent one counting 0
    assert abs(confusion.compute(absent="zero").miou - theirs["averageScoreClasses"] * 18 / 19) < 1e-6


@pytest.fixture
def cityscapes_checkpoint(tmp_path):
    """An untrained tiny model of the 19 Cityscapes train classes."""
    config = Config.from_dict(tiny_config_dict())
    return save_checkpoint(tmp_path / "city.safetensors", create_model(config, cityscapes_classes()), config)


def test_predict_cityscapes_format_round_trips(cityscapes_checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    images = {}
    for frame in FRAMES:
        city = frame.split("_")[0]
        images[frame] = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        write_png(tmp_path / "leftImg8bit" / "val" / city / f"{frame}_leftImg8bit.png", images[frame])
        write_png(tmp_path / "gtFine" / "val" / city / f"{frame}_gtFine_labelIds.png", np.full((40, 56), 7, np.uint8))
    out = tmp_path / "results"
    args = [
        "--quiet",
        "predict",
        str(cityscapes_checkpoint),
        str(tmp_path / "leftImg8bit" / "val"),
        "--out",
        str(out),
        "--format",
        "cityscapes",
    ]
    assert main(args) == 0

    written = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert written == sorted(f"{frame.split('_')[0]}/{frame}_labelIds.png" for frame in FRAMES)
    model = open_model(cityscapes_checkpoint).model
    eval_label_ids = set(train_id_to_label_id()[:19].tolist())
    for frame, image in images.items():
        label_ids = np.array(Image.open(out / frame.split("_")[0] / f"{frame}_labelIds.png"))
        assert set(np.unique(label_ids).tolist()) <= eval_label_ids
        np.testing.assert_array_equal(label_id_to_train_id()[label_ids], model.predict(image))

    # the official evaluator finds exactly these files for the ground truth
    args = copy.copy(official.args)
    args.predictionPath, args.predictionWalk = str(out), None
    for frame in FRAMES:
        gt = tmp_path / "gtFine" / "val" / frame.split("_")[0] / f"{frame}_gtFine_labelIds.png"
        assert Path(official.getPrediction(args, str(gt))) == out / frame.split("_")[0] / f"{frame}_labelIds.png"


def test_cityscapes_format_refuses_other_models(tmp_path, capsys):
    config = Config.from_dict(tiny_config_dict()).replace(["model.num_classes=4"])
    checkpoint = save_checkpoint(tmp_path / "other.safetensors", create_model(config), config)
    image = tmp_path / "x_leftImg8bit.png"
    write_png(image, np.zeros((8, 8, 3), np.uint8))
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(checkpoint),
                str(image),
                "--out",
                str(tmp_path / "out"),
                "--format",
                "cityscapes",
            ]
        )
        == 2
    )
    assert "19 Cityscapes train classes" in capsys.readouterr().err
