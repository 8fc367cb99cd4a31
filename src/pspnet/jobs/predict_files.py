"""Prediction on image and video files: label PNGs, colour renderings, overlays, confidence maps and
overlay videos with a legend and a classes file, Cityscapes submissions, or pre-annotations for labelling
tools (`annotation_files`)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoint import LoadedModel
from ..classes import IGNORE_INDEX, ClassInfo
from ..data.formats.cityscapes import cityscapes_classes, train_id_to_label_id
from ..errors import ConfigError, DataError
from ..inference.predict import predict_array, predict_probabilities
from ..io.files import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    atomic_path,
    list_files,
    remove_stale_temp_files,
    save_image,
    write_json,
)
from ..io.images import read_image
from ..system.distributed import Distributed, check_all, gather, shard
from ..system.progress import progress_bar
from ..visualize import colorize, displayable, legend, overlay, save_label_png
from .annotation_files import ANNOTATION_FORMATS, OUTPUT_FILES, AnnotationWriter, model_version
from .video import VideoOptions, VideoReader, import_av, overlay_video

OUTPUT_FORMATS = ("pspnet", "cityscapes", *ANNOTATION_FORMATS)
PROBABILITY_OUTPUTS = ("confidence", "full")
CITYSCAPES_IMAGE_SUFFIX = "_leftImg8bit"


@dataclass(frozen=True)
class OutputOptions:
    """What the pspnet output format writes besides labels/, color/ and overlay/.

    `probabilities`: "confidence" adds `confidence/NAME.png` (the top class's softmax probability x 255,
    8-bit grey), "full" also `probabilities/NAME.npy` (K x H x W float16). `overlay_alpha` is the weight
    of the class colours in overlays (images and videos); `video` says how overlay videos are encoded;
    `local_files_root` makes label-studio tasks reference images by local-files URLs relative to it.
    """

    probabilities: str | None = None
    overlay_alpha: float = 0.5
    video: VideoOptions = VideoOptions()
    local_files_root: str | None = None

    def __post_init__(self) -> None:
        if self.probabilities not in (None, *PROBABILITY_OUTPUTS):
            raise ConfigError(
                f"unknown probability output {self.probabilities!r}; choose {' or '.join(PROBABILITY_OUTPUTS)}"
            )
        if not 0 <= self.overlay_alpha <= 1:
            raise ConfigError(f"the overlay alpha must be in [0, 1], got {self.overlay_alpha}")


@dataclass
class PredictionReport:
    written: list[Path] = field(default_factory=list)
    """The label file (or Cityscapes file) of each image segmented."""
    skipped: list[Path] = field(default_factory=list)
    """Inputs whose outputs were all there already (`skip_existing`)."""
    failed: list[tuple[Path, str]] = field(default_factory=list)
    """(input, message naming it) for inputs that could not be segmented."""


def collect_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """(file, output name) for files and folders (searched recursively for images and videos).

    An output name is the file's path relative to the folder that all inputs share (a folder input
    counts as its own root, a file as its parent's), so `a/x.png b/x.png` give `a/x` and `b/x`; files
    whose names differ only by suffix (`x.png`, `x.jpg`) keep it (`x.png`, `x.jpg`). No two outputs
    collide. A file listed twice is segmented once; a missing one is kept (it fails when read).
    """
    found: dict[Path, Path] = {}  # absolute file -> its input's root
    for item in map(Path, inputs):
        if item.is_dir():
            found.update(
                (Path(os.path.abspath(path)), Path(os.path.abspath(item)))
                for path in list_files(item, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
            )
        else:  # a missing file fails on its own when it is read, and the other inputs are still processed
            found.setdefault(Path(os.path.abspath(item)), Path(os.path.abspath(item.parent)))
    if not found:
        return []
    base = Path(os.path.commonpath([str(root) for root in found.values()]))
    relative = {path: path.relative_to(base) for path in found}
    stems = Counter(name.with_suffix("") for name in relative.values())
    return [
        (path, name.with_suffix("") if stems[name.with_suffix("")] == 1 else name) for path, name in relative.items()
    ]


def cityscapes_prediction_name(stem: Path) -> Path:
    """`city/X_labelIds.png` for the input `city/X_leftImg8bit.png` (`X` = city_sequence_frame).

    The official evaluator finds the prediction of `X_gtFine_labelIds.png` as the one file named
    `X*.png` anywhere under its results folder.
    """
    name = stem.name
    for suffix in IMAGE_EXTENSIONS:
        name = name.removesuffix(suffix)
    return stem.with_name(name.removesuffix(CITYSCAPES_IMAGE_SUFFIX) + "_labelIds.png")


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def output_files(out_dir: Path, stem: Path, output_format: str, probabilities: str | None = None) -> list[Path]:
    """Every file `predict_files` writes for the image named `stem`; the first is the label file, written last."""
    if output_format == "cityscapes":
        return [out_dir / cityscapes_prediction_name(stem)]
    if output_format in ANNOTATION_FORMATS:
        return [out_dir / OUTPUT_FILES[output_format]]
    files = [out_dir / "labels" / f"{stem}.png", out_dir / "color" / f"{stem}.png", out_dir / "overlay" / f"{stem}.jpg"]
    if probabilities:
        files.append(out_dir / "confidence" / f"{stem}.png")
    if probabilities == "full":
        files.append(out_dir / "probabilities" / f"{stem}.npy")
    return files


def video_output(out_dir: Path, stem: Path) -> Path:
    """The overlay video `predict_files` writes for the video named `stem` (renamed into place when complete)."""
    return out_dir / f"{stem}.overlay.mp4"


def write_key(out_dir: Path, classes: ClassInfo) -> None:
    """`legend.png` (class ids, colours and names) and `classes.json` (a `data.classes_file`: names, palette
    and the ignore value) beside the outputs."""
    save_image(out_dir / "legend.png", legend(classes, ids=True))
    write_json(out_dir / "classes.json", {**classes.to_dict(), "ignore": IGNORE_INDEX})


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _write_pspnet(
    files: list[Path],
    image: np.ndarray,
    label: np.ndarray,
    probabilities: np.ndarray | None,
    classes: ClassInfo,
    options: OutputOptions,
) -> None:
    """Colour and overlay renderings, the confidence map and probabilities when asked, then the palette PNG of
    class ids (written last: its presence marks a complete output)."""
    label_path, color_path, overlay_path, *probability_paths = files
    save_image(color_path, Image.fromarray(colorize(label, classes)))
    save_image(
        overlay_path, Image.fromarray(overlay(displayable(image), label, classes, options.overlay_alpha)), quality=90
    )
    if probabilities is not None:
        save_image(probability_paths[0], Image.fromarray(np.rint(probabilities.max(0) * 255).astype(np.uint8)))
    if options.probabilities == "full":
        _save_npy(probability_paths[1], probabilities.astype(np.float16))
    save_label_png(label_path, label, classes)


def _check_cityscapes_model(model: torch.nn.Module) -> None:
    """ConfigError unless `model` predicts the 19 Cityscapes train ids (DataError without cityscapesscripts)."""
    if model.card.num_classes != cityscapes_classes().num_classes:
        raise ConfigError(
            f"the cityscapes output format needs a model of the {cityscapes_classes().num_classes} "
            f"Cityscapes train classes; this one predicts {model.card.num_classes}"
        )


def predict_files(
    loaded: LoadedModel,
    inputs: list[str | Path],
    out_dir: str | Path,
    progress: bool = True,
    output_format: str = "pspnet",
    skip_existing: bool = False,
    options: OutputOptions = OutputOptions(),
    distributed: Distributed | None = None,
) -> PredictionReport:
    """Segment every input image and video with `loaded` under its protocol (`loaded.config.eval`) and write
    the results in `output_format`:

    * `pspnet`: for an image `labels/` (palette PNG, value = class id), `color/`, `overlay/` and what
      `options` add (`confidence/`, `probabilities/`); for a video `NAME.overlay.mp4` (and, with
      `options.video.labels`, `NAME.labels/NNNNNN.png`); `legend.png` and `classes.json` once anything
      is written;
    * `cityscapes`: `<name>_labelIds.png` per image (see `cityscapes_prediction_name`), for the
      official evaluator or a benchmark submission; needs a model of the 19 Cityscapes train classes;
    * `label-studio`, `coco`, `cvat`: one file of pre-annotations for every image (`annotation_files`),
      written when all are segmented.

    Output names follow `collect_inputs`. Inputs that cannot be read (or are larger than the
    settings' pixel cap) are recorded in the report; the others are still processed. With
    `skip_existing`, inputs whose outputs are all there are skipped (an interrupted image is redone).
    With several processes, each segments its share of the inputs (each input once) and every
    process returns the report of the whole job.
    """
    distributed = distributed or Distributed()
    model, settings = loaded.model, loaded.config.eval
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown output format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    files = collect_inputs(inputs)
    videos = [path for path, _ in files if is_video(path)]
    if output_format == "cityscapes":
        _check_cityscapes_model(model)
    if output_format != "pspnet" and (videos or options.probabilities):
        what = f"{videos[0]} is a video" if videos else "probabilities were asked for"
        raise ConfigError(f"the {output_format} output format holds label files of images only; {what}")
    writer = None
    if output_format in ANNOTATION_FORMATS:
        if skip_existing:
            raise ConfigError(f"the {output_format} output format writes one file for all images; drop --skip-existing")
        writer = AnnotationWriter(
            output_format, Path(out_dir), model.card.classes, model_version(loaded), options.local_files_root
        )
    entries = []
    if videos:
        import_av()
    out_dir = Path(out_dir)
    if distributed.is_main:  # before any process writes (check_all is the barrier)
        remove_stale_temp_files(out_dir)
    check_all(distributed, None)
    report = PredictionReport()
    key_written = output_format == "cityscapes"  # a benchmark submission holds the label files only

    def write_key_once() -> None:
        nonlocal key_written
        if not key_written:
            write_key(out_dir, model.card.classes)
            key_written = True

    progress = progress and distributed.is_main
    share = shard(files, distributed)
    with progress_bar(len(share), "predict", progress) as bar:
        for path, stem in share:
            outputs = (
                [video_output(out_dir, stem)]
                if is_video(path)
                else output_files(out_dir, stem, output_format, options.probabilities)
            )
            if skip_existing and all(output.is_file() for output in outputs):
                report.skipped.append(path)
                bar.update()
                continue
            try:
                if is_video(path):
                    with VideoReader(path, settings.pixel_cap()) as reader:
                        write_key_once()
                        labels_dir = out_dir / f"{stem}.labels" if options.video.labels else None
                        overlay_video(
                            model,
                            reader,
                            outputs[0],
                            settings,
                            options.overlay_alpha,
                            options.video.crf,
                            labels_dir,
                            progress,
                        )
                else:
                    image = read_image(path, model.card.in_channels, max_pixels=settings.pixel_cap(), exif=True)
                    wanted = options.probabilities or writer is not None
                    probabilities = predict_probabilities(model, image, settings) if wanted else None
                    label = (
                        predict_array(model, image, settings)
                        if probabilities is None
                        else probabilities.argmax(0).astype(np.uint8)
                    )
                    write_key_once()
                    if writer is not None:
                        entries.append((str(stem), writer.entry(path, stem, label, probabilities.max(0))))
                    elif output_format == "cityscapes":
                        save_image(outputs[0], Image.fromarray(train_id_to_label_id()[label]))
                    else:
                        _write_pspnet(outputs, image, label, probabilities, model.card.classes, options)
            except DataError as exc:
                report.failed.append((path, str(exc)))
            else:
                report.written.append(outputs[0])
            bar.update()
    if writer is not None:
        everything = sorted(item for part in gather(distributed, entries) for item in part)
        if distributed.is_main and everything:
            writer.write([entry for _, entry in everything])
    parts = gather(distributed, report)
    return PredictionReport(
        *(sum((getattr(part, name) for part in parts), []) for name in ("written", "skipped", "failed"))
    )
