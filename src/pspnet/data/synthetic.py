"""The built-in synthetic dataset "context scenes": images in which context decides the label.

Every scene is drawn with numpy from a per-sample random generator, so the dataset needs no files
and sample `i` of a split is always the same. The scenes reproduce the three failure cases of
local-only networks described in the PSPNet paper (section 1 and figure 2):

- mismatched relationship: one vehicle generator; it is a `boat` over water and a `car` on a road;
- confusing categories: one facade generator; a skyline of tall facades is `skyscraper`, a skyline
  of short ones is `building`;
- inconspicuous class: a `pillow` with the bed sheet's colour and texture, told from a folded
  sheet only by which end of the bed it lies at.

See docs/synthetic.md for the full rules.
"""

from __future__ import annotations

import operator

import numpy as np

from ..classes import ClassInfo
from ..config import SyntheticConfig
from ..errors import DataError
from .base import Sample, SegmentationSource

CLASSES = ClassInfo(
    names=("sky", "water", "road", "wall", "floor", "building", "skyscraper", "boat", "car", "bed", "pillow"),
    palette=(
        (128, 192, 255),
        (0, 64, 192),
        (128, 128, 128),
        (230, 200, 150),
        (140, 90, 40),
        (255, 128, 0),
        (160, 0, 160),
        (0, 210, 210),
        (220, 20, 60),
        (40, 160, 40),
        (255, 230, 0),
    ),
)
SKY, WATER, ROAD, WALL, FLOOR, BUILDING, SKYSCRAPER, BOAT, CAR, BED, PILLOW = range(CLASSES.num_classes)

CONTEXT_CASES: dict[str, tuple[str, ...]] = {
    "mismatched relationship": ("boat", "car"),
    "confusing categories": ("building", "skyscraper"),
    "inconspicuous class": ("pillow",),
}
"""The paper's three failure cases of local-only networks and the classes that measure each."""

SPLITS = {"train": 0, "val": 1}
MIN_SIZE = 32

PIXEL_NOISE = 6.0
"""Std of the per-pixel, per-channel Gaussian noise added to every image."""
SHEET_NOISE = 8.0
"""Std of the grain of the bed sheet (and of the pillow, which shares it)."""
PILLOW_SHIFT = (2.5, 5.0)
"""Range of the brightness a pillow (or a folded sheet) adds to its sheet: well below the noise."""

VEHICLE_PAINTS = (
    (200, 45, 40),
    (230, 230, 225),
    (235, 195, 45),
    (45, 80, 165),
    (45, 125, 70),
    (230, 120, 35),
    (120, 120, 128),
)
WALL_PAINTS = ((150, 170, 140), (190, 125, 100), (115, 135, 165), (200, 170, 95), (160, 140, 175))
SHEET_COLOURS = ((206, 206, 200), (190, 202, 218), (214, 196, 196), (200, 212, 196))
BLANKET_COLOURS = ((40, 55, 110), (120, 35, 45), (40, 95, 60), (190, 140, 40), (30, 115, 120))


class ContextScenes(SegmentationSource):
    """Harbour, street and bedroom scenes generated on the fly; see the module docstring."""

    classes = CLASSES

    def __init__(self, split: str, num_samples: int, image_size: tuple[int, int] = (128, 128), seed: int = 0):
        if split not in SPLITS:
            raise DataError(f"context scenes: unknown split '{split}', expected one of {', '.join(SPLITS)}")
        height, width = (int(side) for side in image_size)
        if min(height, width) < MIN_SIZE:
            raise DataError(
                f"context scenes: image_size must be [height, width] with each side >= {MIN_SIZE}, got {list(image_size)}"
            )
        if num_samples < 0 or seed < 0:
            raise DataError(f"context scenes: num_samples and seed must be non-negative, got {num_samples} and {seed}")
        self.split = split
        self.num_samples = int(num_samples)
        self.image_size = (height, width)
        self.seed = int(seed)

    @classmethod
    def from_config(cls, config: SyntheticConfig, split: str) -> ContextScenes:
        """The train or val split described by `data.synthetic`."""
        num_samples = config.num_train if split == "train" else config.num_val
        return cls(split, num_samples, tuple(config.image_size), config.seed)

    def __len__(self) -> int:
        return self.num_samples

    def name(self, index: int) -> str:
        return f"{self.split}_{self._check_index(index):05d}"

    def load(self, index: int) -> Sample:
        index = self._check_index(index)
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        image, mask = render_scene(rng, *self.image_size)
        return Sample(image=image, mask=mask, name=self.name(index))

    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if not 0 <= index < self.num_samples:
            raise IndexError(f"context scenes ({self.split}): index {index} out of range 0..{self.num_samples - 1}")
        return index


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one random scene: an HxWx3 uint8 RGB image and its HxW uint8 class-id mask."""
    canvas = _Canvas(height, width)
    scene = rng.integers(3)
    if scene == 2:
        _bedroom(canvas, rng)
    else:
        _outdoor(canvas, rng, harbour=scene == 0)
    image = canvas.image * rng.uniform(0.9, 1.1)
    image += rng.standard_normal(image.shape, dtype=np.float32) * PIXEL_NOISE
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), canvas.mask


class _Canvas:
    """A float RGB image and its label map, painted back to front."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.mask = np.zeros((height, width), np.uint8)

    def box(
        self, top: float, left: float, bottom: float, right: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
        """Slices of the pixels whose centres lie in a box (clipped to the canvas), and those centres'
        coordinates as a column `ys` and a row `xs`."""
        y0, y1 = (int(np.clip(np.ceil(v - 0.5), 0, self.height)) for v in (top, bottom))
        x0, x1 = (int(np.clip(np.ceil(v - 0.5), 0, self.width)) for v in (left, right))
        y1, x1 = max(y0, y1), max(x0, x1)
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5
        return (slice(y0, y1), slice(x0, x1)), ys, xs

    def paint(
        self, where: tuple[slice, slice], colour: np.ndarray, label: int, inside: np.ndarray | None = None
    ) -> None:
        """Give the pixels of `where` (only those `inside`, when given) a colour and a class.

        `colour` is an RGB triple or any array that broadcasts to the region's (h, w, 3)."""
        region = self.image[where]
        if inside is None:
            region[...] = colour
            self.mask[where] = label
        else:
            region[inside] = np.broadcast_to(colour, region.shape)[inside]
            self.mask[where][inside] = label


def _rounded_box(
    ys: np.ndarray, xs: np.ndarray, top: float, left: float, bottom: float, right: float, power: float
) -> np.ndarray:
    """Inside test of a superellipse inscribed in a box: a rectangle with rounded corners."""
    half_h, half_w = max((bottom - top) / 2, 1e-3), max((right - left) / 2, 1e-3)
    dy = np.abs((ys - (top + bottom) / 2) / half_h) ** power
    dx = np.abs((xs - (left + right) / 2) / half_w) ** power
    return dy + dx <= 1


def _jitter(rng: np.random.Generator, colour, amount: float) -> np.ndarray:
    return np.asarray(colour, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def _pick(rng: np.random.Generator, colours, amount: float) -> np.ndarray:
    return _jitter(rng, colours[rng.integers(len(colours))], amount)


# Outdoor scenes: sky, a skyline on the horizon, water or road, and one large vehicle.


def _outdoor(canvas: _Canvas, rng: np.random.Generator, harbour: bool) -> None:
    """Harbour (water, boat) or street (road, car); everything else is drawn by the same rules."""
    horizon = canvas.height * rng.uniform(0.58, 0.72)
    _sky(canvas, rng, horizon)
    _skyline(canvas, rng, horizon)
    if harbour:
        _water(canvas, rng, horizon)
    else:
        _road(canvas, rng, horizon)
    _vehicle(canvas, rng, BOAT if harbour else CAR)


def _sky(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    where, ys, _ = canvas.box(0, 0, horizon, canvas.width)
    zenith, haze = _jitter(rng, (85, 145, 215), 15), _jitter(rng, (180, 210, 235), 12)
    fraction = (ys / horizon)[..., None]
    canvas.paint(where, zenith + (haze - zenith) * fraction, SKY)


def _skyline(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """2-5 facades standing on the horizon: all tall (downtown, skyscrapers) or all short (suburb, buildings)."""
    height, width = canvas.height, canvas.width
    downtown = rng.random() < 0.5
    label, (low, high) = (SKYSCRAPER, (0.56, 0.85)) if downtown else (BUILDING, (0.14, 0.38))
    for _ in range(rng.integers(2, 6)):
        facade_width = width * rng.uniform(0.12, 0.28)
        left = rng.uniform(-0.1 * width, width - 0.9 * facade_width)
        top = horizon - height * rng.uniform(low, high)
        _facade(canvas, rng, top, left, horizon, left + facade_width, label)


def _facade(
    canvas: _Canvas, rng: np.random.Generator, top: float, left: float, bottom: float, right: float, label: int
) -> None:
    """A grey wall with a grid of dark windows, a few of them lit; the grid is anchored at the roof."""
    where, ys, xs = canvas.box(top, left, bottom, right)
    if ys.size == 0 or xs.size == 0:
        return
    wall = rng.uniform(105, 170) + rng.uniform(-8, 8, 3).astype(np.float32)
    dark, lit = _jitter(rng, (50, 60, 82), 8), _jitter(rng, (235, 212, 130), 10)
    pitch = max(3.0, min(canvas.height, canvas.width) * rng.uniform(0.045, 0.065))
    pane = pitch * rng.uniform(0.45, 0.6)
    row, col = (ys - top) // pitch, (xs - left) // pitch
    in_row = np.abs((ys - top) - (row + 0.5) * pitch) < pane / 2
    in_col = (np.abs((xs - left) - (col + 0.5) * pitch) < pane / 2) & (xs - left > pitch / 2) & (right - xs > pitch / 2)
    window = in_row & in_col
    is_lit = (rng.random((int(row.max()) + 1, int(col.max()) + 1)) < 0.2)[row.astype(int), col.astype(int)]
    colour = np.where(window[..., None], np.where(is_lit[..., None], lit, dark), wall)
    canvas.paint(where, colour, label)


def _water(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """Blue water, lighter towards the horizon, with horizontal ripples."""
    where, ys, xs = canvas.box(horizon, 0, canvas.height, canvas.width)
    base = _jitter(rng, (40, 95, 140), 12)
    depth = (ys - horizon) / (canvas.height - horizon)
    ripples = 7 * np.sin(2 * np.pi * ys / rng.uniform(3, 6) + rng.uniform(0, 2 * np.pi))
    ripples += rng.normal(0, 5, ys.shape)
    shade = base * (1.15 - 0.3 * depth)[..., None] + ripples[..., None] * np.float32([0.6, 0.8, 1.0])
    canvas.paint(where, np.broadcast_to(shade, (len(ys), xs.shape[1], 3)), WATER)


def _road(canvas: _Canvas, rng: np.random.Generator, horizon: float) -> None:
    """Grey asphalt with grain and a dashed lane marking."""
    height, width = canvas.height, canvas.width
    where, ys, xs = canvas.box(horizon, 0, height, width)
    asphalt = rng.uniform(70, 100) + rng.uniform(-4, 4, 3).astype(np.float32)
    colour = asphalt + rng.normal(0, 6, (len(ys), xs.shape[1], 1)).astype(np.float32)
    lane_y = horizon + (height - horizon) * rng.uniform(0.3, 0.6)
    dash = width * rng.uniform(0.06, 0.1)
    lane = (np.abs(ys - lane_y) < max(0.8, height * 0.008)) & ((xs + rng.uniform(0, 2 * dash)) % (2 * dash) < dash)
    paint = _pick(rng, ((225, 225, 215), (225, 190, 60)), 10)
    canvas.paint(where, np.where(lane[..., None], paint, colour), ROAD)


def _vehicle(canvas: _Canvas, rng: np.random.Generator, label: int) -> None:
    """A large rounded hull with a cabin and windows. Boats and cars share this generator exactly."""
    height, width = canvas.height, canvas.width
    length = width * rng.uniform(0.35, 0.65)
    left = rng.uniform(0.02 * width, 0.98 * width - length)
    bottom = height * rng.uniform(0.86, 0.97)
    hull_top = bottom - height * rng.uniform(0.18, 0.28)
    cabin_top = hull_top - height * rng.uniform(0.1, 0.15)
    cabin_length = length * rng.uniform(0.45, 0.65)
    cabin_left = left + (length - cabin_length) * rng.uniform(0.15, 0.85)

    where, ys, xs = canvas.box(cabin_top, left, bottom, left + length)
    hull = _rounded_box(ys, xs, hull_top, left, bottom, left + length, 5)
    cabin_box = (cabin_top, cabin_left, hull_top + (hull_top - cabin_top) * 0.4, cabin_left + cabin_length)
    cabin = _rounded_box(ys, xs, *cabin_box, 3)
    glass_top, glass_bottom = cabin_top + (hull_top - cabin_top) * 0.2, hull_top - (hull_top - cabin_top) * 0.1
    glass = _rounded_box(
        ys, xs, glass_top, cabin_left + 0.1 * cabin_length, glass_bottom, cabin_left + 0.9 * cabin_length, 4
    )
    pillar = np.abs((xs - cabin_left) / cabin_length * rng.integers(2, 4) % 1 - 0.5) > 0.46
    stripe_y = bottom - (bottom - hull_top) * rng.uniform(0.3, 0.45)
    stripe = np.abs(ys - stripe_y) < (bottom - hull_top) * 0.07

    paint = _pick(rng, VEHICLE_PAINTS, 15)
    light = 1.1 - 0.25 * (ys - cabin_top) / (bottom - cabin_top)
    colour = paint * light[..., None] * np.where(stripe, 0.55, 1.0)[..., None]
    colour = np.where((glass & ~pillar & cabin)[..., None], _jitter(rng, (60, 80, 105), 8), colour)
    canvas.paint(where, colour, label, inside=hull | cabin)


# Bedroom: wall, floor and a bed seen from the side, with a pillow at its head end.


def _bedroom(canvas: _Canvas, rng: np.random.Generator) -> None:
    floor_line = canvas.height * rng.uniform(0.4, 0.55)
    _wall(canvas, rng, floor_line)
    _floor(canvas, rng, floor_line)
    _bed(canvas, rng)


def _wall(canvas: _Canvas, rng: np.random.Generator, floor_line: float) -> None:
    """Painted wall with faint vertical wallpaper stripes."""
    where, ys, xs = canvas.box(0, 0, floor_line, canvas.width)
    paint = _pick(rng, WALL_PAINTS, 10)
    stripes = 5.0 * ((xs // rng.uniform(6, 12)) % 2) - 2.5
    canvas.paint(where, np.broadcast_to(paint + stripes[..., None], (len(ys), xs.shape[1], 3)), WALL)


def _floor(canvas: _Canvas, rng: np.random.Generator, floor_line: float) -> None:
    """Light wooden planks: horizontal boards of varying shade with dark gaps between them."""
    where, ys, xs = canvas.box(floor_line, 0, canvas.height, canvas.width)
    oak = _jitter(rng, (170, 125, 80), 12)
    plank = rng.uniform(4, 7)
    index = ((ys - floor_line) // plank).astype(int)
    shade = rng.normal(0, 8, index.max() + 1)[index] - 30 * ((ys - floor_line) % plank < 1)
    canvas.paint(where, np.broadcast_to(oak + shade[..., None], (len(ys), xs.shape[1], 3)), FLOOR)


def _bed(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Frame, two identical end boards, the sheet, a pillow, a blanket and a folded sheet.

    Along the sheet from the head (0) to the foot (1): the pillow on [0, p], bare sheet, the blanket
    with its turned-down hem on the head side, bare sheet, and a folded sheet on [1 - f, 1] drawn
    exactly like the pillow (p and f, and the two bare gaps, share their ranges). The two ends of
    the bed look alike; only the side of the blanket that carries the hem tells which is the head.
    """
    height, width = canvas.height, canvas.width
    board = max(2.0, width * rng.uniform(0.025, 0.04))
    sheet_length = width * rng.uniform(0.55, 0.8)
    left = rng.uniform(0.03 * width, 0.97 * width - sheet_length - 2 * board)
    sheet_left, sheet_right = left + board, left + board + sheet_length
    bottom = height * rng.uniform(0.84, 0.95)
    sheet_bottom = bottom - height * rng.uniform(0.05, 0.08)
    sheet_top = sheet_bottom - height * rng.uniform(0.14, 0.2)
    board_top = sheet_top - height * rng.uniform(0.06, 0.12)
    head_left = rng.random() < 0.5

    def span(start: float, end: float) -> tuple[float, float]:
        """Sheet fraction [start, end] from the head, as a left/right pixel interval."""
        if head_left:
            return sheet_left + start * sheet_length, sheet_left + end * sheet_length
        return sheet_right - end * sheet_length, sheet_right - start * sheet_length

    wood = _jitter(rng, (95, 62, 42), 12)
    where, ys, xs = canvas.box(board_top, left, bottom, sheet_right + board)
    is_board = (xs < sheet_left) | (xs >= sheet_right)
    grain = rng.normal(0, 4, (len(ys), 1, 1)).astype(np.float32)
    canvas.paint(where, wood + grain, BED, inside=is_board | (ys >= sheet_bottom))

    sheet = _pick(rng, SHEET_COLOURS, 8)
    where, ys, xs = canvas.box(sheet_top, sheet_left, sheet_bottom, sheet_right)
    texture = sheet + rng.normal(0, SHEET_NOISE, (len(ys), xs.shape[1], 1)).astype(np.float32)
    canvas.paint(where, texture, BED)

    pillow_end, fold_start = rng.uniform(0.22, 0.27), 1 - rng.uniform(0.22, 0.27)
    for label, start, end in ((PILLOW, 0.0, pillow_end), (BED, fold_start, 1.0)):
        patch_left, patch_right = span(start, end)
        patch_bottom = sheet_top + (sheet_bottom - sheet_top) * rng.uniform(0.65, 0.75)
        inside = _rounded_box(ys, xs, sheet_top, patch_left, patch_bottom, patch_right, 4)
        shift = rng.uniform(*PILLOW_SHIFT)
        canvas.paint(where, texture + np.float32(shift), label, inside=inside)

    blanket_start, blanket_end = pillow_end + rng.uniform(0.04, 0.1), fold_start - rng.uniform(0.04, 0.1)
    hem_end = blanket_start + rng.uniform(0.05, 0.07)
    blanket = _pick(rng, BLANKET_COLOURS, 12)
    for start, end, colour in (
        (blanket_start, blanket_end, blanket),
        (blanket_start, hem_end, (blanket + 2 * 235) / 3),
    ):
        cover_left, cover_right = span(start, end)
        where, ys, xs = canvas.box(sheet_top, cover_left, sheet_bottom + (bottom - sheet_bottom) * 0.5, cover_right)
        stripes = 1.0 + 0.2 * ((ys // 4) % 2)
        noise = rng.normal(0, 4, (len(ys), xs.shape[1], 1)).astype(np.float32)
        canvas.paint(where, colour * stripes[..., None] + noise, BED)
