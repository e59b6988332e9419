"""Per-frame compositing operations on scene-linear float pixels.

Pixels are float32 numpy arrays of shape (height, width, channels) with 3 (RGB) or 4 (RGBA)
channels, alpha *premultiplied* (associated), the convention of EXR, Cycles and every compositor:
that is what makes ``over`` a single multiply-add and lets linear operations (exposure,
saturation, resizing) touch colour without dividing by alpha first. An image without alpha is
opaque. Every operation returns a new array and leaves its inputs alone; bad input is refused
with a one-line :class:`~farm.errors.FarmError`.
"""

from __future__ import annotations

import numpy as np
import OpenImageIO as oiio

from farm.errors import FarmError

# Luminance weights for saturation: Rec.709 / sRGB primaries (the default: Blender's "Linear
# Rec.709" scene-linear space) and ACEScg (AP1) primaries, for comps in ACES. Saturation must
# turn around the luminance of the primaries the pixels are in, or greys drift in hue.
REC709_LUMA = (0.2126, 0.7152, 0.0722)
ACESCG_LUMA = (0.2722287168, 0.6740817658, 0.0536895174)


def _image(px: np.ndarray, name: str) -> np.ndarray:
    """``px`` as float32 (H, W, 3|4), or a one-line refusal naming what it is instead."""
    array = np.asarray(px, dtype=np.float32)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise FarmError(f"{name} must be height×width×3 or ×4 pixels, not shape {array.shape}")
    return array


def _size(px: np.ndarray) -> str:
    return f"{px.shape[1]}×{px.shape[0]}"


def _same_size(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[:2] != b.shape[:2]:
        raise FarmError(f"{names} differ in size: {_size(a)} and {_size(b)}")


def over(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Porter–Duff ``fg over bg`` on premultiplied pixels: ``fg + bg × (1 − fg.alpha)`` on every
    channel, alpha included. An fg without alpha is opaque (it hides bg). The result has bg's
    channels: over an opaque plate (RGB) the result is opaque, so its alpha would be all ones."""
    fg, bg = _image(fg, "fg"), _image(bg, "bg")
    _same_size(fg, bg, "fg and bg")
    if fg.shape[2] == 3:
        result = bg.copy()
        result[:, :, :3] = fg
        if bg.shape[2] == 4:
            result[:, :, 3] = 1.0
        return result
    behind = bg * (1.0 - fg[:, :, 3:4])
    behind[:, :, :3] += fg[:, :, :3]
    if bg.shape[2] == 4:
        behind[:, :, 3] += fg[:, :, 3]
    return behind


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum two passes (light groups, AOVs) channel by channel in RGB; light adds up linearly.

    Alpha is coverage, not light, so it is not summed: two passes of one render share their
    coverage, and summing would double it. The result's alpha is the larger of the two at each
    pixel (exactly the shared coverage, never above 1); an input without alpha carries no
    coverage, so the result has alpha only if an input has it, taken from the one that does.
    """
    a, b = _image(a, "a"), _image(b, "b")
    _same_size(a, b, "a and b")
    rgb = a[:, :, :3] + b[:, :, :3]
    alphas = [p[:, :, 3] for p in (a, b) if p.shape[2] == 4]
    if not alphas:
        return rgb
    return np.dstack([rgb, np.maximum.reduce(alphas)])


def grade(
    px: np.ndarray,
    exposure: float = 0.0,
    saturation: float = 1.0,
    luma: tuple[float, float, float] = REC709_LUMA,
) -> np.ndarray:
    """Exposure in stops (``rgb × 2**exposure``), then saturation around luminance
    (``Y + saturation × (rgb − Y)``, ``Y`` weighted by ``luma``: :data:`REC709_LUMA` by default,
    :data:`ACESCG_LUMA` for ACEScg pixels). Both are linear in the pixel, so applying them to
    premultiplied colour equals un-premultiplying, grading and premultiplying again. Alpha is
    untouched; saturation 0 gives grey, above 1 pushes colours apart."""
    px = _image(px, "px")
    result = px.copy()
    rgb = px[:, :, :3] * np.float32(2.0**exposure)
    y = rgb @ np.asarray(luma, dtype=np.float32)
    result[:, :, :3] = y[:, :, np.newaxis] + np.float32(saturation) * (rgb - y[:, :, np.newaxis])
    return result


def crop(px: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """The ``width``×``height`` box whose top-left pixel is (``x``, ``y``), y counted down from
    the top row as in numpy and OIIO. A copy, so the whole frame can be freed after."""
    px = _image(px, "px")
    rows, cols = px.shape[:2]
    if width < 1 or height < 1 or x < 0 or y < 0 or x + width > cols or y + height > rows:
        raise FarmError(
            f"crop box {width}×{height} at ({x}, {y}) is not inside the {cols}×{rows} image"
        )
    return px[y : y + height, x : x + width].copy()


def resize(px: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resample to ``width``×``height`` with OIIO's ``ImageBufAlgo.resize`` and its default
    filters: lanczos3 when shrinking (sharp, as proxies and thumbnails want) and blackman-harris
    when enlarging (smooth, without lanczos' visible ringing on enlarged plates). The filters are
    normalised, so a flat image stays flat; a sharp edge may overshoot by a few percent."""
    px = _image(px, "px")
    if width < 1 or height < 1:
        raise FarmError(f"cannot resize to {width}×{height}: both sides must be at least 1 pixel")
    channels = px.shape[2]
    source = oiio.ImageBuf(np.ascontiguousarray(px))
    roi = oiio.ROI(0, width, 0, height, 0, 1, 0, channels)
    result = oiio.ImageBufAlgo.resize(source, roi=roi)
    if result.has_error:
        raise FarmError(f"cannot resize {_size(px)} to {width}×{height}: {result.geterror()}")
    return result.get_pixels(oiio.FLOAT).reshape(height, width, channels)
