"""The frame-tiling core: exact integer tile plans and bit-exact frame assembly."""

from farm.tiling.assemble import BufferPool, FrameAssembly
from farm.tiling.plan import Rect, Tile, TilePlan, blender_border, blender_pixels, parse_tiles

__all__ = [
    "BufferPool",
    "FrameAssembly",
    "Rect",
    "Tile",
    "TilePlan",
    "blender_border",
    "blender_pixels",
    "parse_tiles",
]
