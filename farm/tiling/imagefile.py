"""Reading tiles and writing frames with OpenImageIO; every write is atomic.

A frame appears under its final name only once it is complete (temp file in the same folder, then
``os.replace``), so a crash, a kill or a retry never leaves a half-written frame where a compositor
or a reviewer would pick it up.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import OpenImageIO as oiio

_OIIO_TYPES = {
    np.dtype(np.float32): oiio.FLOAT,
    np.dtype(np.float16): oiio.HALF,
    np.dtype(np.uint8): oiio.UINT8,
    np.dtype(np.uint16): oiio.UINT16,
}


@dataclass
class Pixels:
    """Decoded pixels and what a writer needs to reproduce the file: channel names, stamp metadata."""

    data: np.ndarray
    channels: tuple[str, ...]
    metadata: dict[str, str] = field(default_factory=dict)


def _is_stamp(name: str) -> bool:
    """Blender's stamp metadata (Frame, Camera, RenderTime, …), not format-specific attributes."""
    return ":" not in name and name.lower() not in ("compression", "oiio:colorspace")


def _keep_alpha_as_stored() -> oiio.ImageSpec:
    """PNG stores straight alpha; OIIO would premultiply on read and divide on write, losing bits."""
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)
    return config


def read_pixels(path: Path, as_float: bool = False) -> Pixels:
    """Decode an image exactly as stored: its own pixel type (or float32 scaled to [0, 1] for
    integer files, ``as_float``), its own alpha convention."""
    image = oiio.ImageInput.open(str(path), _keep_alpha_as_stored())
    if image is None:
        raise OSError(f"cannot read {path}: {oiio.geterror()}")
    try:
        spec = image.spec()
        data = image.read_image(0, 0, 0, spec.nchannels, oiio.FLOAT if as_float else spec.format)
        if data is None:
            raise OSError(f"cannot decode {path}: {image.geterror()}")
        metadata = {
            a.name: a.value
            for a in spec.extra_attribs
            if isinstance(a.value, str) and _is_stamp(a.name)
        }
        return Pixels(
            data.reshape(spec.height, spec.width, spec.nchannels), spec.channelnames, metadata
        )
    finally:
        image.close()


def _temp_beside(path: Path) -> Path:
    """A hidden temp name in the same folder that keeps the extension (OIIO picks the format by it)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.part{path.suffix}")


def write_frame(
    path: Path,
    pixels: Pixels,
    compression: str | None = None,
    quality: int | None = None,
) -> None:
    """Write a whole frame once, atomically: EXR (``compression`` e.g. zip), PNG or JPEG."""
    data = pixels.data if pixels.data.ndim == 3 else pixels.data[:, :, np.newaxis]
    height, width, nchannels = data.shape
    spec = oiio.ImageSpec(width, height, nchannels, _OIIO_TYPES[data.dtype])
    spec.channelnames = pixels.channels
    for name, value in pixels.metadata.items():
        spec.attribute(name, value)
    if data.dtype.kind == "u":
        spec.attribute("oiio:UnassociatedAlpha", 1)  # 8/16-bit pixels hold straight alpha
    if compression:
        spec.attribute("compression", compression)
    if quality is not None:
        spec.attribute("Compression", f"jpeg:{quality}")
    temp = _temp_beside(path)
    try:
        out = oiio.ImageOutput.create(str(temp))
        if out is None:
            raise OSError(f"cannot write {path}: {oiio.geterror()}")
        ok = out.open(str(temp), spec) and out.write_image(data)
        error = out.geterror()
        out.close()
        if not ok:
            raise OSError(f"cannot write {path}: {error}")
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file Blender already encoded, atomically and byte for byte."""
    temp = _temp_beside(path)
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
