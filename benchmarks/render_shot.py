"""The example shot (24 frames) through ``farm render`` vs plain ``blender -b scene -a``, in one run.

Rows, each the best of ``ROUNDS`` runs, interleaved with the baseline on the same machine:

* ``blender -b shot.blend -a``: one Blender rendering every frame on every core (the baseline);
* ``farm render --tiles 2x2`` (and ``--tiles none``) on a running Ray cluster: lab mode, where the
  cluster is started once per lab, not per job;
* ``farm render --tiles 2x2`` in embedded mode, which starts and stops a local Ray for the job.

The shot is measured at its own 16 samples and again at 64 (frames four times longer), to separate
the farm's fixed start-up from its cost per task. Per-task overhead = (farm − Blender) / tasks.
Run: ``.venv/bin/python benchmarks/render_shot.py`` (about seven minutes on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from farm.config import SlotLayout, find_blender

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))  # the ray CLI of this environment
ROUNDS = 2


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"benchmark command failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


class Shot:
    """The example shot at some sample count, and the runs measured on it."""

    def __init__(self, blender: str, work: Path, samples: int) -> None:
        self.blender, self.samples = blender, samples
        self.folder = work / f"s{samples}"
        self.scene = self.folder / "shot.blend"
        builder = ROOT / "examples" / "build_shot.py"
        subprocess.run(
            [
                blender,
                "-b",
                "--factory-startup",
                "--python",
                str(builder),
                "--",
                str(self.scene),
                "--samples",
                str(samples),
            ],
            check=True,
            capture_output=True,
        )
        self.rows: dict[str, list[tuple[float, int, float]]] = {}

    def baseline(self) -> None:
        out = self.folder / "blender" / "f_####"
        seconds, _ = run([self.blender, "-b", str(self.scene), "-o", str(out), "-a"])
        self.rows.setdefault("blender -b shot.blend -a", []).append((seconds, 24, 0.0))

    def farm(self, name: str, tiles: str, env: dict[str, str]) -> None:
        out = self.folder / f"farm_{tiles}" / "f_####.exr"
        command = [sys.executable, "-m", "farm", "render", str(self.scene), "--json"]
        seconds, stdout = run([*command, "--tiles", tiles, "-o", str(out)], env)
        summary = json.loads(stdout)
        assert summary["written"] == 24, summary
        self.rows.setdefault(name, []).append(
            (seconds, summary["tasks"], summary["startup_seconds"])
        )

    def table(self) -> None:
        base = min(t for t, _, _ in self.rows["blender -b shot.blend -a"])
        print(f"\n{self.samples} samples a frame:\n")
        print(
            "| run | wall (s) | vs blender -a | tasks | farm start-up (s) | overhead per task (ms) |"
        )
        print("|---|---:|---:|---:|---:|---:|")
        for name, runs in self.rows.items():
            wall, tasks, startup = min(runs)
            overhead = (wall - base) / tasks * 1e3
            start = f"{startup:.2f}" if startup else "–"
            print(
                f"| {name} | {wall:.2f} | {wall / base:.3f} | {tasks} | {start} | {overhead:.0f} |"
            )


def main() -> None:
    blender = find_blender()
    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    layout = SlotLayout.resolve()
    short, long = Shot(blender, work, 16), Shot(blender, work, 64)
    subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
    try:
        for _ in range(ROUNDS):
            short.baseline()
            short.farm("farm render --tiles 2x2, embedded (starts its own Ray)", "2x2", env)
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--num-cpus={os.cpu_count()}",
                "--disable-usage-stats",
                "--include-dashboard=false",
            ],
            check=True,
            capture_output=True,
        )
        for _ in range(ROUNDS):
            for shot in (short, long):
                shot.baseline()
                shot.farm("farm render --tiles 2x2, running Ray cluster", "2x2", env)
                shot.farm("farm render --tiles none, running Ray cluster", "none", env)
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"Example shot: 24 frames at 320x180; {os.cpu_count()} cores; farm layout "
        f"{layout.slots} slot(s) x {layout.threads} thread(s); best of {ROUNDS} runs a row."
    )
    short.table()
    long.table()


if __name__ == "__main__":
    main()
