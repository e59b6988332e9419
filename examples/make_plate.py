"""Make a background plate sequence to comp the example shot over: a graded sky with drifting
bands of cloud, as linear ACEScg EXR frames (what a plate from set would be after ingest).

    .venv/bin/python examples/make_plate.py plates/sky_####.exr --resolution 320x180 --frames 24
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from farm.frames import OutputPattern
from farm.tiling.imagefile import Pixels, write_frame


def plate(width: int, height: int, frame: int) -> np.ndarray:
    """One frame: a vertical sky gradient, cloud bands drifting a pixel-fraction a frame."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    horizon = np.array([0.9, 0.75, 0.6], np.float32)
    zenith = np.array([0.15, 0.3, 0.8], np.float32)
    sky = zenith + (horizon - zenith) * y[:, :, None]
    drift = frame * 0.01
    clouds = 0.5 + 0.5 * np.sin(9.0 * (x + drift) + 3.0 * np.sin(5.0 * y))
    clouds = np.clip(clouds * (1.0 - y) * 1.4 - 0.4, 0.0, 1.0)[:, :, None]
    rgb = sky * (1.0 - clouds) + 1.2 * clouds
    alpha = np.ones((height, width, 1), np.float32)
    return np.concatenate([rgb, alpha], axis=2).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pattern", help="output pattern, #### = frame number, e.g. sky_####.exr")
    parser.add_argument("--resolution", default="320x180", help="WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=24)
    args = parser.parse_args()
    width, height = (int(v) for v in args.resolution.lower().split("x"))
    pattern = OutputPattern(args.pattern)
    for frame in range(1, args.frames + 1):
        path = pattern.path(frame)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_frame(path, Pixels(plate(width, height, frame), ("R", "G", "B", "A")), "zip")
    print(f"wrote {args.frames} frames: {pattern.path(1)} … {pattern.path(args.frames)}")


if __name__ == "__main__":
    main()
