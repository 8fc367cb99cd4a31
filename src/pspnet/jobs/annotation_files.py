"""Pre-annotations for labelling tools: `pspnet predict --format label-studio | coco | cvat`.

Each image's label map becomes one mask per class present; the files are written once every image is
segmented (atomically, so a tool never imports half a file):

* `label-studio`: `tasks.json`, tasks that Label Studio imports as they are (the image reference and a
  `predictions` entry of `brushlabels` results in its brush RLE, each scored by the mean top-class
  probability of its pixels), and `label_config.xml`, the project's labelling config;
* `coco`: `coco.json`, one stuff-style RLE annotation per class and image (`iscrowd` 0, area, box);
* `cvat`: `cvat.zip`, CVAT's Segmentation mask 1.1 (`labelmap.txt`, colour class masks, and object masks with
  one object per class coloured by the VOC palette), and `cvat_labels.json`, the labels for the task's "Raw"
  label constructor.

`legend.png` and `classes.json` (a `data.classes_file` with the model's classes) are written beside them.
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from ..checkpoint import LoadedModel
from ..classes import ClassInfo, default_palette
from ..data.formats.coco import import_mask_api
from ..data.formats.cvat import LABELMAP
from ..data.formats.label_studio import LOCAL_FILES_PREFIX, LabelConfig, hex_colour, labelling_config
from ..errors import ConfigError
from ..io.brush_rle import encode_mask
from ..io.files import atomic_path, write_json
from ..io.weights import file_sha256

ANNOTATION_FORMATS = ("label-studio", "coco", "cvat")
OUTPUT_FILES = {"label-studio": "tasks.json", "coco": "coco.json", "cvat": "cvat.zip"}


def model_version(loaded: LoadedModel) -> str:
    """The checkpoint's name and the first 12 hex digits of its SHA-256, e.g. `best.safetensors@1a2b3c4d5e6f`."""
    return f"{loaded.path.name}@{file_sha256(loaded.path)[:12]}"


def default_label_config(classes: ClassInfo) -> LabelConfig:
    """The tag names of `labelling_config`: `tag` labels `image`, which reads the task's `image`."""
    return LabelConfig("tag", "image", "image", classes.names, classes.palette)


def brush_results(
    label: np.ndarray, confidence: np.ndarray, classes: ClassInfo, config: LabelConfig
) -> list[dict[str, Any]]:
    """One `brushlabels` result per class present in `label` whose name `config` lists."""
    height, width = label.shape
    results = []
    for class_id in np.unique(label).tolist():
        name = classes.names[class_id]
        if name not in config.names:
            continue
        mask = label == class_id
        results.append(
            {
                "id": f"pspnet-{class_id}",
                "from_name": config.from_name,
                "to_name": config.to_name,
                "type": "brushlabels",
                "origin": "prediction",
                "original_width": width,
                "original_height": height,
                "image_rotation": 0,
                "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [name]},
                "score": round(float(confidence[mask].mean()), 4),
            }
        )
    return results


def label_studio_prediction(
    label: np.ndarray, confidence: np.ndarray, classes: ClassInfo, version: str, config: LabelConfig
) -> dict[str, Any]:
    """A Label Studio prediction: the brush results, the model version and the mean top-class probability."""
    return {
        "model_version": version,
        "score": round(float(confidence.mean()), 4),
        "result": brush_results(label, confidence, classes, config),
    }


def image_reference(path: Path, local_files_root: str | None) -> str:
    """How a task names its image: a local-files URL relative to `local_files_root`, else the path itself."""
    if local_files_root is None:
        return str(path)
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(local_files_root))
    if relative.startswith(".."):
        raise ConfigError(f"{path} is not under the local files root {local_files_root} (--local-files-root)")
    return LOCAL_FILES_PREFIX + quote(Path(relative).as_posix())


def colour_mask_png(label: np.ndarray, palette: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(palette[label]).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class AnnotationWriter:
    """Turns label maps into one tool's entries (`entry`, per image, on any process) and writes them (`write`)."""

    output_format: str
    out_dir: Path
    classes: ClassInfo
    version: str
    local_files_root: str | None = None

    def __post_init__(self) -> None:
        if self.output_format not in ANNOTATION_FORMATS:
            raise ConfigError(
                f"unknown annotation format {self.output_format!r}; choose {', '.join(ANNOTATION_FORMATS)}"
            )
        if self.output_format == "coco":
            import_mask_api()  # before any image is segmented: DataError naming the extra

    @property
    def output(self) -> Path:
        return self.out_dir / OUTPUT_FILES[self.output_format]

    def entry(self, path: Path, name: Path, label: np.ndarray, confidence: np.ndarray) -> dict[str, Any]:
        """What the output keeps of one image: `name` is its output name (see `collect_inputs`)."""
        relative = (name.parent / path.name).as_posix()
        height, width = label.shape
        if self.output_format == "label-studio":
            prediction = label_studio_prediction(
                label, confidence, self.classes, self.version, default_label_config(self.classes)
            )
            return {"data": {"image": image_reference(path, self.local_files_root)}, "predictions": [prediction]}
        if self.output_format == "coco":
            mask_api = import_mask_api()
            annotations = []
            for class_id in np.unique(label).tolist():
                mask = label == class_id
                rle = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(
                    {
                        "category_id": class_id + 1,
                        "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                        "area": int(mask.sum()),
                        "bbox": [float(v) for v in mask_api.toBbox(rle)],
                        "iscrowd": 0,
                        "score": round(float(confidence[mask].mean()), 4),
                    }
                )
            return {"file_name": relative, "width": width, "height": height, "annotations": annotations}
        objects = np.searchsorted(np.unique(label), label).astype(np.uint8) + 1  # one object per class present
        return {
            "name": name.as_posix(),  # unique: without the suffix unless two inputs differ only by it
            "class_png": colour_mask_png(label, self.classes.palette_array()),
            "object_png": colour_mask_png(objects, np.array(default_palette(256), np.uint8)),
        }

    def write(self, entries: list[dict[str, Any]]) -> Path:
        """The output file(s) of every image's entry; returns the main file."""
        if self.output_format == "label-studio":
            write_json(self.output, entries)
            with atomic_path(self.out_dir / "label_config.xml") as tmp:
                tmp.write_text(labelling_config(self.classes), encoding="utf-8")
        elif self.output_format == "coco":
            write_json(self.output, self.coco_document(entries))
        else:
            self.write_cvat(entries)
        return self.output

    def coco_document(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        images, annotations = [], []
        for image_id, entry in enumerate(entries, 1):
            images.append({"id": image_id, **{key: entry[key] for key in ("file_name", "width", "height")}})
            for annotation in entry["annotations"]:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
        categories = [
            {"id": i + 1, "name": name, "supercategory": "", "color": list(colour)}
            for i, (name, colour) in enumerate(zip(self.classes.names, self.classes.palette))
        ]
        info = {"description": f"pspnet pre-annotations by {self.version}"}
        return {"info": info, "images": images, "annotations": annotations, "categories": categories}

    def write_cvat(self, entries: list[dict[str, Any]]) -> None:
        labelmap = "# label:color_rgb:parts:actions\n" + "".join(
            f"{name}:{','.join(map(str, colour))}::\n" for name, colour in zip(self.classes.names, self.classes.palette)
        )
        with atomic_path(self.output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(LABELMAP, labelmap)
            archive.writestr("ImageSets/Segmentation/default.txt", "".join(f"{e['name']}\n" for e in entries))
            for entry in entries:
                archive.writestr(f"SegmentationClass/{entry['name']}.png", entry["class_png"])
                archive.writestr(f"SegmentationObject/{entry['name']}.png", entry["object_png"])
        raw_labels = [
            {"name": name, "color": hex_colour(colour), "type": "mask", "attributes": []}
            for name, colour in zip(self.classes.names, self.classes.palette)
        ]
        write_json(self.out_dir / "cvat_labels.json", raw_labels)
