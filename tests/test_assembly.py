"""Assembly puts every tile's owned pixels in place, refuses doubled or missing tiles, writes atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import pixels
from hypothesis import given, settings
from hypothesis import strategies as st

from farm.tiling.assemble import BufferPool, FrameAssembly
from farm.tiling.imagefile import Pixels, read_pixels, write_bytes, write_frame
from farm.tiling.plan import TilePlan

DTYPES = [np.float32, np.float16, np.uint8, np.uint16]


def reference(width: int, height: int, channels: int, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(width * 7919 + height)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, np.iinfo(dtype).max, (height, width, channels)).astype(dtype)
    return rng.standard_normal((height, width, channels)).astype(dtype)


def render_tiles(plan: TilePlan, frame: np.ndarray) -> list[np.ndarray]:
    """What each tile's padded render region would hold: the frame's pixels there."""
    return [frame[t.region.slices].copy() for t in plan.tiles]


@settings(max_examples=60, deadline=None)
@given(
    width=st.integers(1, 200),
    height=st.integers(1, 200),
    data=st.data(),
    channels=st.integers(1, 6),
    dtype=st.sampled_from(DTYPES),
)
def test_assembled_frame_equals_the_frame(width, height, data, channels, dtype) -> None:
    cols = data.draw(st.integers(1, min(width, 9)))
    rows = data.draw(st.integers(1, min(height, 9)))
    plan = TilePlan.grid(width, height, cols, rows, data.draw(st.integers(0, 20)))
    frame = reference(width, height, channels, dtype)
    tiles = render_tiles(plan, frame)
    order = data.draw(st.permutations(range(len(plan))))  # tiles arrive in any order
    assembly = FrameAssembly(plan, BufferPool())
    for index in order:
        assert not assembly.complete
        assembly.add(index, tiles[index])
    assert assembly.complete
    assert np.array_equal(assembly.frame(), frame)


def test_a_doubled_tile_is_an_error() -> None:
    plan = TilePlan.grid(10, 10, 2, 2)
    frame = reference(10, 10, 4, np.float32)
    assembly = FrameAssembly(plan)
    assembly.add(1, frame[plan.tiles[1].region.slices])
    with pytest.raises(ValueError, match="tile 1 arrived twice"):
        assembly.add(1, frame[plan.tiles[1].region.slices])


def test_a_missing_tile_is_an_error() -> None:
    plan = TilePlan.grid(10, 10, 2, 2)
    frame = reference(10, 10, 4, np.float32)
    assembly = FrameAssembly(plan)
    for index in (0, 1, 3):
        assembly.add(index, frame[plan.tiles[index].region.slices])
    with pytest.raises(ValueError, match=r"tiles \[2\] missing"):
        assembly.frame()


def test_a_tile_of_the_wrong_size_or_type_is_an_error() -> None:
    plan = TilePlan.grid(10, 10, 2, 2, overscan=2)
    assembly = FrameAssembly(plan)
    with pytest.raises(ValueError, match="its region is 7x7"):
        assembly.add(0, np.zeros((5, 5, 4), np.float32))
    assembly.add(0, np.zeros((7, 7, 4), np.float32))
    with pytest.raises(ValueError, match="channels"):
        assembly.add(1, np.zeros((7, 7, 4), np.float16))
    with pytest.raises(ValueError, match="not in this 4-tile plan"):
        assembly.add(4, np.zeros((7, 7, 4), np.float32))


def test_the_pool_reuses_buffers_across_frames() -> None:
    pool = BufferPool()
    plan = TilePlan.grid(16, 8, 2, 1)
    frame = reference(16, 8, 3, np.float32)
    first = FrameAssembly(plan, pool)
    for index, tile in enumerate(render_tiles(plan, frame)):
        first.add(index, tile)
    buffer = first.frame()
    first.release()
    second = FrameAssembly(plan, pool)
    second.add(0, frame[plan.tiles[0].region.slices])
    second.add(1, frame[plan.tiles[1].region.slices])
    assert second.frame() is buffer


@pytest.mark.parametrize(
    ("suffix", "dtype", "channels", "compression"),
    [
        (".exr", np.float32, 4, "zip"),
        (".exr", np.float16, 4, "piz"),
        (".exr", np.float32, 7, "none"),
        (".png", np.uint8, 4, None),
        (".png", np.uint16, 3, None),
    ],
)
def test_written_frames_read_back_bit_exact(
    tmp_path: Path, suffix, dtype, channels, compression
) -> None:
    frame = reference(33, 17, channels, dtype)
    if dtype in (np.float32, np.float16):
        names = ("R", "G", "B", "A", "Z", "N.X", "N.Y")[:channels]
    else:
        names = ("R", "G", "B", "A")[:channels]
    path = tmp_path / f"frame{suffix}"
    write_frame(path, Pixels(frame, names, {"Frame": "001"}), compression)
    back = read_pixels(path)
    assert back.data.dtype == frame.dtype
    assert np.array_equal(back.data, frame)
    assert back.channels == names
    assert [p.name for p in tmp_path.iterdir()] == ["frame" + suffix]  # no temp file left behind
    if suffix == ".exr":
        assert back.metadata["Frame"] == "001"


def test_jpeg_is_written_with_the_asked_quality(tmp_path: Path) -> None:
    frame = reference(64, 32, 3, np.uint8)
    low, high = tmp_path / "low.jpg", tmp_path / "high.jpg"
    write_frame(low, Pixels(frame, ("R", "G", "B")), quality=20)
    write_frame(high, Pixels(frame, ("R", "G", "B")), quality=98)
    assert low.stat().st_size < high.stat().st_size
    assert pixels(high).shape == (32, 64, 3)


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "frame.exr"
    with pytest.raises(OSError):
        write_frame(target, Pixels(reference(4, 4, 4, np.float32), ("R", "G", "B", "A")))
    assert not target.parent.exists()
    write_bytes(tmp_path / "a.exr", b"123")
    assert [p.name for p in tmp_path.iterdir()] == ["a.exr"]
