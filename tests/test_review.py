"""Review outputs on real OIIO and real PyAV: burn-ins, contact sheets, H.264 movies."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from farm.errors import FarmError
from farm.tiling.imagefile import Pixels, read_pixels, write_frame
from workers.review import burn_in, contact_sheet, movie

COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (220, 220, 40), (40, 200, 200)]


def flat(colour: tuple[int, ...], width: int = 160, height: int = 90) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, len(colour))).copy()


def write_previews(folder: Path, width: int = 160, height: int = 90) -> list[tuple[int, Path]]:
    """Flat previews numbered 11, 12, …, listed out of order as a farm finishes them."""
    frames = []
    for number, colour in enumerate(COLOURS, start=11):
        path = folder / f"shot_{number:04d}.png"
        write_frame(path, Pixels(flat(colour, width, height), ("R", "G", "B")))
        frames.append((number, path))
    return [frames[0], frames[-1], *frames[1:-1]]


def test_burn_in_draws_white_on_dark_in_a_corner_of_a_copy():
    source = flat((120, 160, 200), 320, 180)
    labelled = burn_in(source, "1024")
    assert np.array_equal(source, flat((120, 160, 200), 320, 180))
    assert labelled.shape == source.shape and labelled.dtype == np.uint8
    changed = np.argwhere((labelled != source).any(axis=2))
    assert changed[:, 0].min() > 180 // 2 and changed[:, 1].min() > 320 // 2  # bottom-right
    assert changed[:, 0].max() == 179 and changed[:, 1].max() == 319  # flush with the corner
    box = labelled[changed[:, 0].min() :, changed[:, 1].min() :]
    assert (box.min(axis=2) > 230).sum() > 20  # white text
    assert (box.max(axis=2) <= 200 // 4).sum() > box.shape[0] * box.shape[1] // 2  # dark box


def test_burn_in_makes_its_box_opaque_in_rgba():
    labelled = burn_in(np.zeros((90, 160, 4), np.uint8), "7")
    assert labelled.shape == (90, 160, 4)
    assert labelled[-1, -1, 3] == 255 and labelled[0, 0, 3] == 0


def test_burn_in_refuses_float_pixels():
    with pytest.raises(FarmError, match="uint8"):
        burn_in(np.zeros((9, 9, 3), np.float32), "1")


def test_contact_sheet_grid_colours_and_labels(tmp_path: Path):
    out = tmp_path / "sheet.png"
    assert contact_sheet(write_previews(tmp_path), out, thumb_width=80) == out
    sheet = read_pixels(out).data
    gap, thumb_w, thumb_h = 8, 80, 45
    assert sheet.shape == (2 * (thumb_h + gap) + gap, 3 * (thumb_w + gap) + gap, 3)  # 3 columns
    for index, colour in enumerate(COLOURS):
        row, column = divmod(index, 3)
        top, left = gap + row * (thumb_h + gap), gap + column * (thumb_w + gap)
        thumb = sheet[top : top + thumb_h, left : left + thumb_w]
        assert (thumb[4:24, 4:50] == colour).all()  # away from the label: the frame's colour
        corner = thumb[-10:, -10:]
        assert (corner != colour).any(axis=2).mean() > 0.5  # the label is there
    assert sheet[2, 2].tolist() == [32, 32, 32]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_contact_sheet_columns_and_alpha_over_black(tmp_path: Path):
    rgba = flat((200, 100, 50, 128), 40, 40)
    write_frame(tmp_path / "a.png", Pixels(rgba, ("R", "G", "B", "A")))
    frames = [(n, tmp_path / "a.png") for n in range(1, 6)]
    sheet = read_pixels(contact_sheet(frames, tmp_path / "s.png", columns=2, thumb_width=40)).data
    assert sheet.shape == (3 * 48 + 8, 2 * 48 + 8, 3)
    np.testing.assert_allclose(sheet[12, 12], [100, 50, 25], atol=1)  # premultiplied: over black


def test_contact_sheet_refusals(tmp_path: Path):
    frames = write_previews(tmp_path)
    with pytest.raises(FarmError, match="at least 1 column"):
        contact_sheet(frames, tmp_path / "s.png", columns=0)
    with pytest.raises(FarmError, match="no frames"):
        contact_sheet([], tmp_path / "s.png")
    exr = tmp_path / "linear.exr"
    write_frame(exr, Pixels(np.zeros((4, 4, 3), np.float32), ("R", "G", "B")))
    with pytest.raises(FarmError, match="view transform"):
        contact_sheet([(1, exr)], tmp_path / "s.png")
    with pytest.raises(FarmError, match="cannot read"):
        contact_sheet([(1, tmp_path / "missing.png")], tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def test_movie_decodes_to_every_frame_in_order_with_its_colour(tmp_path: Path):
    out = tmp_path / "review.mp4"
    assert movie(write_previews(tmp_path, 81, 45), out, fps=24) == out  # odd: padded to 82×46
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 24
        decoded = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    assert len(decoded) == len(COLOURS)
    for pixels, colour in zip(decoded, COLOURS, strict=True):
        assert pixels.shape == (46, 82, 3)
        away_from_label = pixels[4:30, 4:50].astype(float)
        assert np.abs(away_from_label - colour).mean() < 6
        assert np.abs(pixels[-8:, -8:].astype(float) - colour).mean() > 40  # burnt-in number
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_movie_refuses_mixed_sizes_and_leaves_nothing(tmp_path: Path):
    frames = write_previews(tmp_path)
    other = tmp_path / "small.png"
    write_frame(other, Pixels(flat((1, 2, 3), 64, 36), ("R", "G", "B")))
    with pytest.raises(FarmError, match="frame 99 is 64×36, the movie 160×90"):
        movie([*frames, (99, other)], tmp_path / "m.mp4")
    with pytest.raises(FarmError, match="positive"):
        movie(frames, tmp_path / "m.mp4", fps=0)
    assert not (tmp_path / "m.mp4").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
