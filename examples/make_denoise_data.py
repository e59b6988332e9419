"""Render the training data of ``examples/train_denoise.py`` through the farm: the example shot at a
few samples a pixel (noisy) and at many (clean), as pairs of EXR frames that differ only in their
sample count (same scene, seed, resolution and frames), so what the model learns to remove is
Monte Carlo noise and nothing else.

    .venv/bin/python examples/make_denoise_data.py data/denoise [--frames 1-24]
        [--resolution 160x90] [--noisy-samples 4] [--clean-samples 128]

It builds the shot with Blender (``examples/build_shot.py``; ``$FARM_BLENDER``, else ``blender``)
into ``DATA/shot.blend`` unless that file is there, runs two ``farm render`` jobs writing
``DATA/noisy_####.exr`` and ``DATA/clean_####.exr`` (on this machine's embedded farm, or on the
lab's farm server when one is configured: then DATA must be an absolute path inside your output
folder on the lab's shared storage), and prints the ``farm train`` command that trains on them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

BUILDER = Path(__file__).resolve().parent / "build_shot.py"
TRAINER = Path(__file__).resolve().parent / "train_denoise.py"


def render_args(
    scene: Path, data: Path, kind: str, samples: int, frames: str, resolution: str
) -> list[str]:
    """The ``farm render`` arguments for one half of the pairs: ``kind`` is noisy or clean; both
    halves leave the seed and everything else as the scene has it."""
    return [
        "render",
        str(scene),
        "--frames",
        frames,
        "--resolution",
        resolution,
        "--samples",
        str(samples),
        "-o",
        str(data / f"{kind}_####.exr"),
    ]


def build_scene(scene: Path) -> None:
    """Build the example shot, as ``farm demo`` does, unless it is already there."""
    if scene.exists():
        return
    blender = os.environ.get("FARM_BLENDER") or shutil.which("blender")
    if not blender:
        sys.exit("make_denoise_data.py: no Blender: set FARM_BLENDER or put blender on PATH")
    command = [blender, "-b", "--factory-startup", "--python", str(BUILDER), "--", str(scene)]
    built = subprocess.run(command, capture_output=True, text=True)
    if built.returncode != 0 or not scene.exists():
        tail = (built.stdout + built.stderr).strip().splitlines()[-1:] or ["no output"]
        sys.exit(f"make_denoise_data.py: building the example shot failed: {tail[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder for the frames (and shot.blend)")
    parser.add_argument("--frames", default="1-24")
    parser.add_argument("--resolution", default="160x90")
    parser.add_argument("--noisy-samples", type=int, default=4)
    parser.add_argument("--clean-samples", type=int, default=128)
    args = parser.parse_args()
    data = args.data.absolute()  # the training workers read it by this path
    data.mkdir(parents=True, exist_ok=True)
    scene = data / "shot.blend"
    build_scene(scene)
    for kind, samples in (("noisy", args.noisy_samples), ("clean", args.clean_samples)):
        render = render_args(scene, data, kind, samples, args.frames, args.resolution)
        done = subprocess.run([sys.executable, "-m", "farm", *render])
        if done.returncode != 0:
            sys.exit(done.returncode)
    here = Path.cwd()
    trainer = TRAINER.relative_to(here) if TRAINER.is_relative_to(here) else TRAINER
    print(f"now train: farm train {trainer} --workers 2 --config data={data}")


if __name__ == "__main__":
    main()
