"""Review outputs from 8-bit previews: frame-number burn-ins, contact sheets, H.264 movies.

Inputs are display-referred previews — the PNG/JPEG a view transform already made, or their
pixels as uint8 (height, width, 3|4) arrays — so nothing here does colour management. Files with
alpha are shown over black (OIIO premultiplies on read); float files (EXR) are refused: their
scene-linear pixels need a view transform first.

Text is drawn with OIIO's ``render_text`` in DroidSansMono, a font the OpenImageIO wheel ships
in its own ``share/fonts``: no system font package is needed, and a monospaced counter keeps its
box steady from frame to frame. Movies are encoded with libx264, which PyAV's binary wheels
carry in their own FFmpeg. Outputs are written atomically (temp file beside, then rename), so a
reviewer never opens a half-written sheet or movie.
"""

from __future__ import annotations

import math
import os
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import OpenImageIO as oiio
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

from farm.errors import FarmError
from farm.tiling.imagefile import Pixels, write_frame
from workers.comp_ops import resize

FONT = "DroidSansMono"
SHEET_GAP = 8  # pixels between thumbnails and around the sheet
SHEET_BACKGROUND = 32  # dark grey, so black frames still show their edges
CRF = 18  # x264 quality: visually lossless for dailies at a fraction of the size


def _one_line(message: str) -> str:
    """OIIO's first error line (it often repeats the same one)."""
    return (message.strip().splitlines() or ["unknown error"])[0]


def _check_preview(pixels: np.ndarray) -> None:
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise FarmError(
            f"a preview must be uint8 height×width×3 or ×4 pixels, not {pixels.dtype} "
            f"of shape {pixels.shape}"
        )


def burn_in(pixels: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``pixels`` (uint8 RGB or RGBA) with ``text`` in white on a box darkened to a
    quarter, in the bottom-right corner, sized to the image (a twentieth of its height, at least
    14 px) so it reads the same on a thumbnail and on a full frame. The box is opaque in RGBA."""
    _check_preview(pixels)
    height, width, channels = pixels.shape
    size = max(14, height // 20)
    extent = oiio.ImageBufAlgo.text_size(text, size, FONT)
    if not extent.defined:
        raise FarmError(f"cannot lay out {text!r}: OIIO finds no font {FONT} (its wheel ships it)")
    pad = max(2, size // 4)
    left = max(0, width - extent.width - 2 * pad)
    top = max(0, height - extent.height - 2 * pad)
    labelled = pixels.copy()
    labelled[top:, left:, :3] //= 4
    if channels == 4:
        labelled[top:, left:, 3] = 255
    buf = oiio.ImageBuf(labelled)
    x, y = left + pad - extent.xbegin, top + pad - extent.ybegin
    if not oiio.ImageBufAlgo.render_text(buf, x, y, text, size, FONT, (1.0,) * channels):
        raise FarmError(f"cannot draw {text!r} in font {FONT}: {_one_line(buf.geterror())}")
    return buf.get_pixels(oiio.UINT8)


def _read_preview(path: Path) -> np.ndarray:
    """An 8- or 16-bit image file as uint8 RGB, alpha applied over black."""
    buf = oiio.ImageBuf(str(path))
    if not buf.read():
        raise FarmError(f"cannot read {path}: {_one_line(buf.geterror())}")
    if buf.spec().format in (oiio.HALF, oiio.FLOAT, oiio.DOUBLE):
        raise FarmError(
            f"{path} holds float (scene-linear) pixels; review needs an 8-bit preview made "
            "through a view transform (PNG or JPEG)"
        )
    pixels = buf.get_pixels(oiio.UINT8)
    if pixels.shape[2] >= 3:
        return np.ascontiguousarray(pixels[:, :, :3])
    return np.repeat(pixels[:, :, :1], 3, axis=2)  # grey (with or without alpha)


def _in_order(frames: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
    """Frames by number: the farm finishes them first, last and middle first, not in order."""
    if not frames:
        raise FarmError("no frames to review")
    return sorted(frames, key=lambda frame: frame[0])


def _thumbnail(pixels: np.ndarray, width: int) -> np.ndarray:
    height = max(1, round(pixels.shape[0] * width / pixels.shape[1]))
    small = resize(pixels.astype(np.float32), width, height)
    return np.clip(np.rint(small), 0, 255).astype(np.uint8)  # lanczos may overshoot at edges


def contact_sheet(
    frames: list[tuple[int, Path]],
    out: Path,
    columns: int | None = None,
    thumb_width: int = 320,
) -> Path:
    """Write a PNG grid of ``(frame number, preview file)`` thumbnails, ``thumb_width`` pixels
    wide with their aspect kept, each labelled with its frame number, in frame order, row by
    row. ``columns`` defaults to about as many as rows (⌈√n⌉). Returns ``out``."""
    if columns is not None and columns < 1:
        raise FarmError(f"a contact sheet needs at least 1 column, not {columns}")
    if thumb_width < 16:
        raise FarmError(f"thumbnails must be at least 16 pixels wide, not {thumb_width}")
    thumbs = [
        burn_in(_thumbnail(_read_preview(path), thumb_width), str(number))
        for number, path in _in_order(frames)
    ]
    columns = columns or math.ceil(math.sqrt(len(thumbs)))
    rows = math.ceil(len(thumbs) / columns)
    cell_height = max(thumb.shape[0] for thumb in thumbs)
    sheet = np.full(
        (
            rows * (cell_height + SHEET_GAP) + SHEET_GAP,
            columns * (thumb_width + SHEET_GAP) + SHEET_GAP,
            3,
        ),
        SHEET_BACKGROUND,
        dtype=np.uint8,
    )
    for index, thumb in enumerate(thumbs):
        row, column = divmod(index, columns)
        top = SHEET_GAP + row * (cell_height + SHEET_GAP)
        left = SHEET_GAP + column * (thumb_width + SHEET_GAP)
        sheet[top : top + thumb.shape[0], left : left + thumb_width] = thumb
    write_frame(out, Pixels(sheet, ("R", "G", "B")))
    return out


def _even(pixels: np.ndarray) -> np.ndarray:
    """yuv420p halves chroma in both directions, so x264 needs even sides: an odd side gains one
    row or column repeating its edge (no pixel of the frame is lost, no dark line bleeds in)."""
    height, width = pixels.shape[:2]
    return np.pad(pixels, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def movie(frames: list[tuple[int, Path]], out: Path, fps: float = 24) -> Path:
    """Write an H.264 MP4 (yuv420p, BT.709, crf 18, fast start) of ``(frame number, preview
    file)`` in frame order with each frame's number burnt in. Every preview must have the
    first one's size; an odd width or height is padded to even by repeating the edge. ``fps``
    may be fractional (23.976 is stored as 2997/125, 24000/1001 exactly). Returns ``out``."""
    if not fps > 0:
        raise FarmError(f"frames per second must be positive, not {fps}")
    temp = out.with_name(f".{out.stem}.{uuid.uuid4().hex[:8]}.part.mp4")
    try:
        with av.open(str(temp), "w", format="mp4", options={"movflags": "+faststart"}) as mp4:
            stream = None
            for number, path in _in_order(frames):
                pixels = _read_preview(path)
                if stream is None:
                    size = pixels.shape[:2]
                    stream = _h264_stream(mp4, size, fps)
                elif pixels.shape[:2] != size:
                    raise FarmError(
                        f"frame {number} is {pixels.shape[1]}×{pixels.shape[0]}, the movie "
                        f"{size[1]}×{size[0]}: every frame must have the same size"
                    )
                rgb = av.VideoFrame.from_ndarray(
                    _even(burn_in(pixels, str(number))), format="rgb24"
                )
                mp4.mux(stream.encode(_bt709(rgb)))
            mp4.mux(stream.encode())
        os.replace(temp, out)
    finally:
        temp.unlink(missing_ok=True)
    return out


def _h264_stream(
    mp4: av.container.OutputContainer, size: tuple[int, ...], fps: float
) -> av.VideoStream:
    """A libx264 stream for ``size`` (height, width) frames made even, tagged BT.709 limited
    range: what players assume for HD dailies."""
    rate = Fraction(fps).limit_denominator(1001)
    stream = mp4.add_stream("libx264", rate=rate, options={"crf": str(CRF)})
    stream.height, stream.width = (side + side % 2 for side in size)
    stream.pix_fmt = "yuv420p"
    context = stream.codec_context
    context.colorspace = Colorspace.ITU709
    context.color_range = ColorRange.MPEG
    context.color_primaries = ColorPrimaries.BT709
    context.color_trc = ColorTrc.BT709
    return stream


def _bt709(rgb: av.VideoFrame) -> av.VideoFrame:
    """RGB to limited-range BT.709 YUV; left to itself FFmpeg would use the BT.601 matrix."""
    return rgb.reformat(
        format="yuv420p",
        dst_colorspace=Colorspace.ITU709,
        dst_color_range=ColorRange.MPEG,
    )
