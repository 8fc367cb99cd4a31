"""COCO: instance, stuff or panoptic annotations (JSON) rasterised to semantic masks (extra `annotate`: pycocotools).

`data.root` is the dataset's folder. `data.options.annotations` names the JSON file (relative to the root),
or maps split names to files (`{train: a.json, val: b.json}`: then those are the splits); default: the one
`.json` file in the root. Images are `file_name`s under `data.options.images` (a folder relative to the root,
or a mapping from splits to folders; default: `root/images` when it exists, else the root). Classes are the categories in the order of their ids, with their `color`
when they have one.

Instance and stuff annotations (polygons, RLE or compressed RLE) are painted per image from the largest
area to the smallest, so where two overlap the smaller one wins; the instances of one category merge into
its class. Panoptic annotations (`segments_info`) read their PNG `file_name` from
`data.options.panoptic_masks` (default: the folder named like the JSON file, beside it); segment id =
R + 256 G + 65536 B. Pixels under no annotation are ignored (255). Images without annotations are skipped
and counted. See `annotations` for classes files and the split of a single file.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ...classes import IGNORE_INDEX
from ...errors import DataError
from ...io.images import read_rgb
from .annotations import AnnotationExport, export_classes, find_export_file, split_samples, unique_names
from .common import SampleFiles


def import_mask_api() -> Any:
    """pycocotools' mask module; DataError naming the extra when it is missing."""
    try:
        from pycocotools import mask
    except ModuleNotFoundError:
        raise DataError("the coco format needs pycocotools: pip install 'pspnet[annotate]'") from None
    return mask


def segmentation_mask(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """The boolean mask of a COCO segmentation (polygons, RLE or compressed RLE) on a `height` x `width` image."""
    mask_api = import_mask_api()
    try:
        if isinstance(segmentation, list):
            rles = mask_api.frPyObjects([list(map(float, polygon)) for polygon in segmentation], height, width)
            rle = mask_api.merge(rles) if rles else None
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            if list(segmentation.get("size", [])) != [height, width]:
                raise DataError(f"{where}: an RLE of size {segmentation.get('size')} on a {width}x{height} image")
            counts = segmentation["counts"]
            rle = (
                mask_api.frPyObjects(segmentation, height, width)
                if isinstance(counts, list)
                else {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
            )
        else:
            raise DataError(f"{where}: a segmentation must be polygons or an RLE, got {type(segmentation).__name__}")
        return np.zeros((height, width), bool) if rle is None else mask_api.decode(rle).astype(bool)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: malformed segmentation: {exc}") from None


class COCO(AnnotationExport):
    """COCO instance, stuff or panoptic JSON; see the module docstring."""

    format_name = "coco"
    layout = "root/ANNOTATIONS.json (COCO instances, stuff or panoptic) with the images under root/images/ or root"
    option_names = (*AnnotationExport.option_names, "annotations", "images", "panoptic_masks")

    def read_export(self) -> None:
        option = self.options.get("annotations")
        if isinstance(option, dict):
            if self.split not in option:
                raise DataError(f"coco: split '{self.split}' not in data.options.annotations ({', '.join(option)})")
            option = option[self.split]
            self.fixed_split = True
        else:
            self.fixed_split = False
        self.export = find_export_file(self.root, option, "annotations", self.format_name)
        try:
            data = json.loads(self.export.read_text(encoding="utf-8"))
            categories = sorted(data["categories"], key=lambda c: c["id"])
            self.category_index = {c["id"]: i for i, c in enumerate(categories)}
            self.images = {image["id"]: image for image in data["images"]}
            annotations = [dict(annotation) for annotation in data["annotations"]]
            names = [str(c["name"]) for c in categories]
            colours = [c.get("color") for c in categories]
        except (
            OSError,
            UnicodeDecodeError,
            json.JSONDecodeError,
            KeyError,
            TypeError,
            ValueError,
            AttributeError,
        ) as exc:
            raise DataError(f"coco: {self.export} is not a COCO annotation file: {type(exc).__name__}: {exc}") from None
        if not categories:
            raise DataError(f"coco: {self.export} has no categories")
        self.export_classes = export_classes(names, colours)
        self.per_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for annotation in annotations:
            if annotation.get("image_id") not in self.images:
                raise DataError(
                    f"coco: {self.export}: annotation {annotation.get('id')} of unknown image {annotation.get('image_id')}"
                )
            self.per_image[annotation["image_id"]].append(annotation)
        self.skipped = len(self.images) - len(self.per_image)
        if not self.per_image:
            raise DataError(f"coco: none of the {len(self.images)} images of {self.export} has an annotation")
        default = self.export.with_suffix("")
        self.panoptic_dir = self.root / str(self.options.get("panoptic_masks", default))

    def scan(self) -> list[SampleFiles]:
        if self.fixed_split:
            return self.annotated()
        return split_samples(self.annotated(), self.split, self.val_fraction, f"coco export {self.export}")

    def annotated(self) -> list[SampleFiles]:
        folder = self.options.get("images")
        if isinstance(folder, dict):
            if self.split not in folder:
                raise DataError(f"coco: split '{self.split}' not in data.options.images ({', '.join(folder)})")
            folder = folder[self.split]
        image_dir = self.root / str(folder) if folder is not None else self.root / "images"
        if folder is None and not image_dir.is_dir():
            image_dir = self.root
        ids = list(self.per_image)
        paths = []
        for image_id in ids:
            path = image_dir / str(self.images[image_id].get("file_name", ""))
            if not path.is_file():
                raise DataError(f"coco: {self.export}: the file of image {image_id} is not there ({path})")
            paths.append(path)
        names = unique_names([Path(path).stem for path in paths], ids)
        self.ids = dict(zip(names, ids))
        return [SampleFiles(name, path, self.export) for name, path in zip(names, paths)]

    def read(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(files.image)
        image_id = self.ids[files.name]
        return image, self.rasterise(image_id, image.shape[:2], f"coco: {self.export}: image {image_id}")

    def category(self, category_id: Any, where: str) -> int:
        if category_id not in self.category_index:
            raise DataError(f"{where}: unknown category {category_id}")
        return self.category_index[category_id]

    def rasterise(self, image_id: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
        height, width = shape
        ids = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        annotations = self.per_image[image_id]
        if any("segments_info" in annotation for annotation in annotations):
            for annotation in annotations:
                panoptic = np.asarray(read_rgb(self.panoptic_dir / str(annotation.get("file_name"))), dtype=np.int64)
                if panoptic.shape[:2] != (height, width):
                    raise DataError(
                        f"{where}: its panoptic PNG is {panoptic.shape[1]}x{panoptic.shape[0]}, the image {width}x{height}"
                    )
                segment = panoptic[..., 0] + 256 * panoptic[..., 1] + 65536 * panoptic[..., 2]
                for info in annotation.get("segments_info", []):
                    ids[segment == info["id"]] = self.category(info.get("category_id"), where)
            return ids
        masks = [
            (
                segmentation_mask(a.get("segmentation"), height, width, f"{where}, annotation {a.get('id')}"),
                self.category(a.get("category_id"), where),
            )
            for a in annotations
        ]
        for mask, class_id in sorted(masks, key=lambda item: -int(item[0].sum())):
            ids[mask] = class_id
        return ids
