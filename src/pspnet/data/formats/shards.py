"""`data.format: shards`: a split packed by `pspnet data pack` into WebDataset tar shards, read where it lies.

Layout: `root/{split}.index.json` and the shards it lists, `root/{split}-000000.tar` ..., in a local
folder or at any URL fsspec opens (`https://`, `s3://` with s3fs, `gs://` with gcsfs). Each shard holds
WebDataset samples: `KEY.png` (or the source's own `.jpg`), `KEY.mask.png` (class ids, 255 = ignore)
and `KEY.json` (name, size). The index records the classes and, for every sample, where its bytes lie
in its shard and their CRC-32, so one sample is one ranged read (an HTTP Range request): nothing is
unpacked, and a process reads only the samples (and so opens only the shards) its share of the batches
needs. Being a map-style source, it keeps the training stream's order and augmentation functions of
(seed, iteration, position in the global batch).
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import numpy as np

from ...classes import ClassInfo
from ...errors import ConfigError, DataError
from ...io.images import read_image, read_label
from ..base import Sample, SegmentationSource

INDEX_FORMAT = "pspnet-shards"
INDEX_VERSION = 1
MASK_MEMBER = "mask.png"
INFO_MEMBER = "json"


def index_name(split: str) -> str:
    """The file name of a split's index."""
    return f"{split}.index.json"


def shard_name(split: str, number: int) -> str:
    """The file name of a split's shard `number` (WebDataset's `train-000000.tar` naming)."""
    return f"{split}-{number:06d}.tar"


def _filesystem(url: str) -> tuple[Any, str]:
    """fsspec's file system for `url` and the path on it; ConfigError when its protocol's package is missing."""
    if url.startswith("pipe:"):
        raise ConfigError(
            f"data.root {url}: shards are read sample by sample (ranged reads), which a pipe cannot do; "
            "give a folder or a URL fsspec opens (https://, s3://, gs://)"
        )
    try:
        import fsspec.core  # the shards extra: only when shards are read
    except ImportError:
        raise ConfigError("reading shards needs fsspec: pip install 'pspnet[shards]'") from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"data.root {url}: {exc} (pip install 'pspnet[shards]' for https://)") from None


def read_bytes(url: str, start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of `url` (from `start` to `end` when given: a ranged read); DataError naming it when it fails."""
    fs, path = _filesystem(url)
    try:
        return fs.cat_file(path, start=start, end=end)
    except FileNotFoundError:
        raise DataError(f"not found: {url}") from None
    except Exception as exc:  # any failure of a file system or a network (fsspec's backends raise their own types)
        raise DataError(f"cannot read {url}: {type(exc).__name__}: {exc}") from None


def file_size(url: str) -> int | None:
    """The size of `url` in bytes; None when it does not exist or cannot be reached."""
    fs, path = _filesystem(url)
    try:
        return fs.size(path)
    except Exception:  # missing, or unreachable: the caller reports the shard
        return None


class ShardSource(SegmentationSource):
    """The samples of one split in tar shards; see the module docstring."""

    format_name = "shards"
    layout = "root/{split}.index.json and the root/{split}-NNNNNN.tar shards it lists (written by `pspnet data pack`)"

    def __init__(self, root: str, split: str):
        self.root, self.split = root.rstrip("/"), split
        self.index_url = f"{self.root}/{index_name(split)}"
        try:
            raw = read_bytes(self.index_url)
        except DataError as exc:
            raise DataError(f"shards: no index of split '{split}': {exc}; expected layout: {self.layout}") from None
        try:
            index = json.loads(raw)
        except ValueError as exc:
            raise DataError(f"shards: {self.index_url} is not JSON: {exc}") from None
        if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
            raise DataError(f"shards: {self.index_url} is not an index written by `pspnet data pack`")
        if index.get("version") != INDEX_VERSION:
            raise DataError(
                f"shards: {self.index_url} has version {index.get('version')}; this pspnet reads {INDEX_VERSION}"
            )
        try:
            self.classes = ClassInfo.from_dict(index["classes"])
            self.shards: list[dict] = index["shards"]
            self.samples = [(number, row) for number, shard in enumerate(self.shards) for row in shard["samples"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"shards: {self.index_url} is incomplete or damaged ({type(exc).__name__}: {exc})"
            ) from None

    def __len__(self) -> int:
        return len(self.samples)

    def name(self, index: int) -> str:
        return self.samples[index][1][1]

    def shard_url(self, number: int) -> str:
        return f"{self.root}/{self.shards[number]['name']}"

    def load(self, index: int) -> Sample:
        number, (key, name, offset, size, crc, members) = self.samples[index]
        url = self.shard_url(number)
        where = f"shard {url}, sample {key} ({name})"
        try:
            data = read_bytes(url, offset, offset + size)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if len(data) != size:
            raise DataError(
                f"{where}: {len(data)} bytes at offset {offset}, expected {size} (a truncated shard, "
                "or a server that ignores HTTP Range requests)"
            )
        if zlib.crc32(data) != crc:
            raise DataError(f"{where}: the bytes do not match their CRC-32 in the index (a corrupt shard)")
        parts = {member: data[start : start + length] for member, (start, length) in members.items()}
        image_member = next(member for member in parts if member not in (MASK_MEMBER, INFO_MEMBER))
        try:
            image = read_image(parts[image_member], 3)
            mask = read_label(parts[MASK_MEMBER]) if MASK_MEMBER in parts else None
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        if mask is not None and (mask.ndim != 2 or mask.shape != image.shape[:2]):
            raise DataError(f"{where}: image is {image.shape[0]}x{image.shape[1]} but mask has shape {mask.shape}")
        return Sample(image, None if mask is None else np.ascontiguousarray(mask, dtype=np.uint8), name)

    def shard_problems(self) -> list[str]:
        """A message for every shard that is missing or whose size differs from the index's."""
        problems = []
        for number, shard in enumerate(self.shards):
            url, size = self.shard_url(number), file_size(self.shard_url(number))
            if size is None:
                problems.append(f"shard {url} is missing or cannot be reached (listed in {self.index_url})")
            elif size != shard["bytes"]:
                problems.append(
                    f"shard {url} has {size} bytes, the index says {shard['bytes']} (truncated or replaced)"
                )
        return problems
