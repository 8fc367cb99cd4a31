"""Label Studio's brush RLE: the run-length code its `BrushLabels` results store masks in.

The code packs the flattened RGBA image of a mask (H x W x 4 bytes, row by row) into a bit stream, most
significant bit first: a 32-bit count of values, the word size minus 1 (5 bits), four run-length field
widths minus 1 (4 bits each), then blocks up to the count. A block is a flag bit, a 2-bit choice of field
width, a run length minus 1 in that width, then one word repeated for the run (flag 1) or that many
literal words (flag 0). The stream is padded with zero bits to whole bytes.

`encode_mask` writes repeated runs only, 8-bit words and the field widths 3, 4, 8 and 16, every channel
0 or 255; `decode_mask` reads any valid stream and takes the alpha channel: a pixel is in the mask when
its alpha is at least 128.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import DataError

RUN_WIDTHS = (3, 4, 8, 16)
"""Bit widths of the run-length fields this encoder declares (the longest run one block holds: 2**16)."""

HEADER_BITS = 32 + 5 + 4 * 4


def encode_mask(mask: np.ndarray) -> list[int]:
    """The brush RLE (a list of byte values) of a boolean H x W mask."""
    values = np.repeat(np.where(np.asarray(mask, dtype=bool).ravel(), 255, 0).astype(np.uint8), 4)
    fields = [f"{values.size:032b}", f"{8 - 1:05b}", *(f"{width - 1:04b}" for width in RUN_WIDTHS)]
    if values.size:
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        lengths = np.diff(np.r_[starts, values.size])
        for value, length in zip(values[starts].tolist(), lengths.tolist()):
            while length:
                run = min(length, 1 << RUN_WIDTHS[-1])
                choice = next(index for index, width in enumerate(RUN_WIDTHS) if run <= 1 << width)
                fields.append(f"1{choice:02b}{run - 1:0{RUN_WIDTHS[choice]}b}{value:08b}")
                length -= run
    bits = "".join(fields)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big")) if bits else []


class _Bits:
    """Reads unsigned integers from a bit string; DataError at its end."""

    def __init__(self, data: bytes, where: str):
        self.bits = (
            np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tobytes().translate(bytes.maketrans(b"\0\1", b"01"))
        )
        self.position = 0
        self.where = where

    def read(self, count: int) -> int:
        end = self.position + count
        if end > len(self.bits):
            raise DataError(
                f"{self.where}: malformed brush RLE: the data ends inside a block (after {self.position} bits)"
            )
        value = int(self.bits[self.position : end], 2) if count else 0
        self.position = end
        return value


def decode_values(rle: Sequence[int], where: str = "brush RLE") -> np.ndarray:
    """The flat array of words a brush RLE holds (uint8; a word wider than 8 bits is an error)."""
    if not isinstance(rle, (list, tuple)) or not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise DataError(f"{where}: malformed brush RLE: expected a list of byte values 0..255")
    stream = _Bits(bytes(rle), where)
    if len(stream.bits) < HEADER_BITS:
        raise DataError(f"{where}: malformed brush RLE: {len(rle)} bytes, shorter than its 7-byte header")
    count, word = stream.read(32), stream.read(5) + 1
    widths = [stream.read(4) + 1 for _ in range(4)]
    if word > 8:
        raise DataError(f"{where}: brush RLE with {word}-bit words; masks use 8-bit words")
    out = np.empty(count, dtype=np.uint8)
    index = 0
    while index < count:
        repeated = stream.read(1)
        end = index + 1 + stream.read(widths[stream.read(2)])
        if end > count:
            raise DataError(f"{where}: malformed brush RLE: a run ends at value {end}, past the declared {count}")
        if repeated:
            out[index:end] = stream.read(word)
        else:
            out[index:end] = [stream.read(word) for _ in range(end - index)]
        index = end
    return out


def decode_mask(rle: Sequence[int], width: int, height: int, where: str = "brush RLE") -> np.ndarray:
    """The boolean H x W mask of a brush RLE made for an image of `width` x `height` pixels."""
    values = decode_values(rle, where)
    if values.size != width * height * 4:
        raise DataError(
            f"{where}: the brush RLE holds {values.size} values but a {width}x{height} image needs "
            f"{width * height * 4} (width x height x 4 RGBA channels)"
        )
    return values.reshape(height, width, 4)[:, :, 3] >= 128
