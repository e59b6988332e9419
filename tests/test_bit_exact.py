"""The farm's tiled frame is Blender's own full frame, bit for bit (real Blender, real Ray, real OIIO)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import blender_render, pixels

from farm.embedded.render import RunOptions, render
from pipelines.render import RenderRequest, validate


def farm_render(blender: str, scene: Path, output: Path, slots: int = 2, **request) -> dict:
    spec = validate(RenderRequest(scene=str(scene), output=str(output), **request))
    summary = render(spec, RunOptions(blender, slots=slots, threads=1))
    assert summary.ok, summary.failed
    return summary.as_json()


@pytest.mark.parametrize(
    ("resolution", "tiles", "overscan"),
    [
        ((96, 54), "2x2", 0),
        ((101, 67), "3x2", 5),
        ((97, 61), "7x5", 3),
        ((64, 33), "16px", 40),  # overscan wider than a tile: regions clamp to the frame
    ],
)
def test_tiled_exr_equals_blenders_full_frame(
    ray_local, blender, make_scene, tmp_path, resolution, tiles, overscan
) -> None:
    scene = make_scene(*resolution, samples=4, frames=3)
    frame = 2
    summary = farm_render(
        blender,
        scene,
        tmp_path / "farm_####.exr",
        frames=str(frame),
        tiles=tiles,
        overscan=overscan,
    )
    assert summary["written"] == 1 and summary["tasks"] > 1
    farm = pixels(tmp_path / f"farm_{frame:04d}.exr")
    reference = pixels(blender_render(blender, scene, frame, tmp_path / "ref.exr"))
    assert farm.shape == (*resolution[::-1], 4)
    assert farm.dtype == reference.dtype == np.float32
    assert np.array_equal(farm, reference)
    assert np.isfinite(farm).all() and farm[..., :3].std() > 0  # a real picture, not a blank


def test_tiled_png_equals_blenders_undithered_full_frame(
    ray_local, blender, make_scene, tmp_path
) -> None:
    scene = make_scene(97, 61, samples=4, frames=3)
    farm_render(blender, scene, tmp_path / "farm_####.png", frames="3", tiles="3x3", overscan=2)
    reference = blender_render(
        blender,
        scene,
        3,
        tmp_path / "ref.png",
        python="import bpy; s = bpy.context.scene; s.render.image_settings.file_format = 'PNG'; "
        "s.render.image_settings.color_depth = '8'; "
        "s.render.dither_intensity = 0",
    )
    farm, ref = pixels(tmp_path / "farm_0003.png"), pixels(reference)
    assert farm.dtype == ref.dtype == np.uint8
    assert np.array_equal(farm, ref)


def test_whole_frames_are_blenders_own_files(ray_local, blender, make_scene, tmp_path) -> None:
    scene = make_scene(64, 36, samples=2, frames=4)
    summary = farm_render(blender, scene, tmp_path / "farm_####.exr", frames="1-4", tiles="none")
    assert summary["written"] == 4 and summary["tiled_frames"] == 0
    assert summary["paths"] == [str(tmp_path / f"farm_{f:04d}.exr") for f in range(1, 5)]
    for frame in (1, 4):
        reference = pixels(blender_render(blender, scene, frame, tmp_path / f"ref{frame}.exr"))
        assert np.array_equal(pixels(tmp_path / f"farm_{frame:04d}.exr"), reference)
    assert not np.array_equal(
        pixels(tmp_path / "farm_0001.exr"), pixels(tmp_path / "farm_0004.exr")
    )


def test_auto_tiles_a_still_across_every_slot(ray_local, blender, make_scene, tmp_path) -> None:
    scene = make_scene(96, 54, samples=4, frames=3)
    summary = farm_render(blender, scene, tmp_path / "still.exr", frames="2", slots=2)
    assert summary["tiled_frames"] == 1 and summary["tasks"] == 2
    reference = pixels(blender_render(blender, scene, 2, tmp_path / "ref.exr"))
    assert np.array_equal(pixels(tmp_path / "still.exr"), reference)


def test_chunks_and_overrides_match_blender_with_the_same_settings(
    ray_local, blender, make_scene, tmp_path
) -> None:
    scene = make_scene(96, 54, samples=4, frames=4)
    summary = farm_render(
        blender,
        scene,
        tmp_path / "farm_####.exr",
        frames="1-4",
        chunk=2,
        resolution="50x30",
        samples=2,
        seed=7,
    )
    assert summary["tasks"] == 2 and summary["written"] == 4 and summary["resolution"] == [50, 30]
    same = (
        "import bpy; s = bpy.context.scene; s.render.resolution_x = 50; s.render.resolution_y = 30; "
        "s.render.resolution_percentage = 100; s.cycles.samples = 2; s.cycles.seed = 7"
    )
    for frame in (2, 3):
        reference = pixels(blender_render(blender, scene, frame, tmp_path / "ref.exr", python=same))
        farm = pixels(tmp_path / f"farm_{frame:04d}.exr")
        assert farm.shape == (30, 50, 4)
        assert np.array_equal(farm, reference)


def test_tiled_jpeg_matches_blenders_jpeg(ray_local, blender, make_scene, tmp_path) -> None:
    scene = make_scene(96, 54, samples=4, frames=3)
    farm_render(blender, scene, tmp_path / "farm_####.jpg", frames="2", tiles="2x2")
    reference = blender_render(
        blender,
        scene,
        2,
        tmp_path / "ref.jpg",
        python="import bpy; s = bpy.context.scene; s.render.image_settings.file_format = 'JPEG'; "
        "s.render.image_settings.quality = 90; s.render.dither_intensity = 0",
    )
    farm, ref = pixels(tmp_path / "farm_0002.jpg"), pixels(reference)
    assert farm.shape == ref.shape == (54, 96, 3)
    # Two JPEG encoders (Blender's and OIIO's) of the same pixels: close, not identical.
    assert np.abs(farm.astype(int) - ref.astype(int)).mean() < 1.5
