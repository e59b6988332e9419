"""Frame lists, output patterns and render submissions: parsed right, refused with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farm.errors import FarmError
from farm.frames import OutputPattern, first_last_middle, parse_frames
from pipelines.render import RenderRequest, auto_tile_count, image_format, plan, validate


@pytest.mark.parametrize(
    ("text", "frames"),
    [
        ("1-24", list(range(1, 25))),
        ("1-100x5", list(range(1, 101, 5))),
        ("1,5,10-12", [1, 5, 10, 11, 12]),
        ("7", [7]),
        (" 3 - 5 , 1 ", [1, 3, 4, 5]),
        ("0-2", [0, 1, 2]),
    ],
)
def test_parse_frames(text: str, frames: list[int]) -> None:
    assert parse_frames(text) == frames


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("24-1", "backwards"),
        ("1-10x0", "step"),
        ("a-b", "cannot read"),
        ("1-", "cannot read"),
        ("1,,2", "cannot read"),
        ("-5", "cannot read"),
        ("1-5,3", "more than once"),
        ("1-99999999", "more than"),
    ],
)
def test_parse_frames_refuses(text: str, reason: str) -> None:
    with pytest.raises(FarmError, match=reason) as error:
        parse_frames(text)
    assert "\n" not in str(error.value)


@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=50, unique=True))
def test_parse_frames_reads_back_any_list(frames: list[int]) -> None:
    assert parse_frames(",".join(map(str, frames))) == sorted(frames)


@given(st.integers(1, 500))
def test_first_last_middle_orders_every_frame_once(count: int) -> None:
    order = first_last_middle(list(range(count)))
    assert sorted(order) == list(range(count))
    assert order[0] == 0
    if count > 1:
        assert order[1] == count - 1
    if count > 2:
        assert order[2] == (count - 1) // 2
        assert order[3:] == sorted(order[3:])


def test_output_pattern_pads_the_last_run_of_hashes() -> None:
    assert OutputPattern("renders/shot_####.exr").path(7) == Path("renders/shot_0007.exr")
    assert OutputPattern("r/v##/shot_###.exr").path(12345) == Path("r/v##/shot_12345.exr")
    assert OutputPattern("still.png").path(3) == Path("still.png")


def test_auto_tiles_only_once_fewer_frames_than_free_slots_remain() -> None:
    assert auto_tile_count(24, 4) == 1
    assert auto_tile_count(4, 4) == 1
    assert auto_tile_count(1, 4) == 4
    assert auto_tile_count(3, 4) == 2
    assert auto_tile_count(1, 1) == 1
    assert auto_tile_count(1, 16) == 16


@pytest.fixture
def blend(tmp_path: Path) -> Path:
    path = tmp_path / "scene.blend"
    path.write_bytes(b"BLENDER-v304" + bytes(100))
    return path


def refused(blend: Path, **fields) -> str:
    with pytest.raises(FarmError) as error:
        validate(RenderRequest(scene=str(blend), **fields))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_validation_refuses_bad_submissions(tmp_path: Path, blend: Path) -> None:
    assert "does not exist" in refused(tmp_path / "nope.blend")
    text = tmp_path / "notes.blend"
    text.write_text("hello")
    assert "not a Blender .blend file" in refused(text)
    assert "is not a file" in refused(tmp_path)
    assert "overscan" in refused(blend, overscan=-1)
    assert "no # for the frame number" in refused(
        blend, frames="1-3", output=str(tmp_path / "a.exr")
    )
    assert "unknown image type" in refused(blend, output=str(tmp_path / "a_#.tif"))
    assert "does not end in .png" in refused(blend, output=str(tmp_path / "a_#.exr"), format="png")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    assert "cannot be created" in refused(blend, output=str(blocker / "sub" / "a_#.exr"))
    assert "--chunk and --tiles" in refused(blend, chunk=4, tiles="2x2")
    assert "--samples" in refused(blend, samples=0)
    assert "--resolution" in refused(blend, resolution="wide")
    assert "--device" in refused(blend, device="TPU")
    assert "--compression" in refused(blend, compression="LZMA")
    assert "--tiles" in refused(blend, tiles="3by3")


def test_validation_accepts_and_defaults(tmp_path: Path, blend: Path) -> None:
    spec = validate(RenderRequest(scene=str(blend), frames="1", output=str(tmp_path / "still.png")))
    assert spec.format == "png" and spec.frames == (1,)
    spec = validate(RenderRequest(scene=str(blend), output=str(tmp_path / "f_####"), format="jpg"))
    assert spec.output.pattern.endswith("f_####.jpg") and spec.format == "jpeg"


INFO = {
    "has_camera": True,
    "width": 320,
    "height": 180,
    "frame_start": 1,
    "frame_end": 24,
    "frame_step": 1,
    "file_format": "OPEN_EXR",
    "color_depth": "16",
    "color_mode": "RGBA",
    "exr_codec": "PIZ",
    "quality": 80,
}


def test_plan_keeps_the_scenes_depth_and_codec_and_checks_the_grid(
    tmp_path: Path, blend: Path
) -> None:
    spec = validate(RenderRequest(scene=str(blend), output=str(tmp_path / "a_#.exr"), tiles="4x4"))
    job = plan(spec, INFO, slots=2)
    assert job.frames == tuple(range(1, 25))
    assert job.image.frame == {
        "file_format": "OPEN_EXR",
        "color_depth": "16",
        "color_mode": "RGBA",
        "exr_codec": "PIZ",
    }
    assert job.image.tile["exr_codec"] == "NONE" and job.image.compression == "piz"
    assert [t.frames[0] for t in job.chunks()][:3] == [1, 24, 12]
    big = validate(RenderRequest(scene=str(blend), output=str(tmp_path / "a_#.exr"), tiles="400x2"))
    with pytest.raises(FarmError, match="more tiles than"):
        plan(big, INFO, slots=2)
    with pytest.raises(FarmError, match="no active camera"):
        plan(spec, {**INFO, "has_camera": False}, slots=2)


def test_eight_bit_outputs_that_may_be_tiled_render_without_dither(
    tmp_path: Path, blend: Path
) -> None:
    spec = validate(RenderRequest(scene=str(blend), output=str(tmp_path / "a_#.png")))
    assert plan(spec, INFO, slots=2).settings["dither"] == 0.0
    assert "dither" not in plan(spec, INFO, slots=1).settings  # one slot never tiles
    jpeg = validate(RenderRequest(scene=str(blend), output=str(tmp_path / "a_#.jpg")))
    image = image_format(jpeg, INFO)
    assert image.frame["color_mode"] == "RGB" and image.tile["file_format"] == "PNG"
