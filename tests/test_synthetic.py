"""The synthetic "context scenes" dataset: determinism, format, and the three context cases."""

from __future__ import annotations

import numpy as np
import pytest

from pspnet.config import SyntheticConfig
from pspnet.data.base import SegmentationSource
from pspnet.data.synthetic import CLASSES, CONTEXT_CASES, PIXEL_NOISE, ContextScenes
from pspnet.errors import DataError

ID = {name: index for index, name in enumerate(CLASSES.names)}
SIZE = 128


@pytest.fixture(scope="module")
def samples():
    """300 training samples at 128x128 (a few hundred milliseconds)."""
    source = ContextScenes("train", 300, (SIZE, SIZE), seed=0)
    return [source.load(i) for i in range(len(source))]


def pixels(samples, name: str) -> list[np.ndarray]:
    """Per sample where class `name` is present: its pixels as an (N, 3) float array."""
    return [s.image[s.mask == ID[name]].astype(np.float64) for s in samples if (s.mask == ID[name]).any()]


def z_scores(first: list[np.ndarray], second: list[np.ndarray], statistic) -> np.ndarray:
    """Per channel: |difference of the average per-sample statistic| / its standard error (Welch)."""
    a = np.array([statistic(p) for p in first])
    b = np.array([statistic(p) for p in second])
    return np.abs(a.mean(0) - b.mean(0)) / np.sqrt(a.var(0) / len(a) + b.var(0) / len(b))


def pixel_mean(p: np.ndarray) -> np.ndarray:
    return p.mean(0)


def pixel_std(p: np.ndarray) -> np.ndarray:
    return p.std(0)


def test_same_arguments_give_identical_samples():
    a = ContextScenes("train", 10, (96, 160), seed=3).load(7)
    b = ContextScenes("train", 10, (96, 160), seed=3).load(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.name == b.name == "train_00007"


@pytest.mark.parametrize("other", [("train", 3, 8), ("val", 3, 7), ("train", 4, 7)], ids=["index", "split", "seed"])
def test_index_split_and_seed_change_the_sample(other):
    split, seed, index = other
    reference = ContextScenes("train", 10, seed=3).load(7)
    changed = ContextScenes(split, 10, seed=seed).load(index)
    assert not np.array_equal(reference.image, changed.image)


def test_non_square_shapes_and_dtypes():
    source = ContextScenes("val", 12, (96, 160))
    assert isinstance(source, SegmentationSource) and len(source) == 12
    for index in range(len(source)):
        sample = source.load(index)
        assert sample.image.shape == (96, 160, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (96, 160) and sample.mask.dtype == np.uint8
        assert sample.name == source.name(index) == f"val_{index:05d}"


def test_out_of_range_index_raises_index_error():
    source = ContextScenes("train", 5)
    for index in (5, -1):
        with pytest.raises(IndexError):
            source.load(index)
        with pytest.raises(IndexError):
            source.name(index)


@pytest.mark.parametrize(
    "kwargs", [{"split": "test"}, {"split": "Train"}, {"image_size": (16, 128)}, {"num_samples": -1}, {"seed": -2}]
)
def test_invalid_arguments_raise_data_error(kwargs):
    arguments = {"split": "train", "num_samples": 4, **kwargs}
    with pytest.raises(DataError):
        ContextScenes(**arguments)


def test_from_config_picks_the_split_size():
    config = SyntheticConfig(image_size=[64, 96], num_train=7, num_val=3, seed=5)
    train, val = ContextScenes.from_config(config, "train"), ContextScenes.from_config(config, "val")
    assert (len(train), len(val)) == (7, 3)
    assert val.load(2).image.shape == (64, 96, 3)
    assert np.array_equal(val.load(2).image, ContextScenes("val", 3, (64, 96), seed=5).load(2).image)


def test_class_metadata_and_context_cases():
    assert CLASSES.num_classes == 11 and len(set(CLASSES.palette)) == CLASSES.num_classes
    assert ContextScenes.classes is CLASSES
    assert set(CONTEXT_CASES) == {"mismatched relationship", "confusing categories", "inconspicuous class"}
    assert all(name in CLASSES.names for names in CONTEXT_CASES.values() for name in names)


def test_every_class_appears_and_masks_hold_only_class_ids(samples):
    seen = np.zeros(CLASSES.num_classes, dtype=bool)
    for sample in samples[:60]:
        assert sample.mask.max() < CLASSES.num_classes  # no ignore pixels either
        seen[np.unique(sample.mask)] = True
    assert seen.all(), [n for n, s in zip(CLASSES.names, seen) if not s]


def test_scene_composition(samples):
    for sample in samples:
        present = {name for name in CLASSES.names if (sample.mask == ID[name]).any()}
        assert not {"boat", "car"} <= present and not {"building", "skyscraper"} <= present
        if "boat" in present:
            assert "water" in present and "road" not in present
        if "car" in present:
            assert "road" in present and "water" not in present
        if "pillow" in present:
            assert "bed" in present


def test_boat_and_car_look_alike_while_water_and_road_differ(samples):
    boats, cars = pixels(samples, "boat"), pixels(samples, "car")
    assert min(len(boats), len(cars)) >= 60
    # statistically indistinguishable: the per-sample colour mean and spread differ by < 4 standard errors
    assert z_scores(boats, cars, pixel_mean).max() < 4
    assert z_scores(boats, cars, pixel_std).max() < 4
    water, road = pixels(samples, "water"), pixels(samples, "road")
    assert z_scores(water, road, pixel_mean).max() > 20
    water_mean, road_mean = np.mean([pixel_mean(p) for p in water], 0), np.mean([pixel_mean(p) for p in road], 0)
    assert water_mean[2] > water_mean[0] + 40  # water is blue, road a neutral grey
    assert np.ptp(road_mean) < 10


def test_building_and_skyscraper_share_texture_but_not_extent(samples):
    buildings, skyscrapers = pixels(samples, "building"), pixels(samples, "skyscraper")
    assert min(len(buildings), len(skyscrapers)) >= 60
    assert z_scores(buildings, skyscrapers, pixel_mean).max() < 4
    assert z_scores(buildings, skyscrapers, pixel_std).max() < 4
    for sample in samples:
        for name, low, high in (("building", 0, 0.4), ("skyscraper", 0.55, 1.0)):
            rows = np.flatnonzero((sample.mask == ID[name]).any(1))
            if rows.size:
                assert low * SIZE <= rows[-1] - rows[0] + 1 <= high * SIZE, (sample.name, name)


def test_pillow_differs_from_its_sheet_by_less_than_the_noise(samples):
    differences, noise = [], []
    for sample in samples:
        pillow = sample.mask == ID["pillow"]
        if not pillow.any():
            continue
        brightness = sample.image.astype(np.float64).mean(2)
        rows, cols = np.nonzero(pillow)
        bed_cols = np.nonzero(sample.mask == ID["bed"])[1]
        # bare sheet right after the pillow, towards the foot of the bed, in the pillow's rows
        strip = (
            slice(cols.max() + 1, cols.max() + 4)
            if bed_cols.mean() > cols.mean()
            else slice(cols.min() - 3, cols.min())
        )
        sheet = brightness[rows.min() : rows.max() + 1, strip][
            (sample.mask == ID["bed"])[rows.min() : rows.max() + 1, strip]
        ]
        assert sheet.size >= 20, sample.name
        differences.append(abs(brightness[pillow].mean() - sheet.mean()))
        noise.append(brightness[pillow].std())
    assert len(differences) >= 50
    differences, noise = np.array(differences), np.array(noise)
    assert differences.mean() < 0.6 * noise.mean()
    assert np.mean(differences < noise) > 0.95  # single samples too, up to the sampling error of the strip
    assert np.mean(noise) > PIXEL_NOISE
