import csv
import json
import math

import numpy as np
import pytest
import torch

from pspnet.io.files import write_json as save_json
from pspnet.metrics import ConfusionMatrix
from pspnet.report.results import metrics_to_dict, save_csv
from pspnet.report.table import abbreviate, format_table

# 4 classes. Class 2 is predicted but absent from the ground truth, class 3 appears nowhere
# (its only prediction is on an ignored pixel). Ignored pixels (255) must not count.
TARGET = [[0, 0, 0], [0, 1, 1], [1, 255, 255]]
PRED = [[0, 0, 1], [2, 1, 1], [0, 3, 2]]
# matrix[gt, pred] counted by hand from the 7 valid pixels above
EXPECTED_MATRIX = [
    [2, 1, 1, 0],
    [1, 2, 0, 0],
    [0, 0, 0, 0],
    [0, 0, 0, 0],
]
# IoU = TP / (TP + FP + FN): class 0: 2 / (2 + 1 + 2) = 0.4; class 1: 2 / (2 + 1 + 1) = 0.5;
# class 2: 0 / (0 + 1 + 0) = 0; class 3: 0 / 0 -> undefined.
EXPECTED_IOU = [0.4, 0.5, 0.0, math.nan]
EXPECTED_ACC = [2 / 4, 2 / 3, math.nan, math.nan]


def hand_example() -> ConfusionMatrix:
    matrix = ConfusionMatrix(4)
    matrix.update(torch.tensor(PRED, dtype=torch.uint8), torch.tensor(TARGET, dtype=torch.uint8))
    return matrix


def test_matrix_matches_hand_count():
    matrix = hand_example()
    assert matrix.matrix.dtype == torch.int64
    assert matrix.matrix.tolist() == EXPECTED_MATRIX


def test_metrics_exclude_convention():
    metrics = hand_example().compute()
    np.testing.assert_allclose(metrics.iou, EXPECTED_IOU, equal_nan=True)
    np.testing.assert_allclose(metrics.acc, EXPECTED_ACC, equal_nan=True)
    assert metrics.absent == "exclude"
    assert metrics.miou == pytest.approx((0.4 + 0.5 + 0.0) / 3)
    assert metrics.macc == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert metrics.aacc == pytest.approx(4 / 7)
    assert metrics.confusion.dtype == np.int64
    assert metrics.confusion.tolist() == EXPECTED_MATRIX


def test_metrics_zero_convention():
    metrics = hand_example().compute(absent="zero")
    assert metrics.miou == pytest.approx((0.4 + 0.5 + 0.0 + 0.0) / 4)
    assert metrics.macc == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert metrics.aacc == pytest.approx(4 / 7)
    np.testing.assert_allclose(metrics.iou, EXPECTED_IOU, equal_nan=True)


def test_empty_matrix_gives_nan():
    metrics = ConfusionMatrix(3).compute()
    assert math.isnan(metrics.miou) and math.isnan(metrics.macc) and math.isnan(metrics.aacc)
    assert ConfusionMatrix(3).compute(absent="zero").miou == 0.0


def reference_metrics(pred: np.ndarray, target: np.ndarray, num_classes: int):
    """Independent float64 computation: per-pixel counting with np.add.at, per-class loops."""
    valid = target != 255
    matrix = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(matrix, (target[valid], pred[valid]), 1.0)
    ious, accs = [], []
    for c in range(num_classes):
        tp = matrix[c, c]
        fp = matrix[:, c].sum() - tp
        fn = matrix[c, :].sum() - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        accs.append(tp / (tp + fn) if tp + fn else math.nan)
    present_ious = [v for v in ious if not math.isnan(v)]
    present_accs = [v for v in accs if not math.isnan(v)]
    return {
        "matrix": matrix,
        "iou": np.array(ious),
        "acc": np.array(accs),
        "miou": sum(present_ious) / len(present_ious),
        "miou_zero": sum(present_ious) / num_classes,
        "macc": sum(present_accs) / len(present_accs),
        "aacc": np.trace(matrix) / matrix.sum(),
    }


def random_batch(generator: np.random.Generator, num_classes: int, shape=(2, 37, 53)):
    target = generator.integers(0, num_classes, size=shape)
    target[generator.random(shape) < 0.1] = 255
    noise = generator.integers(0, num_classes, size=shape)
    pred = np.where(generator.random(shape) < 0.6, np.clip(target, 0, num_classes - 1), noise)
    return pred, target


def test_agrees_with_numpy_reference():
    generator = np.random.default_rng(0)
    num_classes = 9
    pred, target = random_batch(generator, num_classes)
    target[target == 7] = 255  # a class absent from the ground truth (but still predicted)
    pred[pred == 8] = 0
    target[target == 8] = 0  # a class absent from both
    matrix = ConfusionMatrix(num_classes)
    matrix.update(torch.from_numpy(pred), torch.from_numpy(target))
    reference = reference_metrics(pred, target, num_classes)

    np.testing.assert_array_equal(matrix.matrix.numpy(), reference["matrix"])
    metrics = matrix.compute()
    assert math.isnan(metrics.iou[8]) and metrics.iou[7] == 0.0
    np.testing.assert_allclose(metrics.iou, reference["iou"], rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(metrics.acc, reference["acc"], rtol=1e-12, equal_nan=True)
    assert metrics.miou == pytest.approx(reference["miou"], rel=1e-12)
    assert metrics.macc == pytest.approx(reference["macc"], rel=1e-12)
    assert metrics.aacc == pytest.approx(reference["aacc"], rel=1e-12)
    assert matrix.compute(absent="zero").miou == pytest.approx(reference["miou_zero"], rel=1e-12)


def test_merge_equals_single_update_and_reset():
    generator = np.random.default_rng(1)
    batches = [random_batch(generator, 5) for _ in range(3)]
    parts = []
    for pred, target in batches:
        part = ConfusionMatrix(5)
        part.update(torch.from_numpy(pred), torch.from_numpy(target))
        parts.append(part)
    merged = ConfusionMatrix(5)
    merged.merge(parts[0])
    merged += parts[1]
    merged += parts[2]

    whole = ConfusionMatrix(5)
    all_pred = np.concatenate([pred for pred, _ in batches])
    all_target = np.concatenate([target for _, target in batches])
    whole.update(torch.from_numpy(all_pred), torch.from_numpy(all_target))
    assert torch.equal(merged.matrix, whole.matrix)
    assert merged.compute().miou == whole.compute().miou

    merged.reset()
    assert merged.matrix.sum().item() == 0


@pytest.mark.parametrize(
    "pred, target, message",
    [
        (torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), "shape"),
        (torch.tensor([0, 4]), torch.tensor([0, 1]), "predicted class ids"),
        (torch.tensor([0, -1]), torch.tensor([0, 1]), "predicted class ids"),
        (torch.tensor([0, 1]), torch.tensor([0, 7]), "target class ids"),
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long), "integer class ids"),
    ],
)
def test_bad_input_raises(pred, target, message):
    matrix = ConfusionMatrix(4)
    with pytest.raises(ValueError, match=message):
        matrix.update(pred, target)
    assert matrix.matrix.sum().item() == 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="absent"):
        hand_example().compute(absent="ignore")
    with pytest.raises(ValueError, match="merge"):
        ConfusionMatrix(4).merge(ConfusionMatrix(5))
    with pytest.raises(ValueError):
        ConfusionMatrix(0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    generator = np.random.default_rng(2)
    pred, target = random_batch(generator, 19, shape=(4, 128, 128))
    cpu = ConfusionMatrix(19)
    cpu.update(torch.from_numpy(pred), torch.from_numpy(target))
    gpu = ConfusionMatrix(19)
    gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(target).cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert gpu.compute().miou == cpu.compute().miou


CITYSCAPES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip


def test_abbreviations_follow_paper():
    paper = "road swalk build. wall fence pole tlight sign veg. terrain sky person rider car truck bus train mbike bike"
    assert [abbreviate(name) for name in CITYSCAPES] == paper.split()
    assert abbreviate("chest of drawers") == "codraw."
    assert abbreviate("building, edifice") == "build."


def cityscapes_metrics():
    generator = np.random.default_rng(3)
    pred, target = random_batch(generator, len(CITYSCAPES))
    target[target == 3] = 255  # "wall" absent from the ground truth ...
    pred[pred == 3] = 0  # ... and from the prediction: IoU undefined
    matrix = ConfusionMatrix(len(CITYSCAPES))
    matrix.update(torch.from_numpy(pred), torch.from_numpy(target))
    return matrix.compute()


def test_format_table_content():
    metrics = cityscapes_metrics()
    protocol = "whole image, scales [1.0], no flip"
    table = format_table(metrics, CITYSCAPES, title="Cityscapes val", protocol=protocol, width=300)
    lines = table.splitlines()
    assert lines[0] == "Cityscapes val"
    headers, values = lines[1].split(), lines[2].split()
    assert headers == [abbreviate(name) for name in CITYSCAPES] + ["mIoU"]
    assert values[0] == f"{100 * metrics.iou[0]:.1f}"
    assert values[3] == "-"  # NaN IoU of the absent class
    assert values[-1] == f"{100 * metrics.miou:.1f}"
    summary = lines[-1]
    assert f"mIoU {100 * metrics.miou:.1f}" in summary
    assert f"mAcc {100 * metrics.macc:.1f}" in summary
    assert f"aAcc {100 * metrics.aacc:.1f}" in summary
    assert f"protocol: {protocol}" in summary


def test_format_table_wraps_to_width():
    metrics = cityscapes_metrics()
    table = format_table(metrics, CITYSCAPES, width=50)
    body = table.splitlines()[:-1]
    assert all(len(line) <= 50 for line in body)
    header_lines = body[0::3]  # blocks: header, values, blank separator
    assert len(header_lines) >= 3
    headers = [word for line in header_lines for word in line.split()]
    assert headers == [abbreviate(name) for name in CITYSCAPES] + ["mIoU"]
    assert f"{100 * metrics.miou:.1f}" in body[-1]


def test_format_table_rejects_wrong_names():
    with pytest.raises(ValueError, match="class names"):
        format_table(hand_example().compute(), ["a", "b"])


def test_dict_json_and_csv(tmp_path):
    metrics = hand_example().compute()
    names = ["road", "car", "sky", "bus"]
    data = metrics_to_dict(metrics, names, protocol="sliding window")
    assert data["miou"] == pytest.approx(0.3)
    assert data["absent"] == "exclude" and data["protocol"] == "sliding window"
    assert data["per_class"]["car"] == {"iou": pytest.approx(0.5), "acc": pytest.approx(2 / 3)}
    assert data["per_class"]["bus"] == {"iou": None, "acc": None}

    save_json(tmp_path / "out" / "metrics.json", data)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == data
    with pytest.raises(ValueError):
        save_json(tmp_path / "bad.json", {"miou": math.nan})

    save_csv(tmp_path / "metrics.csv", metrics, names)
    with open(tmp_path / "metrics.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["class", "iou", "acc"]
    assert [row[0] for row in rows[1:]] == names
    assert float(rows[1][1]) == pytest.approx(0.4) and float(rows[2][2]) == pytest.approx(2 / 3)
    assert rows[3][1] == "0.000000" and rows[3][2] == "" and rows[4][1:] == ["", ""]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "out"]  # no temporary files left
