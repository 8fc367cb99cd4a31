"""Label Studio: a JSON export of an image segmentation project, with the images its tasks reference.

`data.root` is the export's folder; `data.options.export` names the JSON file (default: the one `.json`
file in the root). Each task's image (`data.image`, or the key the labelling config's `<Image>` reads) is
resolved in this order: a local-files URL (`/data/local-files/?d=PATH`) as PATH under
`data.options.local_files_root` (default: the root); an upload (`/data/upload/...`) and any other relative
reference under the root (`/data/` removed); an absolute path as it is. A missing image is an error naming
the task. URLs (`http://...`) are not fetched.

Per task the newest annotation (by `updated_at`, then `created_at`, then id) that was not cancelled is
used; tasks with none are skipped and counted. `brushlabels` results are decoded from Label Studio's brush
RLE (`pspnet.io.brush_rle`), `polygonlabels` rasterised (a pixel is inside when its centre is; points are
percentages of the image's size); later results are drawn over earlier ones, and
pixels under no result are ignored (255). Classes come from `data.options.label_config` (a labelling
config XML file, relative to the root: its `<Label>` values and `background` colours, in order) or else
from the labels the annotations use, sorted by name; see `annotations` for classes files and splits.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
from PIL import Image, ImageDraw

from ...classes import IGNORE_INDEX, ClassInfo
from ...errors import DataError
from ...io import brush_rle
from ...io.images import read_rgb
from .annotations import AnnotationExport, export_classes, find_export_file, unique_names
from .common import SampleFiles

LOCAL_FILES_PREFIX = "/data/local-files/?d="
MASK_TYPES = ("brushlabels", "polygonlabels")


@dataclass(frozen=True)
class LabelConfig:
    """What pspnet needs of a labelling config: the `<BrushLabels>` tag, its image and its labels."""

    from_name: str
    to_name: str
    image_key: str
    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int] | None, ...]


def hex_colour(colour: tuple[int, int, int] | list[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def parse_colour(text: str | None) -> tuple[int, int, int] | None:
    """`#rrggbb` as RGB; None for anything else (Label Studio also accepts colour names)."""
    if text and len(text) == 7 and text[0] == "#":
        try:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        except ValueError:
            return None
    return None


def labelling_config(classes: ClassInfo, from_name: str = "tag", to_name: str = "image") -> str:
    """A labelling config for brush segmentation with the classes' names and colours."""
    root = ElementTree.Element("View")
    ElementTree.SubElement(root, "Image", name=to_name, value=f"${to_name}", zoom="true")
    brush = ElementTree.SubElement(root, "BrushLabels", name=from_name, toName=to_name)
    for name, colour in zip(classes.names, classes.palette):
        ElementTree.SubElement(brush, "Label", value=name, background=hex_colour(colour))
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="unicode") + "\n"


def parse_labelling_config(text: str, where: str) -> LabelConfig:
    """The first `<BrushLabels>` (else `<PolygonLabels>`) of a labelling config and the `<Image>` it labels."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise DataError(f"{where}: not a valid labelling config (XML): {exc}") from None
    tags = [tag for kind in ("BrushLabels", "PolygonLabels") for tag in root.iter(kind)]
    if not tags:
        raise DataError(f"{where}: the labelling config has no <BrushLabels> (or <PolygonLabels>) tag")
    tag = tags[0]
    to_name = tag.get("toName", "")
    image = next((image for image in root.iter("Image") if image.get("name") == to_name), None)
    if image is None or not image.get("value", "").startswith("$"):
        raise DataError(f'{where}: the labelling config has no <Image name="{to_name}" value="$KEY"/> for {tag.tag}')
    labels = [label for label in tag.iter("Label") if label.get("value")]
    return LabelConfig(
        from_name=tag.get("name", ""),
        to_name=to_name,
        image_key=image.get("value", "")[1:],
        names=tuple(label.get("value", "") for label in labels),
        colours=tuple(parse_colour(label.get("background")) for label in labels),
    )


def local_file(reference: str) -> str | None:
    """The path in a local-files URL (`/data/local-files/?d=PATH`), else None."""
    parsed = urlparse(reference)
    if not parsed.path.rstrip("/").endswith("/data/local-files"):
        return None
    found = parse_qs(parsed.query).get("d")
    return found[0] if found else None


def annotation_of(task: dict[str, Any]) -> dict[str, Any] | None:
    """The newest annotation of `task` that was not cancelled, or None."""
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not kept:
        return None
    return max(kept, key=lambda a: (str(a.get("updated_at") or ""), str(a.get("created_at") or ""), a.get("id") or 0))


def mask_results(annotation: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The brush and polygon results of an annotation; DataError for other labelling types."""
    results = []
    for result in annotation.get("result") or []:
        kind = str(result.get("type", "")).lower()
        if kind in MASK_TYPES:
            results.append(result)
        elif kind.endswith("labels"):
            raise DataError(f"{where}: a '{kind}' result; segmentation reads {' and '.join(MASK_TYPES)} only")
    return results


def result_label(result: dict[str, Any], where: str) -> str:
    kind = str(result.get("type")).lower()
    labels = (result.get("value") or {}).get(kind)
    if not isinstance(labels, list) or len(labels) != 1 or not isinstance(labels[0], str):
        raise DataError(f"{where}: a {kind} result needs exactly one label in value.{kind}, got {labels!r}")
    return labels[0]


class LabelStudio(AnnotationExport):
    """A Label Studio JSON export; see the module docstring."""

    format_name = "label-studio"
    layout = "root/EXPORT.json (a Label Studio JSON export) with the images its tasks reference"
    option_names = (*AnnotationExport.option_names, "export", "label_config", "local_files_root")

    def read_export(self) -> None:
        self.export = find_export_file(self.root, self.options.get("export"), "export", self.format_name)
        try:
            tasks = json.loads(self.export.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"label-studio: cannot read the export {self.export}: {exc}") from None
        if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
            raise DataError(f"label-studio: {self.export} is not a Label Studio JSON export (a list of tasks)")
        if not tasks:
            raise DataError(f"label-studio: the export {self.export} holds no tasks")
        config_file = self.options.get("label_config")
        config = None
        if config_file is not None:
            path = self.root / str(config_file)
            try:
                config = parse_labelling_config(path.read_text(encoding="utf-8"), str(path))
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"label-studio: cannot read data.options.label_config {path}: {exc}") from None
        self.tasks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        for number, task in enumerate(tasks):
            where = self.where(task, number)
            annotation = annotation_of(task)
            if annotation is None:
                self.skipped += 1
                continue
            self.tasks.append((task, mask_results(annotation, where)))
        if not self.tasks:
            raise DataError(f"label-studio: none of the {len(tasks)} tasks of {self.export} has an annotation")
        used = sorted({result_label(r, self.where(t, 0)) for t, results in self.tasks for r in results})
        if config is not None:
            unknown = [name for name in used if name not in config.names]
            if unknown:
                raise DataError(
                    f"label-studio: labels {unknown} of {self.export} are not in the labelling config "
                    f"{config_file} ({', '.join(config.names)})"
                )
            self.export_classes = export_classes(config.names, config.colours)
            self.image_key = config.image_key
        else:
            if not used:
                raise DataError(f"label-studio: the annotations of {self.export} hold no brush or polygon labels")
            self.export_classes = export_classes(used, [None] * len(used))
            self.image_key = None

    def where(self, task: dict[str, Any], number: int) -> str:
        return f"{self.export}: task {task.get('id', f'#{number + 1}')}"

    def image_path(self, task: dict[str, Any], where: str) -> Path:
        """The image file of a task; DataError naming the task when it is not there."""
        data = task.get("data") or {}
        key = self.image_key or ("image" if "image" in data else next(iter(data), None) if len(data) == 1 else None)
        reference = data.get(key) if key else None
        if not isinstance(reference, str) or not reference:
            raise DataError(f"{where}: no image reference in its data (keys: {', '.join(data) or 'none'})")
        if "://" in reference:
            raise DataError(f"{where}: image {reference} is a URL; pspnet reads local files only (download them)")
        local = local_file(reference)
        if local is not None:
            path = Path(self.options.get("local_files_root") or self.root) / local
        elif Path(reference).is_absolute() and Path(reference).is_file():
            path = Path(reference)
        else:
            path = self.root / reference.lstrip("/").removeprefix("data/")
        if not path.is_file():
            raise DataError(f"{where}: its image {reference} is not there (looked for {path})")
        return path

    def annotated(self) -> list[SampleFiles]:
        paths = [self.image_path(task, self.where(task, n)) for n, (task, _) in enumerate(self.tasks)]
        names = unique_names(
            [path.stem for path in paths], [task.get("id", n) for n, (task, _) in enumerate(self.tasks)]
        )
        self.results = {name: (task, results) for name, (task, results) in zip(names, self.tasks)}
        return [SampleFiles(name, path, self.export) for name, path in zip(names, paths)]

    def read(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        image = read_rgb(files.image)
        task, results = self.results[files.name]
        return image, self.rasterise(results, image.shape[:2], self.where(task, 0))

    def rasterise(self, results: list[dict[str, Any]], shape: tuple[int, ...], where: str) -> np.ndarray:
        """The export class ids of an annotation's results on an image of `shape` (255 where none is drawn)."""
        height, width = shape
        ids = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        for result in results:
            size = (result.get("original_width", width), result.get("original_height", height))
            if size != (width, height):
                raise DataError(
                    f"{where}: a result drawn on a {size[0]}x{size[1]} image, but the image is {width}x{height}"
                )
            class_id = self.export_classes.names.index(result_label(result, where))
            value = result.get("value") or {}
            if str(result.get("type")).lower() == "brushlabels":
                if value.get("format", "rle") != "rle" or "rle" not in value:
                    raise DataError(f"{where}: a brushlabels result without value.rle (format 'rle')")
                ids[brush_rle.decode_mask(value["rle"], width, height, where)] = class_id
            else:
                points = value.get("points")
                if not isinstance(points, list) or len(points) < 3:
                    raise DataError(f"{where}: a polygon needs at least 3 points in value.points, got {points!r}")
                canvas = Image.new("L", (width, height), 0)
                try:
                    corners = [(float(x) * width / 100 - 0.5, float(y) * height / 100 - 0.5) for x, y in points]
                except (TypeError, ValueError):
                    raise DataError(f"{where}: polygon points must be [x, y] percentages, got {points!r}") from None
                ImageDraw.Draw(canvas).polygon(corners, fill=1)
                ids[np.asarray(canvas, dtype=bool)] = class_id
        return ids
