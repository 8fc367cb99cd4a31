"""`data check` finds every planted problem in a miniature dataset and names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import open_source
from PIL import Image

from pspnet.config import DataConfig, SyntheticConfig
from pspnet.data.check import check_dataset, run_check

PALETTE = [[128, 64, 128], [0, 0, 142], [220, 20, 60]]
RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def clean_dataset(root: Path) -> DataConfig:
    """Folders layout, split `train`: three images with index masks, one with a colour mask."""
    classes_file = root / "classes.json"
    classes_file.write_text(json.dumps({"names": ["road", "car", "person"], "palette": PALETTE, "ignore": 9}))
    ids = np.zeros((8, 8), dtype=np.uint8)
    ids[:, 4:] = 1
    ids[6:, :2] = 9  # custom ignore value
    for name in ("a", "b", "c"):
        save(root / "train/images" / f"{name}.jpg", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        save(root / "train/masks" / f"{name}.png", ids)
    save(root / "train/images/d.jpg", RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save(root / "train/masks/d.png", np.full((8, 8, 3), PALETTE[2], dtype=np.uint8))
    return DataConfig(format="folders", root=str(root), classes_file=str(classes_file))


def test_clean_dataset_is_ok_and_counts_class_pixels(tmp_path):
    report = run_check(clean_dataset(tmp_path), "train")
    assert report.ok, report.format()
    assert (report.num_images, report.num_masks, report.num_checked) == (4, 4, 4)
    assert report.class_pixels.tolist() == [3 * 28, 3 * 32, 64]
    assert report.ignore_pixels == 3 * 4 and report.unmatched_pixels == 0
    text = report.format()
    for expected in ("road", "car", "person", "(ignore)", "OK"):
        assert expected in text


def test_every_planted_problem_is_reported_with_its_file(tmp_path):
    config = clean_dataset(tmp_path)
    train = tmp_path / "train"
    save(train / "masks/orphan.png", np.zeros((8, 8), dtype=np.uint8))
    save(train / "images/no_mask.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    (train / "images/broken.jpg").write_bytes(b"\xff\xd8 truncated")
    save(train / "masks/broken.png", np.zeros((8, 8), dtype=np.uint8))
    save(train / "images/small.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    save(train / "masks/small.png", np.zeros((4, 8), dtype=np.uint8))
    save(train / "images/label7.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    save(train / "masks/label7.png", np.full((8, 8), 7, dtype=np.uint8))
    save(train / "images/odd_colours.jpg", np.zeros((8, 8, 3), dtype=np.uint8))
    colours = np.full((8, 8, 3), PALETTE[0], dtype=np.uint8)
    colours[:2] = (255, 255, 0)  # 25% in a colour of no class
    save(train / "masks/odd_colours.png", colours)

    report = run_check(config, "train")
    assert not report.ok
    found = {
        (problem.kind, file)
        for problem in report.problems
        for file in ("orphan.png", "no_mask.jpg", "broken.jpg", "small.png", "label7.png", "odd_colours.png")
        if file in problem.message
    }
    assert found == {
        ("orphan_mask", "orphan.png"),
        ("missing_mask", "no_mask.jpg"),
        ("unreadable", "broken.jpg"),
        ("size_mismatch", "small.png"),
        ("bad_labels", "label7.png"),
        ("unknown_colors", "odd_colours.png"),
    }
    assert len(report.problems) == 6
    assert "label values 7" in next(p.message for p in report.problems if p.kind == "bad_labels")
    assert "25.00%" in next(p.message for p in report.problems if p.kind == "unknown_colors")
    assert report.unmatched_pixels == 16
    text = report.format()
    assert "6 problem(s)" in text and "orphan.png" in text


def test_pairs_check_reports_unknown_colour_fraction(tmp_path):
    classes_file = tmp_path / "classes.yaml"
    classes_file.write_text("names: [sky, grass]\npalette: [[0, 0, 255], [0, 255, 0]]\n")
    mask = np.zeros((4, 4, 3), dtype=np.uint8)
    mask[:, :2] = (0, 0, 255)
    mask[:, 2:] = (0, 250, 5)
    save(tmp_path / "val/1.png", np.concatenate([np.zeros((4, 4, 3), dtype=np.uint8), mask], axis=1))
    source = open_source("pairs", tmp_path, "val", classes_file=classes_file)
    clean = check_dataset(source)
    assert clean.ok and clean.class_pixels.tolist() == [8, 8]
    strict = check_dataset(
        open_source(
            "pairs", tmp_path, "val", classes_file=classes_file, options={"color_tolerance": 2, "min_region": 0}
        )
    )
    assert [p.kind for p in strict.problems] == ["unknown_colors"]
    assert "1.png" in strict.problems[0].message and "50.00%" in strict.problems[0].message


def test_cityscapes_missing_mask_and_progress(tmp_path):
    save(tmp_path / "leftImg8bit/val/bonn/bonn_000000_000019_leftImg8bit.png", np.zeros((4, 4, 3), dtype=np.uint8))
    save(tmp_path / "leftImg8bit/val/bonn/bonn_000001_000019_leftImg8bit.png", np.zeros((4, 4, 3), dtype=np.uint8))
    save(tmp_path / "gtFine/val/bonn/bonn_000000_000019_gtFine_labelIds.png", np.full((4, 4), 26, dtype=np.uint8))
    calls = []
    report = run_check(
        DataConfig(format="cityscapes", root=str(tmp_path)),
        "val",
        progress=lambda done, total: calls.append((done, total)),
    )
    assert [p.kind for p in report.problems] == ["missing_mask"]
    assert "bonn_000001_000019_leftImg8bit.png" in report.problems[0].message
    assert report.class_pixels[13] == 16 and calls == [(1, 1)]


def test_empty_split(tmp_path):
    config = clean_dataset(tmp_path)
    (tmp_path / "val/images").mkdir(parents=True)
    (tmp_path / "val/masks").mkdir()
    assert [p.kind for p in run_check(config, "val").problems] == ["empty"]


def test_synthetic_data_is_checked_sample_by_sample():
    """The built-in data has no files: each generated sample is decoded and counted like a file pair."""
    from pspnet.data.synthetic import ContextScenes

    data = DataConfig(synthetic=SyntheticConfig(image_size=[40, 48], num_train=6, num_val=3, seed=2))
    report = run_check(data, "val")
    assert report.ok and report.num_checked == report.num_images == report.num_masks == 3
    source = ContextScenes("val", 3, (40, 48), seed=2)
    expected = sum(np.bincount(source.load(i).mask.ravel(), minlength=11) for i in range(3))
    np.testing.assert_array_equal(report.class_pixels, expected)
    assert "OK: no problems found" in report.format()


def _jpeg_pairs(root: Path, count: int, quality: int) -> list[np.ndarray]:
    """Cityscapes-coloured masks of random rectangles, saved as JPEG pairs (photo | mask); returns the true ids."""
    from pspnet.data.formats.cityscapes import cityscapes_classes

    palette = np.array(cityscapes_classes().palette, dtype=np.uint8)
    rng = np.random.default_rng(3)
    truths = []
    for index in range(count):
        ids = np.zeros((128, 128), np.uint8)
        ids[:64] = 10  # sky over road
        for _ in range(8):
            y, x = rng.integers(0, 110, 2)
            ids[y : y + rng.integers(10, 40), x : x + rng.integers(10, 40)] = rng.integers(0, 19)
        pair = np.concatenate([rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), palette[ids]], axis=1)
        (root / "val").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pair).save(root / "val" / f"{index}.jpg", quality=quality)
        truths.append(ids)
    return truths


def test_jpeg_pairs_decode_without_stray_classes_and_pass_the_check(tmp_path):
    """JPEG colour bleed at class boundaries neither fails `data check` nor creates classes that are not there."""
    truths = _jpeg_pairs(tmp_path, 6, quality=85)
    cleaned = open_source("pairs", tmp_path, "val")
    raw = open_source("pairs", tmp_path, "val", options={"min_region": 0})
    report = check_dataset(cleaned)
    assert report.ok, report.format()
    stray = {"cleaned": 0, "raw": 0}
    for index, truth in enumerate(truths):
        for name, source in (("cleaned", cleaned), ("raw", raw)):
            ids = source.load(index).mask
            stray[name] += len(set(np.unique(ids).tolist()) - {255} - set(np.unique(truth).tolist()))
        ids = cleaned.load(index).mask
        assert np.mean(ids == truth) > 0.985
    assert stray["cleaned"] <= 1 < stray["raw"], stray
    assert check_dataset(raw).problems  # without cleaning, JPEG noise exceeds the 1% of unmatched pixels


def test_a_large_patch_of_an_unknown_colour_stays_unmatched(tmp_path):
    classes_file = tmp_path / "classes.yaml"
    classes_file.write_text("names: [sky, grass]\npalette: [[0, 0, 255], [0, 255, 0]]\n")
    mask = np.zeros((32, 32, 3), dtype=np.uint8)
    mask[:, :16] = (0, 0, 255)
    mask[:, 16:] = (255, 0, 0)  # a colour of no class, 512 pixels
    save(tmp_path / "val/1.png", np.concatenate([np.zeros((32, 32, 3), dtype=np.uint8), mask], axis=1))
    ids = open_source("pairs", tmp_path, "val", classes_file=classes_file).load(0).mask
    assert (ids[:, :16] == 0).all() and (ids[:, 16:] == 255).all()


def test_unmatched_threshold_is_a_setting(tmp_path, capsys):
    from pspnet.cli import main

    _jpeg_pairs(tmp_path, 2, quality=85)
    config = tmp_path / "pairs.yaml"
    config.write_text(f"data: {{format: pairs, root: {tmp_path}, train_split: val, options: {{min_region: 0}}}}\n")
    assert main(["data", "check", str(config)]) == 1
    assert "unknown_colors" in capsys.readouterr().out
    assert main(["data", "check", str(config), "--max-unmatched", "0.2"]) == 0


def test_training_reports_the_unmatched_colour_fraction_once(tmp_path, caplog):
    from conftest import tiny_config_dict

    from pspnet.config import Config
    from pspnet.training.trainer import Trainer

    _jpeg_pairs(tmp_path / "data", 3, quality=85)
    data = tiny_config_dict()
    data["data"].update(format="pairs", root=str(tmp_path / "data"), train_split="val")
    with caplog.at_level("INFO"):
        Trainer(Config.from_dict(data), tmp_path / "run", progress=False)
    reports = [r.getMessage() for r in caplog.records if "match no class colour" in r.getMessage()]
    assert len(reports) == 1 and reports[0].startswith("pairs: 0.00% of the colour-mask pixels in 3 sampled masks")
