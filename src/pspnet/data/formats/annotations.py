"""What the exports of labelling tools share (Label Studio, COCO, CVAT): classes, remapping and splits.

Classes come from the export (names and colours). With `data.classes_file` they are matched by name to the
file's classes instead, so that an export trains a model with the classes (and ids) of the file, e.g. the
`classes.json` that `pspnet predict` writes beside its pre-annotations; an export class that the file does
not list is an error. `data.options.class_map` renames export classes first (`{old: new}`; `new` may be
`ignore`, label 255).

An export has no splits of its own: `all` is every annotated image, `val` the first ceil(f x N) of the N
annotated images ordered by the SHA-1 of their names (f = `data.options.val_fraction`, default 0.1), `train`
the others. The split is the same on every machine and keeps each image on its side when images are added.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...classes import IGNORE_INDEX, ClassInfo, default_palette
from ...errors import ConfigError, DataError
from ..palettes import load_classes_file
from .common import FileSource, SampleFiles

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "all")
DEFAULT_VAL_FRACTION = 0.1
IGNORE_NAME = "ignore"
"""The `class_map` target that makes a class's pixels ignored (255)."""


def split_samples(samples: Sequence[SampleFiles], split: str, val_fraction: float, where: str) -> list[SampleFiles]:
    """The samples of `split` (train, val or all) by the deterministic rule of the module docstring."""
    if split not in SPLITS:
        raise DataError(f"{where}: unknown split '{split}'; an export has the splits {', '.join(SPLITS)}")
    if split == "all":
        return list(samples)
    ordered = sorted(samples, key=lambda files: hashlib.sha1(files.name.encode()).hexdigest())
    count = math.ceil(val_fraction * len(ordered))
    chosen = {files.name for files in (ordered[:count] if split == "val" else ordered[count:])}
    return [files for files in samples if files.name in chosen]


def unique_names(stems: Sequence[str], ids: Sequence[object]) -> list[str]:
    """`stems`, each suffixed with `-ID` where two are the same."""
    seen = Counter(stems)
    return [stem if seen[stem] == 1 else f"{stem}-{id_}" for stem, id_ in zip(stems, ids)]


class AnnotationExport(FileSource):
    """Base of the export formats: subclasses parse the export in `read_export` (setting `export_classes`) and
    list its annotated images in `annotated`; their masks hold export class ids that `lookup` maps."""

    option_names = ("val_fraction", "class_map")
    export_classes: ClassInfo
    masks_are_files = False
    """Whether each sample's mask is an image file of its own (else it is drawn from the export file)."""

    def setup(self, classes_file: str | Path | None) -> None:
        fraction = self.options.get("val_fraction", DEFAULT_VAL_FRACTION)
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
            raise DataError(
                f"{self.format_name}: data.options.val_fraction must be a number in [0, 1), got {fraction!r}"
            )
        self.val_fraction = float(fraction)
        self.skipped = 0
        """Images (tasks) of the export without an annotation."""
        self.read_export()
        if self.skipped:
            log.info("%s: %d image(s) of %s without annotation skipped", self.format_name, self.skipped, self.root)
        self.classes, self.lookup = self.resolve_classes(classes_file)

    def read_export(self) -> None:
        """Parse the export: set `export_classes`, and `skipped`."""
        raise NotImplementedError

    def annotated(self) -> list[SampleFiles]:
        """Every annotated image of the export, in the export's order."""
        raise NotImplementedError

    def scan(self) -> list[SampleFiles]:
        return split_samples(self.annotated(), self.split, self.val_fraction, f"{self.format_name} export {self.root}")

    def read_pair(self, files: SampleFiles) -> tuple[np.ndarray, np.ndarray]:
        return super().read_pair(files) if self.masks_are_files else self.read(files)

    def decode_mask(self, raw: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
        """Export class ids (as `read` returns them) mapped to the dataset's."""
        return self.lookup[raw], 0

    def resolve_classes(self, classes_file: str | Path | None) -> tuple[ClassInfo, np.ndarray]:
        """The dataset's classes and the table (256 values) from export class ids to their ids."""
        class_map = self.options.get("class_map") or {}
        if not isinstance(class_map, dict) or not all(isinstance(v, str) for v in class_map.values()):
            raise DataError(f"{self.format_name}: data.options.class_map must map export class names to names")
        unknown = sorted(set(class_map) - set(self.export_classes.names))
        if unknown:
            raise DataError(
                f"{self.format_name}: data.options.class_map names {unknown}, not classes of the export "
                f"({', '.join(self.export_classes.names)})"
            )
        targets = [class_map.get(name, name) for name in self.export_classes.names]
        if classes_file is not None:
            classes, _ = load_classes_file(classes_file)
            missing = [
                f"'{name}'" + (f" (mapped to '{target}')" if target != name else "")
                for name, target in zip(self.export_classes.names, targets)
                if target != IGNORE_NAME and target not in classes.names
            ]
            if missing:
                raise DataError(
                    f"{self.format_name}: class {', '.join(missing)} of the export is not in the classes file "
                    f"{classes_file} ({', '.join(classes.names)}); add it there, or rename it with data.options.class_map"
                )
        else:
            kept = list(dict.fromkeys(target for target in targets if target != IGNORE_NAME))
            if not kept:
                raise DataError(f"{self.format_name}: the export {self.root} has no classes")
            colours = dict(zip(reversed(targets), reversed(self.export_classes.palette)))
            classes = ClassInfo(tuple(kept), tuple(colours[name] for name in kept))
        lookup = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, target in enumerate(targets):
            if target != IGNORE_NAME:
                lookup[index] = classes.names.index(target)
        return classes, lookup


def export_classes(names: Sequence[str], colours: Sequence[Sequence[int] | None]) -> ClassInfo:
    """ClassInfo of an export's classes; a class without a colour gets one of the default palette."""
    fallback = default_palette(len(names))
    try:
        return ClassInfo(
            tuple(names),
            tuple(tuple(int(v) for v in colour) if colour else fallback[i] for i, colour in enumerate(colours)),
        )
    except (TypeError, ValueError) as exc:
        raise DataError(f"the classes of the export: {exc}") from None


def find_export_file(root: Path, option: object, option_name: str, format_name: str) -> Path:
    """The export file: `option` (relative to root, or absolute) when set, else the one `.json` file in root."""
    if option is not None:
        if not isinstance(option, str):
            raise DataError(f"{format_name}: data.options.{option_name} must be a file name, got {option!r}")
        path = root / option
        if not path.is_file():
            raise DataError(f"{format_name}: export file not found: {path}")
        return path
    found = sorted(root.glob("*.json"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise DataError(
            f"{format_name}: {what} .json files in {root}; put the export there alone or name it with "
            f"data.options.{option_name}"
        )
    return found[0]


def check_fine_tuning_classes(source: object, model_classes: ClassInfo, checkpoint: str) -> None:
    """ConfigError when an export's classes are not the classes, in order, of the checkpoint fine-tuned from."""
    if not isinstance(source, AnnotationExport) or source.classes.names == model_classes.names:
        return
    unknown = [name for name in source.classes.names if name not in model_classes.names]
    problem = f"classes {unknown} of the export are unknown to it" if unknown else "the export orders them differently"
    raise ConfigError(
        f"train.init_from {checkpoint} predicts {', '.join(model_classes.names)}; {problem}. Set data.classes_file to "
        "the model's classes (the classes.json that pspnet predict writes) and rename export classes with "
        "data.options.class_map"
    )
