"""Shared fixtures: a real Blender, a real local Ray, and small scenes built by the example builder."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import pytest
import ray

from farm.config import find_blender
from farm.runner import ensure_ray

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "examples" / "build_shot.py"


@pytest.fixture(scope="session")
def blender() -> str:
    return find_blender()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session: starting Ray costs seconds."""
    ensure_ray()
    yield
    ray.shutdown()


SceneMaker = Callable[..., Path]


@pytest.fixture(scope="session")
def make_scene(blender: str, tmp_path_factory: pytest.TempPathFactory) -> SceneMaker:
    """Build (once per set of arguments) the example shot at a test-sized resolution."""
    folder = tmp_path_factory.mktemp("scenes")
    built: dict[tuple, Path] = {}

    def make(width: int = 96, height: int = 54, samples: int = 4, frames: int = 24) -> Path:
        key = (width, height, samples, frames)
        if key not in built:
            path = folder / f"shot_{width}x{height}_{samples}s_{frames}f.blend"
            subprocess.run(
                [
                    blender,
                    "-b",
                    "--factory-startup",
                    "--python",
                    str(BUILDER),
                    "--",
                    str(path),
                    "--resolution",
                    f"{width}x{height}",
                    "--samples",
                    str(samples),
                    "--frames",
                    str(frames),
                ],
                check=True,
                capture_output=True,
            )
            built[key] = path
        return built[key]

    return make


def blender_render(blender: str, scene: Path, frame: int, out: Path, python: str = "") -> Path:
    """Blender's own full-frame render of ``frame``: the reference the farm must match."""
    command = [blender, "-b", "--factory-startup", str(scene)]
    if python:
        command += ["--python-expr", python]
    command += ["-o", str(out.with_suffix("")) + "_####", "-f", str(frame)]
    subprocess.run(command, check=True, capture_output=True)
    return out.parent / f"{out.with_suffix('').name}_{frame:04d}{out.suffix}"


def pixels(path: Path) -> np.ndarray:
    """Decode an image as stored: its own pixel type, straight alpha left straight."""
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)
    image = oiio.ImageInput.open(str(path), config)
    assert image is not None, oiio.geterror()
    spec = image.spec()
    data = image.read_image(0, 0, 0, spec.nchannels, spec.format)
    image.close()
    return data
