import numpy as np
import pytest
from PIL import Image

from pspnet.classes import ClassInfo
from pspnet.visualize import (
    colorize,
    label_to_palette_image,
    legend,
    overlay,
    preview_grid,
    save_label_png,
)

CLASSES = ClassInfo(("road", "car", "sky"), ((128, 64, 128), (0, 0, 142), (70, 130, 180)))
LABEL = np.array([[0, 1], [2, 255], [7, 1]], dtype=np.uint8)  # 255 = ignore, 7 = unknown id


def test_colorize_tiny_example():
    expected = np.array(
        [
            [[128, 64, 128], [0, 0, 142]],
            [[70, 130, 180], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 142]],
        ],
        dtype=np.uint8,
    )
    result = colorize(LABEL, CLASSES)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)
    # wide integer labels with ids beyond the palette table are black too
    np.testing.assert_array_equal(colorize(np.array([[1, 1000, -3]]), CLASSES), [[[0, 0, 142], [0, 0, 0], [0, 0, 0]]])


def test_overlay_tiny_example():
    image = np.full((3, 2, 3), 100, dtype=np.uint8)
    result = overlay(image, LABEL, CLASSES, alpha=0.5)
    assert result.dtype == np.uint8 and result.shape == (3, 2, 3)
    np.testing.assert_array_equal(result[0, 0], [114, 82, 114])  # (100 + 128) / 2, (100 + 64) / 2, ...
    np.testing.assert_array_equal(result[0, 1], [50, 50, 121])
    np.testing.assert_array_equal(result[1, 0], [85, 115, 140])
    np.testing.assert_array_equal(result[1, 1], [100, 100, 100])  # ignore: photo unchanged
    np.testing.assert_array_equal(result[2, 0], [100, 100, 100])  # unknown id: photo unchanged
    np.testing.assert_array_equal(overlay(image, LABEL, CLASSES, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, LABEL, CLASSES, alpha=1.0)[0, 1], [0, 0, 142])


def test_overlay_rejects_mismatched_image():
    with pytest.raises(ValueError, match="match the label"):
        overlay(np.zeros((2, 2, 3), dtype=np.uint8), LABEL, CLASSES)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((3, 2, 3), dtype=np.uint8), LABEL, CLASSES, alpha=1.5)


def test_palette_png_round_trip(tmp_path):
    generator = np.random.default_rng(0)
    label = generator.integers(0, 3, size=(17, 23)).astype(np.uint8)
    label[0, :5] = 255
    path = tmp_path / "masks" / "label.png"
    save_label_png(path, label, CLASSES)

    with Image.open(path) as image:
        assert image.mode == "P"
        ids = np.asarray(image)
        palette = np.array(image.getpalette(), dtype=np.uint8).reshape(-1, 3)
        rgb = np.asarray(image.convert("RGB"))
    np.testing.assert_array_equal(ids, label)
    np.testing.assert_array_equal(palette[:3], np.array(CLASSES.palette))
    np.testing.assert_array_equal(palette[255], [0, 0, 0])
    np.testing.assert_array_equal(rgb, colorize(label, CLASSES))
    assert [p.name for p in path.parent.iterdir()] == ["label.png"]  # written atomically, no leftovers


def test_palette_image_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="0..255"):
        label_to_palette_image(np.array([[0, 300]]), CLASSES)
    with pytest.raises(ValueError, match="HxW"):
        label_to_palette_image(np.zeros((2, 2, 3), dtype=np.uint8), CLASSES)


def test_legend_has_every_swatch():
    image = legend(CLASSES, swatch_size=12)
    assert image.mode == "RGB"
    pixels = np.asarray(image).reshape(-1, 3)
    for colour in CLASSES.palette:
        # each swatch is 12x12 with a 1-pixel outline: 10x10 pixels of the class colour
        assert np.all(pixels == colour, axis=1).sum() == 100
    one_column = legend(CLASSES)
    wide = legend(CLASSES, width=1000)
    assert wide.width == 1000 and wide.height < one_column.height


def test_preview_grid_size():
    generator = np.random.default_rng(1)
    items = [
        (generator.integers(0, 256, size=(30, 40, 3), dtype=np.uint8), generator.integers(0, 3, size=(30, 40)))
        for _ in range(5)
    ]
    grid = preview_grid(items, CLASSES, columns=2, tile_width=80)
    pad = 4
    grid_width = pad + 2 * (80 + pad)
    grid_height = pad + 3 * (60 + pad)  # 5 tiles in 3 rows, scaled from 40x30 to 80x60
    assert grid.size == (grid_width, grid_height + legend(CLASSES, width=grid_width).height)
    first_tile = np.asarray(grid)[pad : pad + 60, pad : pad + 80]
    expected = np.asarray(Image.fromarray(overlay(*items[0], CLASSES)).resize((80, 60), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(first_tile, expected)
    with pytest.raises(ValueError):
        preview_grid([], CLASSES)
