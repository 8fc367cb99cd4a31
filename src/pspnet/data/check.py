"""`pspnet data check`: scan a split for problems before training on it.

Every file is read once. Reported per file: images without a mask, masks without an image,
unreadable files, image/mask size mismatches, label values outside the class set and colour masks
with unknown colours. The report also counts the pixels of every class. Sources without files
(the built-in synthetic data) have each generated sample checked the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..classes import IGNORE_INDEX, ClassInfo
from ..config import DataConfig
from ..errors import DataError
from .base import SegmentationSource
from .formats.common import FileSource, SampleFiles, describe_out_of_range, label_histogram, out_of_range, size_mismatch
from .formats.shards import ShardSource
from .sources import build_source

log = logging.getLogger(__name__)

DEFAULT_MAX_UNMATCHED = 0.01
"""Largest fraction of a colour mask's pixels that may match no class colour before it is reported."""

MAX_LISTED_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One problem found; `message` names the file(s)."""

    kind: str
    """`missing_mask`, `orphan_mask`, `missing_files`, `unreadable`, `bad_mask`, `size_mismatch`,
    `bad_labels`, `unknown_colors` or `empty`."""
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


@dataclass
class CheckReport:
    """What `check_dataset` found in one split."""

    dataset: str
    classes: ClassInfo
    num_images: int = 0
    num_masks: int = 0
    num_checked: int = 0
    """Image/mask pairs read and decoded."""
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    ignore_pixels: int = 0
    unmatched_pixels: int = 0
    """Colour-mask pixels that matched no class colour (counted in `ignore_pixels` too)."""
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        """Human-readable report: counts, the class frequency table and the problems."""
        labelled = int(self.class_pixels.sum())
        total = labelled + self.ignore_pixels
        lines = [
            f"{self.dataset}",
            f"  images: {self.num_images}   masks: {self.num_masks}   pairs checked: {self.num_checked}",
            "",
            f"  {'id':>3}  {'class':<24} {'pixels':>15} {'share':>8}",
        ]
        rows = [(str(i), name, int(n)) for i, (name, n) in enumerate(zip(self.classes.names, self.class_pixels))]
        rows.append((str(IGNORE_INDEX), "(ignore)", self.ignore_pixels))
        for index, name, count in rows:
            share = f"{100 * count / total:7.2f}%" if total else "      -"
            lines.append(f"  {index:>3}  {name[:24]:<24} {count:>15,} {share}")
        absent = [name for name, n in zip(self.classes.names, self.class_pixels) if n == 0]
        if absent and self.num_checked:
            lines.append(f"  classes with no pixels: {', '.join(absent)}")
        if self.unmatched_pixels:
            lines.append(
                f"  colours matching no class: {self.unmatched_pixels:,} pixels ({100 * self.unmatched_pixels / max(total, 1):.2f}%)"
            )
        lines.append("")
        if self.ok:
            lines.append("  OK: no problems found")
        else:
            lines.append(f"  {len(self.problems)} problem(s):")
            lines.extend(f"    {problem}" for problem in self.problems[:MAX_LISTED_PROBLEMS])
            if len(self.problems) > MAX_LISTED_PROBLEMS:
                lines.append(f"    ... and {len(self.problems) - MAX_LISTED_PROBLEMS} more")
        return "\n".join(lines)


def check_dataset(
    source: SegmentationSource,
    max_unmatched: float = DEFAULT_MAX_UNMATCHED,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Scan every sample of `source` (and, for files, every file); `progress(done, total)` after each sample."""
    report = CheckReport(
        dataset=describe_source(source),
        classes=source.classes,
        class_pixels=np.zeros(source.classes.num_classes, dtype=np.int64),
    )
    if isinstance(source, FileSource):
        _check_listing(source, report)
    if isinstance(source, ShardSource):
        report.problems.extend(Problem("missing_files", message) for message in source.shard_problems())
    if not len(source):
        report.problems.append(Problem("empty", "no image/mask pairs found"))
    for index in range(len(source)):
        _check_sample(source, index, report, max_unmatched)
        if progress is not None:
            progress(index + 1, len(source))
    return report


def describe_source(source: SegmentationSource) -> str:
    if isinstance(source, FileSource):
        skipped = getattr(source, "skipped", 0)  # exports of labelling tools: images nobody annotated
        unannotated = f" ({skipped} image(s) without annotation skipped)" if skipped else ""
        return f"{source.format_name} dataset at {source.root}, split '{source.split}'{unannotated}"
    if isinstance(source, ShardSource):
        return f"shards at {source.root}, split '{source.split}' ({len(source.shards)} shards)"
    return f"{type(source).__name__} ({len(source)} generated samples of split '{getattr(source, 'split', '?')}')"


def _check_listing(source: FileSource, report: CheckReport) -> None:
    """Count files and report images without masks and masks without images."""
    for files in source.files():
        report.num_images += files.image is not None
        report.num_masks += files.mask is not None
        if files.image is None and files.mask is None:
            report.problems.append(
                Problem("missing_files", f"sample '{files.name}' is listed but has neither image nor mask")
            )
        elif files.mask is None:
            report.problems.append(Problem("missing_mask", f"image {files.image} has no mask"))
        elif files.image is None:
            report.problems.append(Problem("orphan_mask", f"mask {files.mask} has no image"))


def _decode(source: SegmentationSource, index: int) -> tuple[np.ndarray, np.ndarray, int, SampleFiles] | Problem:
    """Image, class-id mask, count of unmatched colour pixels and files of sample `index`, or the Problem
    that stopped reading it."""
    if not isinstance(source, FileSource):
        try:
            sample = source.load(index)
        except DataError as exc:
            return Problem("unreadable", str(exc))
        return sample.image, sample.mask, 0, SampleFiles(sample.name, None, None)
    files = source.samples[index]
    try:
        image, raw = source.read_pair(files)
    except DataError as exc:
        return Problem("unreadable", str(exc))
    try:
        mask, unmatched = source.decode_mask(raw, files.mask)
    except DataError as exc:
        return Problem("bad_mask", str(exc))
    return image, mask, unmatched, files


def _check_sample(source: SegmentationSource, index: int, report: CheckReport, max_unmatched: float) -> None:
    """Read and decode one sample; add its pixel counts and problems to `report`."""
    num_classes = source.classes.num_classes
    decoded = _decode(source, index)
    if isinstance(decoded, Problem):
        report.problems.append(decoded)
        return
    image, mask, unmatched, files = decoded
    report.num_checked += 1
    if not isinstance(source, FileSource):  # generated samples: one image and one mask each
        report.num_images += 1
        report.num_masks += 1
    mismatch = size_mismatch(image, mask, files)
    if mismatch:
        report.problems.append(Problem("size_mismatch", mismatch))
    histogram = label_histogram(mask)
    report.class_pixels += histogram[:num_classes]
    report.ignore_pixels += int(histogram[IGNORE_INDEX])
    report.unmatched_pixels += unmatched
    bad = out_of_range(histogram, num_classes)
    if bad:
        report.problems.append(Problem("bad_labels", describe_out_of_range(files.mask or files.name, bad, num_classes)))
    if unmatched > max_unmatched * mask.size:
        report.problems.append(
            Problem(
                "unknown_colors",
                f"mask {files.mask}: {100 * unmatched / mask.size:.2f}% of pixels match no class colour",
            )
        )


COLOUR_SAMPLES = 32
"""Masks decoded at the start of training to report how well colour masks match the classes."""


def report_colour_matching(source: SegmentationSource, samples: int = COLOUR_SAMPLES) -> float | None:
    """Log, once, the fraction of colour-mask pixels that match no class in up to `samples` masks spread
    over the split; returns it (None for sources without colour masks)."""
    if not isinstance(source, FileSource) or not hasattr(source, "tolerance") or not len(source):
        return None
    step = max(1, len(source) // samples)
    checked = 0
    for index in range(0, len(source), step)[:samples]:
        try:
            source.load(index)
            checked += 1
        except DataError:
            continue  # bad files are reported where they are read for training
    if not source.colour_pixels:
        return None
    fraction = source.unmatched_fraction
    log.info(
        "%s: %.2f%% of the colour-mask pixels in %d sampled masks match no class colour (they are ignored, "
        "label 255); `pspnet data check` reports every file",
        source.format_name,
        100 * fraction,
        checked,
    )
    return fraction


def run_check(
    data_config: DataConfig,
    split: str | None = None,
    max_unmatched: float = DEFAULT_MAX_UNMATCHED,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check `split` (default: the training split) of the dataset described by `data_config`."""
    source = build_source(data_config, split or data_config.train_split)
    return check_dataset(source, max_unmatched=max_unmatched, progress=progress)
