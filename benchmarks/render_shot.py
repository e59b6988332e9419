"""The example shot (24 frames) through ``farm render`` vs plain ``blender -b scene -a``, in one run.

Rows, each the best of ``ROUNDS`` interleaved runs on the same machine:

* ``blender -b shot.blend -a``: one Blender rendering every frame, every core (the baseline);
* ``farm render --tiles 2x2`` and ``--tiles none`` on a running Ray cluster (lab mode: the cluster is
  started once per lab, not per job);
* ``farm render --tiles 2x2`` in embedded mode, which starts and stops its own local Ray.

Per-task overhead = (farm wall time − Blender wall time) / tasks. Run:
``.venv/bin/python benchmarks/render_shot.py`` (about three minutes on two cores).
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


def timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"benchmark command failed: {' '.join(command)}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def main() -> None:
    blender = find_blender()
    work = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    scene = work / "shot.blend"
    subprocess.run(
        [
            blender,
            "-b",
            "--factory-startup",
            "--python",
            str(ROOT / "examples" / "build_shot.py"),
            "--",
            str(scene),
        ],
        check=True,
        capture_output=True,
    )
    farm = [sys.executable, "-m", "farm", "render", str(scene), "--json"]
    layout = SlotLayout.resolve()
    env = {**os.environ}
    env.pop("RAY_ADDRESS", None)

    def baseline() -> float:
        return timed([blender, "-b", str(scene), "-o", str(work / "blender" / "f_####"), "-a"])[0]

    def through_farm(tiles: str) -> tuple[float, int]:
        out = work / f"farm_{tiles}" / "f_####.exr"
        seconds, stdout = timed([*farm, "--tiles", tiles, "-o", str(out)], env)
        summary = json.loads(stdout)
        assert summary["written"] == 24, summary
        return seconds, summary["tasks"]

    rows: dict[str, list[float]] = {}
    tasks: dict[str, int] = {}

    def record(name: str, seconds: float, count: int = 24) -> None:
        rows.setdefault(name, []).append(seconds)
        tasks[name] = count

    subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
    for _ in range(ROUNDS):
        record("blender -b shot.blend -a", baseline())
        record("farm render --tiles 2x2, embedded (starts its own Ray)", *through_farm("2x2"))
    subprocess.run(
        [
            "ray",
            "start",
            "--head",
            f"--num-cpus={os.cpu_count()}",
            "--disable-usage-stats",
            "--include-dashboard=false",
        ],
        check=True,
        capture_output=True,
    )
    try:
        for _ in range(ROUNDS):
            record("blender -b shot.blend -a", baseline())
            record("farm render --tiles 2x2, running Ray cluster", *through_farm("2x2"))
            record("farm render --tiles none, running Ray cluster", *through_farm("none"))
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, check=False)
        shutil.rmtree(work, ignore_errors=True)

    base = min(rows["blender -b shot.blend -a"])
    print(
        f"Example shot: 24 frames, 320x180, 16 samples; {os.cpu_count()} cores; farm layout "
        f"{layout.slots} slot(s) x {layout.threads} thread(s); best of {ROUNDS * 2} baseline runs "
        f"and of {ROUNDS} runs for each farm row.\n"
    )
    print("| run | wall (s) | vs blender -a | tasks | overhead per task (ms) |")
    print("|---|---:|---:|---:|---:|")
    for name, times in rows.items():
        wall = min(times)
        overhead = (wall - base) / tasks[name] * 1e3
        print(f"| {name} | {wall:.2f} | {wall / base:.3f} | {tasks[name]} | {overhead:.0f} |")


if __name__ == "__main__":
    main()
