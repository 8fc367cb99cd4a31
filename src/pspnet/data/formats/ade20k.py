"""ADE20K as released for the MIT SceneParsing benchmark (ADEChallengeData2016, 150 classes).

Annotation value 0 is "other" (ignored); values 1..150 are the classes, shifted to ids 0..149.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...classes import IGNORE_INDEX, ClassInfo, default_palette
from ...io.files import list_images
from .common import FileSource, SampleFiles, index_files, index_mask, match_files

ADE20K_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway",
    "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel",
    "bus", "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
"""The 150 SceneParsing classes (first name of each row of objectInfo150), in annotation order 1..150."""

ADE20K_CLASSES = ClassInfo(ADE20K_NAMES, tuple(default_palette(len(ADE20K_NAMES))))

SPLIT_FOLDERS = {"train": "training", "val": "validation"}
FOLDER_NAME = "ADEChallengeData2016"

# Annotation value v in 1..150 -> class id v - 1; 0 ("other") -> 255. Values above 150 keep their
# value, so that the label check reports them as stored.
_SHIFT = np.arange(256, dtype=np.uint8)
_SHIFT[0] = IGNORE_INDEX
_SHIFT[1 : len(ADE20K_NAMES) + 1] = np.arange(len(ADE20K_NAMES))


class ADE20K(FileSource):
    """`ADEChallengeData2016/images/{training,validation}/*.jpg` with `annotations/.../*.png`.

    `root` may be the ADEChallengeData2016 folder or the folder that contains it; split `train`
    and `val` name the `training` and `validation` folders.
    """

    format_name = "ade20k"
    layout = f"root/[{FOLDER_NAME}/]images/<training|validation>/*.jpg and root/[{FOLDER_NAME}/]annotations/<training|validation>/*.png"

    def setup(self, classes_file: str | Path | None) -> None:
        self.reject_classes_file(classes_file)
        self.classes = ADE20K_CLASSES

    def scan(self) -> list[SampleFiles]:
        base = self.root / FOLDER_NAME if (self.root / FOLDER_NAME).is_dir() else self.root
        folder = SPLIT_FOLDERS.get(self.split, self.split)
        images = index_files(list_images(self.require_dir(base / "images" / folder)), lambda p: p.stem)
        masks = index_files(sorted(self.require_dir(base / "annotations" / folder).glob("*.png")), lambda p: p.stem)
        return match_files(images, masks)

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        return _SHIFT[index_mask(raw, path)], 0
