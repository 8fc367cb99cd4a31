"""Dataset formats read from miniature dataset trees written as real PNG/JPEG files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import open_source
from PIL import Image

from pspnet.classes import IGNORE_INDEX, default_palette
from pspnet.data.formats import cityscapes as cityscapes_module
from pspnet.data.formats.ade20k import ADE20K_NAMES
from pspnet.data.formats.cityscapes import cityscapes_classes, label_id_to_train_id, train_id_to_label_id
from pspnet.data.palettes import decode_colors, load_classes_file
from pspnet.data.sources import SOURCES
from pspnet.errors import DataError

RNG = np.random.default_rng(0)


def save(path: Path, array: np.ndarray, mode: str | None = None, palette: list | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if palette is not None:
        image.putpalette([c for colour in palette for c in colour])
    image.save(path, **kwargs)
    return path


def photo(height: int, width: int) -> np.ndarray:
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def blocks(ids: list[list[int]], size: int) -> np.ndarray:
    """A mask made of `size`x`size` blocks with the given ids."""
    return np.asarray(ids, dtype=np.uint8).repeat(size, 0).repeat(size, 1)


def interior(mask: np.ndarray, radius: int) -> np.ndarray:
    """Pixels whose whole (2r+1)^2 neighbourhood has their value: the mask's regions eroded by `radius`."""
    height, width = mask.shape
    padded = np.pad(mask, radius, mode="edge")
    keep = np.ones(mask.shape, dtype=bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            keep &= padded[dy : dy + height, dx : dx + width] == mask
    return keep


# Cityscapes ---------------------------------------------------------------------------------------


def test_cityscapes_tables_follow_the_official_labels():
    from cityscapesscripts.helpers.labels import labels

    to_train, to_label = label_id_to_train_id(), train_id_to_label_id()
    for label in labels:
        if label.id < 0:
            continue
        expected = label.trainId if 0 <= label.trainId < IGNORE_INDEX else IGNORE_INDEX
        assert to_train[label.id] == expected, label.name
        if expected != IGNORE_INDEX:
            assert to_label[label.trainId] == label.id, label.name
    train_labels = sorted(
        (entry for entry in labels if 0 <= entry.trainId < IGNORE_INDEX), key=lambda entry: entry.trainId
    )
    assert [entry.trainId for entry in train_labels] == list(range(19))
    classes = cityscapes_classes()
    assert classes.names == tuple(entry.name for entry in train_labels)
    assert classes.palette == tuple(tuple(entry.color) for entry in train_labels)
    assert (to_train[34:] == IGNORE_INDEX).all()


def test_cityscapes_source_maps_label_ids(tmp_path):
    name = "aachen_000000_000019"
    label_ids = blocks([[7, 26], [0, 33], [9, 1]], 4)  # road, car, unlabeled, bicycle, parking, ego vehicle
    save(tmp_path / "leftImg8bit/train/aachen" / f"{name}_leftImg8bit.png", photo(12, 8))
    save(tmp_path / "gtFine/train/aachen" / f"{name}_gtFine_labelIds.png", label_ids)
    save(tmp_path / "gtFine/train/aachen/aachen_000001_000019_gtFine_color.png", photo(12, 8))  # not a labelIds file

    source = open_source("cityscapes", tmp_path, "train")
    assert len(source) == 1 and source.name(0) == name and source.classes.num_classes == 19
    sample = source.load(0)
    assert sample.image.shape == (12, 8, 3) and sample.mask.dtype == np.uint8
    np.testing.assert_array_equal(sample.mask, blocks([[0, 13], [255, 18], [255, 255]], 4))


def test_cityscapes_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)
    cityscapes_module._tables.cache_clear()
    try:
        with pytest.raises(DataError, match="pip install cityscapesscripts"):
            label_id_to_train_id()
    finally:
        cityscapes_module._tables.cache_clear()


# ADE20K -------------------------------------------------------------------------------------------


def ade_tree(root: Path, annotation: np.ndarray) -> None:
    base = root / "ADEChallengeData2016"
    height, width = annotation.shape
    save(base / "images/validation/ADE_val_00000001.jpg", photo(height, width))
    save(base / "annotations/validation/ADE_val_00000001.png", annotation)
    (base / "images/training").mkdir(parents=True)
    (base / "annotations/training").mkdir(parents=True)


@pytest.mark.parametrize("inside", [False, True])
def test_ade20k_shifts_labels_and_ignores_other(tmp_path, inside):
    annotation = blocks([[0, 1], [150, 75]], 5)
    ade_tree(tmp_path, annotation)
    root = tmp_path / "ADEChallengeData2016" if inside else tmp_path
    source = open_source("ade20k", root, "val")
    assert len(source) == 1 and source.name(0) == "ADE_val_00000001"
    np.testing.assert_array_equal(source.load(0).mask, blocks([[255, 0], [149, 74]], 5))
    assert source.classes.num_classes == 150 and len(ADE20K_NAMES) == 150
    assert (
        source.classes.names[:5] == ("wall", "building", "sky", "floor", "tree") and source.classes.names[-1] == "flag"
    )
    assert len(open_source("ade20k", root, "train")) == 0


def test_ade20k_label_above_150_names_the_file(tmp_path):
    ade_tree(tmp_path, blocks([[1, 151]], 4))
    with pytest.raises(DataError, match=r"ADE_val_00000001\.png.*151"):
        open_source("ade20k", tmp_path, "val").load(0)


# PASCAL VOC ---------------------------------------------------------------------------------------


def voc_tree(root: Path) -> np.ndarray:
    labels = blocks([[0, 15], [12, 20]], 6)
    labels[5:7, :] = IGNORE_INDEX  # object border
    for name in ("2007_000032", "2007_000033"):
        save(root / "JPEGImages" / f"{name}.jpg", photo(12, 12))
        save(root / "SegmentationClass" / f"{name}.png", labels, mode="P", palette=default_palette(256))
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n\n")
    return labels


def test_voc_palette_pngs_give_class_ids_and_keep_borders(tmp_path):
    labels = voc_tree(tmp_path)
    stored = Image.open(tmp_path / "SegmentationClass/2007_000033.png")
    assert stored.mode == "P"
    source = open_source("voc", tmp_path, "val")
    assert len(source) == 1 and source.name(0) == "2007_000033"
    assert (
        source.classes.names[0] == "background"
        and source.classes.names[15] == "person"
        and source.classes.num_classes == 21
    )
    mask = source.load(0).mask
    np.testing.assert_array_equal(mask, labels)
    assert (mask[5:7] == IGNORE_INDEX).all()


def test_voc_augmented_masks_and_list_file(tmp_path):
    voc_tree(tmp_path)
    aug = blocks([[3, 4], [5, 6]], 6)
    save(tmp_path / "SegmentationClassAug/2007_000032.png", aug)
    save(tmp_path / "SegmentationClassAug/2007_000033.png", aug)
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").write_text("2007_000032\n2007_000033\n")
    (tmp_path / "pairs.txt").write_text("/JPEGImages/2007_000033.jpg /SegmentationClassAug/2007_000033.png\n")

    source = open_source("voc", tmp_path, "train", options={"aug": True})
    assert [source.name(i) for i in range(len(source))] == ["2007_000032", "2007_000033"]
    np.testing.assert_array_equal(source.load(1).mask, aug)
    listed = open_source("voc", tmp_path, "train", options={"aug": True, "list_file": "pairs.txt"})
    assert len(listed) == 1 and listed.name(0) == "2007_000033"


def test_voc_missing_list_file(tmp_path):
    voc_tree(tmp_path)
    with pytest.raises(DataError, match=r"test\.txt"):
        open_source("voc", tmp_path, "test")


# Image pairs --------------------------------------------------------------------------------------


def test_pairs_decode_jpeg_masks_to_class_ids(tmp_path):
    palette = np.asarray(cityscapes_classes().palette, dtype=np.uint8)
    ids = RNG.integers(0, 19, (8, 8)).repeat(32, 0).repeat(32, 1).astype(np.uint8)
    colours = palette[ids]
    colours[:32, :32] = (255, 255, 255)  # a colour of no class: 1/64 of the mask
    for index in range(2):
        save(tmp_path / "train" / f"{index + 1}.jpg", np.concatenate([photo(256, 256), colours], axis=1), quality=75)

    source = open_source("pairs", tmp_path, "train")
    assert len(source) == 2 and source.classes.num_classes == 19
    sample = source.load(0)
    assert sample.image.shape == (256, 256, 3) and sample.mask.shape == (256, 256)
    truth = ids.copy()
    truth[:32, :32] = IGNORE_INDEX
    keep = interior(truth, 4)
    assert (sample.mask[keep] == truth[keep]).mean() >= 0.99
    second = source.load(1)
    assert 1 / 64 <= source.unmatched_fraction < 0.1
    assert source.unmatched_pixels == np.count_nonzero(sample.mask == IGNORE_INDEX) + np.count_nonzero(
        second.mask == IGNORE_INDEX
    )


def test_pairs_with_custom_classes_and_tolerance(tmp_path):
    classes_file = tmp_path / "classes.json"
    classes_file.write_text(json.dumps({"names": ["sky", "grass"], "palette": [[0, 0, 255], [0, 255, 0]]}))
    mask = np.zeros((4, 8, 3), dtype=np.uint8)
    mask[:, :4] = (0, 10, 250)  # sky within distance ~11
    mask[:, 4:] = (0, 200, 0)  # grass at distance 55
    save(tmp_path / "val/a.png", np.concatenate([photo(4, 8), mask], axis=1))

    strict = open_source("pairs", tmp_path, "val", classes_file=classes_file, options={"color_tolerance": 20})
    np.testing.assert_array_equal(strict.load(0).mask[0], [0, 0, 0, 0, 255, 255, 255, 255])
    assert strict.unmatched_fraction == 0.5
    loose = open_source("pairs", tmp_path, "val", classes_file=classes_file, options={"color_tolerance": 60})
    np.testing.assert_array_equal(loose.load(0).mask[0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_pairs_odd_width_names_the_file(tmp_path):
    save(tmp_path / "train/odd.png", photo(4, 9))
    with pytest.raises(DataError, match=r"odd\.png"):
        open_source("pairs", tmp_path, "train").load(0)


# Folders ------------------------------------------------------------------------------------------


def write_classes(path: Path, **extra) -> Path:
    path.write_text(
        json.dumps(
            {"names": ["road", "car", "person"], "palette": [[128, 64, 128], [0, 0, 142], [220, 20, 60]], **extra}
        )
    )
    return path


def test_folders_pair_by_name_and_map_custom_ignore(tmp_path):
    classes_file = write_classes(tmp_path / "classes.json", ignore=200)
    index_mask = blocks([[0, 1], [2, 200]], 3)
    save(tmp_path / "train/images/a.jpg", photo(6, 6))
    save(tmp_path / "train/masks/a.png", index_mask)
    save(tmp_path / "train/images/sub/b.png", photo(6, 6))
    save(tmp_path / "train/masks/sub/b.png", np.full((6, 6, 3), (0, 0, 142), dtype=np.uint8))  # colour of "car"
    save(tmp_path / "train/images/lonely.jpg", photo(6, 6))
    save(tmp_path / "train/masks/orphan.png", index_mask)

    source = open_source("folders", tmp_path, "train", classes_file=classes_file)
    assert [source.name(i) for i in range(len(source))] == ["a", "sub/b"]
    np.testing.assert_array_equal(source.load(0).mask, blocks([[0, 1], [2, 255]], 3))
    assert (source.load(1).mask == 1).all()
    files = {f.name: f for f in source.files()}
    assert files["lonely"].mask is None and files["orphan"].image is None
    assert set(files) == {"a", "sub/b", "lonely", "orphan"}


def test_folders_colour_masks_and_flat_layout(tmp_path):
    classes_file = write_classes(tmp_path / "classes.yaml")
    ids = blocks([[0, 1], [2, 1]], 4)
    palette = np.asarray(load_classes_file(classes_file)[0].palette, dtype=np.uint8)
    save(tmp_path / "images/x.jpg", photo(8, 8))
    save(tmp_path / "masks/x.png", palette[ids])
    for split in ("train", "val"):  # the flat layout serves every split
        source = open_source("folders", tmp_path, split, classes_file=classes_file)
        np.testing.assert_array_equal(source.load(0).mask, ids)
        assert source.unmatched_fraction == 0.0


def test_folders_need_a_classes_file(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="classes_file"):
        open_source("folders", tmp_path, "train")


# Palettes and classes files -----------------------------------------------------------------------


def test_decode_colors_nearest_within_tolerance():
    palette = [(0, 0, 0), (255, 0, 0)]
    mask = np.array([[[0, 0, 0], [250, 5, 0], [128, 128, 128], [10, 0, 0]]], dtype=np.uint8)
    ids, unmatched = decode_colors(mask, palette, tolerance=12)
    np.testing.assert_array_equal(ids, [[0, 1, 255, 0]])
    assert unmatched == 1
    ids, unmatched = decode_colors(mask, palette, tolerance=0)
    np.testing.assert_array_equal(ids, [[0, 255, 255, 255]])
    assert unmatched == 3


def test_classes_file_errors(tmp_path):
    path = tmp_path / "classes.yaml"
    with pytest.raises(DataError, match="not found"):
        load_classes_file(path)
    for content, message in [
        ("names: [a, b]\npalette: [[0, 0, 0]]\n", "2 class names but 1 palette"),
        ("names: [a, b]\nignore: 1\n", "ignore"),
        ("names: [a]\ncolours: []\n", "unknown keys"),
        ("[a, b]\n", "names"),
        ("names: [a]\npalette: [[0, 0, 300]]\n", "palette"),
    ]:
        path.write_text(content)
        with pytest.raises(DataError, match=message):
            load_classes_file(path)
    path.write_text("names: [a, b]\nignore: 255\n")
    classes, ignore = load_classes_file(path)
    assert classes.names == ("a", "b") and classes.palette == tuple(default_palette(2)) and ignore == 255


# Errors -------------------------------------------------------------------------------------------


def test_unknown_format_lists_the_known_ones(tmp_path):
    with pytest.raises(DataError, match="known formats: " + ", ".join(SOURCES)):
        open_source("kitti", tmp_path, "train")


def test_missing_root_and_split_show_the_layout(tmp_path):
    with pytest.raises(DataError, match="root not found.*leftImg8bit"):
        open_source("cityscapes", tmp_path / "nowhere", "train")
    with pytest.raises(DataError, match="data.root is not set"):
        open_source("voc", None, "train")
    (tmp_path / "leftImg8bit/train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"gtFine/train.*expected layout"):
        open_source("cityscapes", tmp_path, "train")


def test_unknown_option_and_fixed_classes(tmp_path):
    voc_tree(tmp_path)
    with pytest.raises(DataError, match="unknown data.options.*augment.*aug, list_file"):
        open_source("voc", tmp_path, "train", options={"augment": True})
    with pytest.raises(DataError, match="fixed class set"):
        open_source("voc", tmp_path, "train", classes_file="classes.yaml")


def test_unreadable_image_names_the_file(tmp_path):
    classes_file = write_classes(tmp_path / "classes.json")
    (tmp_path / "images").mkdir()
    (tmp_path / "images/broken.jpg").write_bytes(b"not a jpeg")
    save(tmp_path / "masks/broken.png", np.zeros((4, 4), dtype=np.uint8))
    source = open_source("folders", tmp_path, "train", classes_file=classes_file)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        source.load(0)


def test_size_mismatch_and_colour_mask_for_index_format_name_the_files(tmp_path):
    voc_tree(tmp_path)
    save(tmp_path / "SegmentationClass/2007_000032.png", np.zeros((5, 5), dtype=np.uint8))
    with pytest.raises(DataError, match=r"2007_000032\.jpg is 12x12 but its mask .*2007_000032\.png is 5x5"):
        open_source("voc", tmp_path, "train").load(0)
    save(tmp_path / "SegmentationClass/2007_000032.png", photo(12, 12))
    with pytest.raises(DataError, match=r"2007_000032\.png: expected a single-channel"):
        open_source("voc", tmp_path, "train").load(0)
