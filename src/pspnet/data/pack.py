"""`pspnet data pack`: a split of any readable dataset written as WebDataset tar shards plus an index.

Masks are stored decoded (class ids, 255 = ignore), so the shards read the same whatever the
original format. An image file that a format reads as it is keeps its bytes (JPEGs stay JPEGs);
other images (generated, or cut from a larger file) are stored as lossless PNG. Either way the
shards decode to exactly the arrays the original source gives. Every shard, and the index last,
is written atomically; the format is described in `pspnet.data.formats.shards`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import ConfigError, DataError
from ..io.files import atomic_path
from .base import SegmentationSource
from .formats.common import FileSource
from .formats.shards import INDEX_FORMAT, INDEX_VERSION, INFO_MEMBER, MASK_MEMBER, index_name, shard_name

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
BLOCK = tarfile.BLOCKSIZE


def parse_size(text: str) -> int:
    """Bytes of a size such as `1GB`, `500MB`, `64MiB` or `1000000`; ConfigError when it is not one."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in UNITS or float(match.group(1)) * UNITS[unit] < 1:
        raise ConfigError(f"--shard-size: expected a size such as 1GB, 500MB or 64MiB, got '{text}'")
    return int(float(match.group(1)) * UNITS[unit])


@dataclass
class PackResult:
    """What `pack_split` wrote."""

    index: Path
    num_samples: int = 0
    shards: list[Path] = field(default_factory=list)
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    """Messages of the samples left out with `skip_bad`."""


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _members(source: SegmentationSource, index: int) -> tuple[str, list[tuple[str, bytes]]]:
    """The name of sample `index` and its WebDataset members (suffix, bytes): image, mask, JSON."""
    sample = source.load(index)  # decodes and checks it: a bad sample stops here with its file named
    image_suffix, image = "png", None
    if isinstance(source, FileSource) and type(source).read is FileSource.read:  # the file is the image
        path = source.samples[index].image
        image_suffix, image = path.suffix.lower().lstrip("."), path.read_bytes()
    members = [(image_suffix, image if image is not None else _png(sample.image))]
    if sample.mask is not None:
        members.append((MASK_MEMBER, _png(sample.mask)))
    height, width = sample.image.shape[:2]
    info = {"name": sample.name, "index": index, "height": height, "width": width}
    members.append((INFO_MEMBER, json.dumps(info).encode()))
    return sample.name, members


def _padded(size: int) -> int:
    """Bytes that `size` bytes of data take in a tar: whole blocks."""
    return -(-size // BLOCK) * BLOCK


def _tar_bytes(members: list[tuple[str, bytes]]) -> int:
    """Bytes the members take in a tar: a header block each and their data."""
    return sum(BLOCK + _padded(len(data)) for _, data in members)


class _Shard:
    """One tar shard being written: into a temporary file, renamed into place by `close`."""

    def __init__(self, path: Path):
        self.path, self.rows, self.size = path, [], 0
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_path(path))
        self._tar = self._stack.enter_context(tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT))

    def add(self, key: str, name: str, members: list[tuple[str, bytes]]) -> None:
        """Append a sample; its index row records where its bytes and each member's data lie."""
        start, spans = self._tar.offset, {}
        for suffix, data in members:
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self._tar.addfile(info, io.BytesIO(data))
            spans[suffix] = [self._tar.offset - _padded(len(data)) - start, len(data)]
        end = start + max(offset + length for offset, length in spans.values())
        self.size = self._tar.offset
        self.rows.append([key, name, start, end - start, 0, spans])

    def close(self) -> dict:
        """Finish the tar, rename it into place and return its entry of the index (with every sample's CRC-32)."""
        self._stack.close()
        with open(self.path, "rb") as handle:
            for row in self.rows:
                handle.seek(row[2])
                row[4] = zlib.crc32(handle.read(row[3]))
        return {
            "name": self.path.name,
            "bytes": self.path.stat().st_size,
            "num_samples": len(self.rows),
            "samples": self.rows,
        }

    def abort(self, error: BaseException) -> None:
        """Leave no file behind: the temporary one is removed."""
        self._stack.__exit__(type(error), error, error.__traceback__)


def pack_split(
    source: SegmentationSource,
    out: str | Path,
    split: str,
    shard_size: int,
    describe: str = "",
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> PackResult:
    """Write every sample of `source` as shards of about `shard_size` bytes in `out`, then `{split}.index.json`.

    A bad sample stops packing with a DataError naming it, or, with `skip_bad`, is left out and reported in
    the result. An earlier index of the split is removed first: packing that stops leaves finished shards but
    no index that would describe other ones. `progress(1)` after each sample.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = PackResult(out / index_name(split))
    result.index.unlink(missing_ok=True)
    entries: list[dict] = []
    shard: _Shard | None = None
    try:
        for index in range(len(source)):
            try:
                name, members = _members(source, index)
            except DataError as exc:
                if not skip_bad:
                    raise
                result.skipped.append(str(exc))
                continue
            finally:
                if progress is not None:
                    progress(1)
            if shard is not None and shard.rows and shard.size + _tar_bytes(members) > shard_size:
                entries.append(shard.close())
                shard = None
            if shard is None:
                shard = _Shard(out / shard_name(split, len(entries)))
            shard.add(f"{index:09d}", name, members)
        if shard is not None:
            entries.append(shard.close())
    except BaseException as exc:
        if shard is not None:
            shard.abort(exc)
        raise
    index = {
        "format": INDEX_FORMAT,
        "version": INDEX_VERSION,
        "split": split,
        "source": describe,
        "classes": source.classes.to_dict(),
        "num_samples": sum(entry["num_samples"] for entry in entries),
        "shards": entries,
    }
    with atomic_path(result.index) as tmp:  # compact: the index of a large split has a row per sample
        tmp.write_text(json.dumps(index, separators=(",", ":")) + "\n", encoding="utf-8")
    _remove_stale_shards(out, split, len(entries))
    result.num_samples = index["num_samples"]
    result.shards = [out / entry["name"] for entry in entries]
    result.bytes = sum(entry["bytes"] for entry in entries)
    return result


def _remove_stale_shards(out: Path, split: str, count: int) -> None:
    """Shards of an earlier, larger packing of the split, which the new index no longer lists."""
    number = count
    while (out / shard_name(split, number)).is_file():
        (out / shard_name(split, number)).unlink()
        number += 1
