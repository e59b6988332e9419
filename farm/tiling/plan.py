"""Tile plans: integer pixel rectangles that cover a frame exactly once.

Everything here is exact integer arithmetic in image coordinates (origin top-left, y down, half-open
rectangles), the convention of OpenImageIO and numpy. The one place floats appear is
:func:`blender_border`, which turns a render region into the border fractions Blender expects; its
inverse :func:`blender_pixels` reproduces Blender's own float32 truncation so tests can prove that the
fractions land on the intended pixels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from farm.errors import FarmError


@dataclass(frozen=True, order=True)
class Rect:
    """A half-open pixel rectangle ``[x0, x1) × [y0, y1)``, y counted from the top."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def grow(self, margin: int, width: int, height: int) -> Rect:
        """This rectangle padded by ``margin`` on every side, clamped to a ``width × height`` frame."""
        return Rect(
            max(0, self.x0 - margin),
            max(0, self.y0 - margin),
            min(width, self.x1 + margin),
            min(height, self.y1 + margin),
        )

    def within(self, outer: Rect) -> tuple[slice, slice]:
        """Row and column slices selecting this rectangle inside an array holding ``outer``."""
        return (
            slice(self.y0 - outer.y0, self.y1 - outer.y0),
            slice(self.x0 - outer.x0, self.x1 - outer.x0),
        )

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices selecting this rectangle inside a whole-frame array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


@dataclass(frozen=True)
class Tile:
    """One tile: the pixels it owns in the frame and the (padded) region Blender renders for it."""

    index: int
    rect: Rect
    region: Rect


@dataclass(frozen=True)
class TileMode:
    """How a job splits frames: ``none``, ``auto``, a ``CxR`` grid or square tiles of ``N`` pixels."""

    kind: str  # "none" | "auto" | "grid" | "size"
    cols: int = 1
    rows: int = 1
    size: int = 0

    def __str__(self) -> str:
        if self.kind == "grid":
            return f"{self.cols}x{self.rows}"
        if self.kind == "size":
            return f"{self.size}px"
        return self.kind

    def plan(self, width: int, height: int, overscan: int) -> TilePlan:
        """The plan this mode gives a ``width × height`` frame (``auto`` and ``none``: one tile)."""
        if self.kind == "grid":
            return TilePlan.grid(width, height, self.cols, self.rows, overscan)
        if self.kind == "size":
            return TilePlan.tile_size(width, height, self.size, overscan)
        return TilePlan.grid(width, height, 1, 1, overscan)


_GRID = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_SIZE = re.compile(r"^\s*(\d+)\s*px\s*$")


def parse_tiles(text: str) -> TileMode:
    """Parse ``--tiles``: ``auto``, ``none``, ``4x3`` (columns × rows) or ``256px``."""
    value = text.strip().lower()
    if value in ("auto", "none"):
        return TileMode(value)
    if match := _GRID.match(value):
        cols, rows = int(match[1]), int(match[2])
        if cols < 1 or rows < 1:
            raise FarmError(f"--tiles {text!r}: a grid needs at least 1 column and 1 row")
        return TileMode("none") if cols == rows == 1 else TileMode("grid", cols=cols, rows=rows)
    if match := _SIZE.match(value):
        size = int(match[1])
        if size < 1:
            raise FarmError(f"--tiles {text!r}: a tile must be at least 1 pixel")
        return TileMode("size", size=size)
    raise FarmError(f"--tiles {text!r}: expected auto, none, a grid like 4x3 or a size like 256px")


def _cuts(length: int, parts: int) -> list[int]:
    """``parts + 1`` integer cut points splitting ``length`` into near-equal spans."""
    return [i * length // parts for i in range(parts + 1)]


@dataclass(frozen=True)
class TilePlan:
    """The tiles of one ``width × height`` frame; their ``rect`` s partition the frame."""

    width: int
    height: int
    overscan: int
    tiles: tuple[Tile, ...]

    @classmethod
    def from_cuts(
        cls, width: int, height: int, xs: list[int], ys: list[int], overscan: int
    ) -> TilePlan:
        """A plan from column and row cut points; tiles are numbered row by row from the top."""
        if overscan < 0:
            raise FarmError(f"overscan must be 0 or more pixels, got {overscan}")
        tiles = []
        for row in range(len(ys) - 1):
            for col in range(len(xs) - 1):
                rect = Rect(xs[col], ys[row], xs[col + 1], ys[row + 1])
                tiles.append(Tile(len(tiles), rect, rect.grow(overscan, width, height)))
        return cls(width, height, overscan, tuple(tiles))

    @classmethod
    def grid(cls, width: int, height: int, cols: int, rows: int, overscan: int = 0) -> TilePlan:
        """``cols × rows`` tiles whose sizes differ by at most one pixel."""
        _check_frame(width, height)
        if cols > width or rows > height:
            raise FarmError(
                f"a {cols}x{rows} grid has more tiles than the {width}x{height} frame has pixels"
            )
        return cls.from_cuts(width, height, _cuts(width, cols), _cuts(height, rows), overscan)

    @classmethod
    def tile_size(cls, width: int, height: int, size: int, overscan: int = 0) -> TilePlan:
        """Square ``size`` -pixel tiles from the top-left corner; the last row and column are smaller."""
        _check_frame(width, height)
        if size < 1:
            raise FarmError(f"a tile must be at least 1 pixel, got {size}")
        xs = [*range(0, width, size), width]
        ys = [*range(0, height, size), height]
        return cls.from_cuts(width, height, xs, ys, overscan)

    @classmethod
    def split(cls, width: int, height: int, count: int, overscan: int = 0) -> TilePlan:
        """About ``count`` tiles as close to square as a ``cols × rows`` grid of that many allows."""
        count = max(1, min(count, width * height))
        best = min(
            (
                (abs(math.log((width / cols) / (height / (count // cols)))), cols, count // cols)
                for cols in range(1, count + 1)
                if count % cols == 0 and cols <= width and count // cols <= height
            ),
            default=(0.0, 1, 1),
        )
        return cls.grid(width, height, best[1], best[2], overscan)

    def __len__(self) -> int:
        return len(self.tiles)


def _check_frame(width: int, height: int) -> None:
    if width < 1 or height < 1:
        raise FarmError(f"a frame must be at least 1x1 pixels, got {width}x{height}")


def blender_border(region: Rect, width: int, height: int) -> tuple[float, float, float, float]:
    """Border fractions ``(min_x, max_x, min_y, max_y)`` that make Blender render exactly ``region``.

    Blender turns a fraction into a pixel by truncating ``float32(fraction) × size`` and counts y from
    the bottom. Aiming at the middle of the wanted pixel edge (``x + 0.5``) leaves half a pixel of margin
    for float32 rounding; the frame's own edges map to exactly 0 and 1 (Blender clamps to [0, 1]).
    """

    def fraction(pixel: int, size: int) -> float:
        if pixel <= 0:
            return 0.0
        if pixel >= size:
            return 1.0
        return (pixel + 0.5) / size

    return (
        fraction(region.x0, width),
        fraction(region.x1, width),
        fraction(height - region.y1, height),
        fraction(height - region.y0, height),
    )


def blender_pixels(border: tuple[float, float, float, float], width: int, height: int) -> Rect:
    """The pixel rectangle (top-down) Blender renders for ``border``, computed as Blender does."""

    def pixel(fraction: float, size: int) -> int:
        return int(np.float32(fraction) * np.float32(size))

    min_x, max_x, min_y, max_y = border
    return Rect(
        pixel(min_x, width),
        height - pixel(max_y, height),
        pixel(max_x, width),
        height - pixel(min_y, height),
    )
