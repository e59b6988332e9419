"""Blender dies, hangs or fails for good: the farm retries, writes every frame once, or reports why."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from sqlalchemy import select

from farm.embedded.render import RunOptions, render
from farm.scheduler.kinds.base import Event
from farm.store.queries import job_logs
from farm.store.tables import Event as StoreEvent
from farm.store.tables import Job, open_store, session
from pipelines.render import RenderRequest, validate


def blenders_on(scene: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(scene) in part for part in cmdline) and "blender" in (
            process.info["name"] or ""
        ):
            found.append(process)
    return found


def run(
    blender: str,
    scene: Path,
    output: Path,
    on_event=None,
    stall: float = 60.0,
    store=None,
    **request,
):
    spec = validate(RenderRequest(scene=str(scene), output=str(output), **request))
    options = RunOptions(blender, slots=2, threads=1, stall_timeout=stall)
    return render(spec, options, on_event, store)


class Recorder:
    """Collects events; calls ``action`` once, in a thread, at the first event of ``kind``."""

    def __init__(self, kind: str, action) -> None:
        self.events: list[Event] = []
        self.kind, self.action, self.fired = kind, action, False

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.kind == self.kind and not self.fired:
            self.fired = True
            threading.Thread(target=self.action, daemon=True).start()

    def written(self) -> Counter:
        return Counter(e.frame for e in self.events if e.kind == "written")


def test_kill_9_blender_mid_render_retries_and_writes_each_frame_once(
    ray_local, blender, make_scene, tmp_path
) -> None:
    scene = make_scene(96, 54, samples=400, frames=4)
    killed: list[int] = []

    def kill_one() -> None:
        time.sleep(0.8)  # both slots are a second into a ~2 s frame
        victim = blenders_on(scene)[0]
        killed.append(victim.pid)
        victim.send_signal(signal.SIGKILL)

    recorder = Recorder("started", kill_one)
    summary = run(blender, scene, tmp_path / "f_####.exr", recorder, frames="1-4", tiles="none")
    assert killed, "no Blender was found to kill"
    assert summary.ok and summary.retries == 1
    assert recorder.written() == Counter({1: 1, 2: 1, 3: 1, 4: 1})
    retry = next(e for e in recorder.events if e.kind == "retry")
    assert "Blender exited with code -9" in retry.message
    assert "last lines:" in retry.message and "Fra:" in retry.message  # Blender's own log
    progress = [e.value for e in recorder.events if e.kind == "progress"]
    assert all(0 <= value <= 1 for value in progress) and max(progress) > 0  # from Blender's output
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f_{f:04d}.exr" for f in range(1, 5)]


def test_a_blender_that_prints_nothing_is_killed_and_the_tile_retried(
    ray_local, blender, make_scene, tmp_path
) -> None:
    scene = make_scene(96, 54, samples=4, frames=6)
    stopped: list[int] = []

    def freeze_one() -> None:
        victim = blenders_on(scene)[0]
        stopped.append(victim.pid)
        victim.send_signal(signal.SIGSTOP)

    recorder = Recorder("done", freeze_one)
    started = time.monotonic()
    summary = run(
        blender, scene, tmp_path / "f_####.exr", recorder, stall=3.0, frames="1-6", tiles="2x1"
    )
    assert stopped
    assert not psutil.pid_exists(stopped[0]) or psutil.Process(stopped[0]).status() == "zombie"
    assert summary.ok and summary.retries == 1
    assert recorder.written() == Counter({f: 1 for f in range(1, 7)})
    retry = next(e for e in recorder.events if e.kind == "retry")
    assert "printed nothing for 3 s" in retry.message
    assert time.monotonic() - started < 60


CRASHING_SCRIPT = """
import bpy, os
def crash(scene, *args):
    if scene.frame_current == 3:
        os._exit(3)
bpy.app.handlers.frame_change_pre.append(crash)
"""


@pytest.fixture(scope="module")
def crashing_scene(blender, make_scene, tmp_path_factory) -> Path:
    """The example shot with an embedded script that kills Blender on frame 3, if allowed to run."""
    path = tmp_path_factory.mktemp("crash") / "crash.blend"
    code = (
        "import bpy; t = bpy.data.texts.new('crash.py'); t.from_string(open(os.environ['SRC']).read()); "
        "t.use_module = True; bpy.ops.wm.save_as_mainfile(filepath=os.environ['OUT'])"
    )
    source = path.with_suffix(".py")
    source.write_text(CRASHING_SCRIPT)
    env = {**os.environ, "SRC": str(source), "OUT": str(path)}
    subprocess.run(
        [
            blender,
            "-b",
            str(make_scene(64, 36, samples=2, frames=4)),
            "--python-expr",
            "import os; " + code,
        ],
        check=True,
        capture_output=True,
        env=env,
    )
    return path


def test_embedded_scripts_do_not_run_unless_the_job_allows(
    ray_local, blender, crashing_scene, tmp_path
):
    summary = run(blender, crashing_scene, tmp_path / "f_####.exr", frames="1-4", tiles="none")
    assert summary.ok and summary.retries == 0


def test_a_frame_that_always_crashes_fails_after_its_retries(
    ray_local, blender, crashing_scene, tmp_path
):
    recorder = Recorder("never", lambda: None)
    summary = run(
        blender,
        crashing_scene,
        tmp_path / "f_####.exr",
        recorder,
        frames="1-4",
        tiles="none",
        allow_scripts=True,
        retries=1,
        store=f"sqlite:///{tmp_path / 'farm.db'}",
    )
    assert not summary.ok
    assert list(summary.failed) == [3]
    assert "Blender exited with code 3" in summary.failed[3]
    assert sorted(summary.written) == [1, 2, 4]
    assert [e.key for e in recorder.events if e.kind == "retry"] == ["f3"]
    assert not (tmp_path / "f_0003.exr").exists()
    # The store tells the same story, attempt by attempt.
    db = session(open_store(f"sqlite:///{tmp_path / 'farm.db'}"))
    job = db.scalars(select(Job)).one()
    assert job.state == "failed" and job.owner
    tasks = {t.key: t for t in job.tasks}
    assert {k: (t.state, t.attempts) for k, t in tasks.items()} == {
        "f1": ("done", 1),
        "f2": ("done", 1),
        "f3": ("failed", 2),
        "f4": ("done", 1),
    }
    assert [a.status for a in tasks["f3"].tries] == ["failed", "failed"]
    assert all("Blender exited with code 3" in a.error for a in tasks["f3"].tries)
    assert all(t.tries[0].node and t.tries[0].ended_at for t in tasks.values())
    written = db.scalars(select(StoreEvent.frame).where(StoreEvent.kind == "written"))
    assert sorted(written) == [1, 2, 4]  # what is on disk, for a restart to skip
    logs = job_logs(db, job.id, "f3")  # what `farm logs JOB --task f3` shows
    assert [(a["attempt"], a["status"]) for a in logs] == [(1, "failed"), (2, "failed")]
    assert all("last lines:" in a["log"] and "Fra:" in a["log"] for a in logs)


def test_a_killed_render_slot_is_replaced_and_its_blender_dies_with_it(
    ray_local, blender, make_scene, tmp_path
) -> None:
    scene = make_scene(96, 54, samples=400, frames=4)
    victims: list[tuple[int, int]] = []

    def kill_a_slot() -> None:
        time.sleep(0.8)
        blender_process = blenders_on(scene)[0]
        worker = blender_process.parent()  # the Ray worker process of the slot actor
        victims.append((worker.pid, blender_process.pid))
        worker.send_signal(signal.SIGKILL)

    recorder = Recorder("started", kill_a_slot)
    summary = run(blender, scene, tmp_path / "f_####.exr", recorder, frames="1-4", tiles="none")
    assert victims
    assert summary.ok and summary.retries == 1
    assert recorder.written() == Counter({1: 1, 2: 1, 3: 1, 4: 1})
    assert not psutil.pid_exists(victims[0][1])  # no orphan Blender left rendering
    assert blenders_on(scene) == []  # and none left behind by the job's end
