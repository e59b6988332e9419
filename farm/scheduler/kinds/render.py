"""A render job in the scheduler: planning against the scene, tiles, streaming assembly, writes.

Tiles are pasted into their frame as they arrive; a frame is written the moment its last tile lands,
on the scheduler's writer pool so the dispatch loop never waits on a disk. A frame counts as done
only once it is on disk (a ``written`` event in the store): a tile's pixels live in memory until
then, so a restarted scheduler renders again every task of a frame that was not written.
"""

from __future__ import annotations

import math
from concurrent.futures import Future
from typing import Any

from farm.errors import FarmError
from farm.scheduler.kinds.base import ActiveJob, Event, Loop, Start
from farm.scheduler.slots import SlotProfile
from farm.store import states
from farm.store.queries import written_frames
from farm.store.states import State, TaskRef
from farm.store.tables import Event as StoreEvent
from farm.store.tables import Job, Task
from farm.tiling.assemble import FrameAssembly
from farm.tiling.imagefile import Pixels, write_bytes, write_frame
from pipelines import render
from pipelines.render import JobPlan, RenderSpec, RenderTask
from workers.render_slot import FrameOutput, TaskResult
from workers.scene_cache import Bundle

# Tasks queued on one slot: the next task waits in the actor's mailbox, so a slot never idles for
# a driver round trip between two tasks.
SLOT_DEPTH = 2
SLOT_START_FAILURES = 3  # slots of a job that fail to start in a row before its tasks fail


def uploaded_origin(digest: str) -> str:
    """Where a scene uploaded alone (no path of its own) lies in its node's tree."""
    return f"/uploaded/{digest}.blend"


def bundle_of(run: dict[str, Any]) -> Bundle | None:
    """An uploaded scene's bundle as its submission stored it (older jobs: the scene alone)."""
    digest = run.get("digest")
    if digest is None:
        return None
    origin = run.get("origin") or uploaded_origin(digest)
    files = run.get("files") or [[origin, digest]]
    return Bundle(origin, tuple((path, sha) for path, sha in files))


class RenderJob(ActiveJob):
    kind = "render"
    profile: SlotProfile  # always: the slots its tasks render on

    def __init__(self, row: Job, tasks: list[TaskRef], written: dict[int, str]) -> None:
        self.spec = RenderSpec.from_json(row.spec)
        super().__init__(row, tasks, self.spec.retries)
        run = row.spec.get("run", {})
        self.threads: int = run.get("threads", 1)
        self.max_slots: int | None = run.get("slots")
        self.stall_timeout: float = run.get("stall_timeout", 600.0)
        self.lab: str | None = run.get("lab")
        self.bundle = bundle_of(run)  # the scene was uploaded, with the files it uses
        self.memory: int = run.get("memory") or 0
        self.plan: JobPlan | None = None
        self.written = dict(written)  # frame → path: on disk
        self.failed: dict[int, str] = {}
        self.tiled_frames = 0
        self.render_seconds = 0.0  # what the slots spent rendering and decoding
        self.assemblies: dict[int, FrameAssembly] = {}
        self.writes: dict[Future[None], tuple[int, FrameAssembly | None]] = {}
        self.profile = self._profile(
            render.blender_settings(self.spec, self.spec.format != "exr", self._slot_guess)
        )
        self.planning = False  # a slot is opening the scene for this job
        self.start_failures = 0  # slots that failed to start in a row

    @classmethod
    def take_up(cls, loop: Loop, row: Job, tasks: list[TaskRef]) -> RenderJob:
        """A planned job is planned again from what its scene reported (stored with the job), and
        tasks whose frames never reached the disk render again."""
        job = cls(row, tasks, written_frames(loop.db, row.id))
        if row.plan is not None:
            job.planned(loop, row.plan)
            job.recover(loop)
        return job

    @property
    def _slot_guess(self) -> int:
        return self.max_slots or 2

    def _profile(self, settings: dict[str, Any]) -> SlotProfile:
        return SlotProfile.of(
            self.spec.scene,
            self.threads,
            settings,
            self.spec.allow_scripts,
            self.stall_timeout,
            self.lab,
            self.bundle,
            self.memory,
        )

    @property
    def has_plan(self) -> bool:
        return self.plan is not None

    @property
    def needs(self) -> dict[str, float]:
        return self.profile.resources

    @property
    def busy(self) -> bool:
        return bool(self.writes)

    # Planning: what Blender says of the scene fixes frames, formats and tiles.

    def planned(self, loop: Loop, info: dict[str, Any]) -> None:
        """Plan the job from the scene info a slot reported; create its tasks on first planning."""
        plan = render.plan(self.spec, info, self._slot_guess)
        self.plan = plan
        self.profile = self._profile(plan.settings)
        db = loop.db
        if self.row.plan is None:
            chunks = plan.chunks()
            if self.spec.tiles.kind in ("grid", "size"):
                tile_plan = plan.tile_plan()
                chunks = [t for c in chunks for t in plan.tile_tasks(c.frames[0], tile_plan)]
            rows = [
                Task(
                    job_id=self.id,
                    key=t.key,
                    state=State.QUEUED.value,
                    payload={"frames": list(t.frames), "tile": t.tile},
                )
                for t in chunks
            ]
            db.add_all(rows)
            stored = db.get(Job, self.id)
            assert stored is not None
            stored.plan = info
            db.commit()
            self.row.plan = info
            self.add_tasks([TaskRef.of(r) for r in rows])
        loop.emit(Event("planned", self.id, plan=plan))

    def recover(self, loop: Loop) -> None:
        """After a restart: tasks whose frames never reached the disk render again."""
        again = [
            t
            for t in self.tasks.values()
            if t.state is State.DONE and not set(t.payload["frames"]) <= self.written.keys()
        ]
        states.move(loop.db, again, State.QUEUED, "its frame was not written before the stop")
        for task in sorted(again, key=lambda t: t.id, reverse=True):
            self.requeue(task)

    # Placing tasks on slots.

    def place(self, loop: Loop, starts: list[Start], room: float) -> None:
        pool = loop.pool
        if self.plan is None:
            self._plan_from_pool(loop)
            if self.plan is None:
                if not self.planning and loop.grow(self, self.profile) is not None:
                    self.planning = True
                return
        if self.queued:  # first the slots the work wants: an auto still splits across them all
            mine = len(pool.of(self.profile))
            wanted = min(self.max_slots or math.inf, self.in_flight + room)
            if self.spec.tiles.kind != "auto":
                wanted = min(wanted, len(self.queued))
            while mine < wanted and loop.grow(self, self.profile) is not None:
                mine += 1
        opening = sum(1 for s in pool.of(self.profile) if not s.ready)
        usable = pool.usable(self.profile, self.blocked, SLOT_DEPTH)
        while self.queued and usable and room > 0:
            free = opening + sum(1 for s in usable if s.load == 0)
            task = self._next(loop, free)
            slot = min(usable, key=lambda s: s.load)
            slot.load += 1
            starts.append(Start(self, task, slot, self.profile.resources))
            usable = [s for s in usable if s.load < SLOT_DEPTH]
            room -= 1

    def _plan_from_pool(self, loop: Loop) -> None:
        """A slot already open on the same scene file knows what planning needs."""
        for slot in loop.pool.slots:
            same = (slot.profile.scene, slot.profile.stamp) == (
                self.profile.scene,
                self.profile.stamp,
            )
            if same and slot.ready:
                self._plan(loop, slot.info)
                return

    def _plan(self, loop: Loop, info: dict[str, Any]) -> None:
        """Plan from scene info; a job the scene refuses fails before it runs."""
        try:
            self.planned(loop, info)
        except FarmError as error:
            loop.refuse(self, str(error))

    def slot_opened(self, loop: Loop, info: dict[str, Any]) -> None:
        self.start_failures = 0
        if self.plan is None:
            self._plan(loop, info)
        self.planning = False

    def slot_failed(self, loop: Loop, blender_refused: str | None) -> None:
        """Before planning, Blender's refusal of the scene fails the job; after, slots that keep
        failing to start (Blender missing on a node, say) fail the job's rest."""
        if blender_refused is None:  # Ray lost the slot: another will be started
            self.planning = False
            return
        if self.plan is None:
            loop.refuse(self, blender_refused)
            return
        self.start_failures += 1
        if self.start_failures < SLOT_START_FAILURES:
            return
        reason = f"no render slot could start: {blender_refused}"
        stuck = list(self.queued)
        self.queued.clear()
        states.move(loop.db, stuck, State.FAILED, reason)
        for task in stuck:
            self.failed_for_good(loop, task, reason)
            loop.emit(Event("failed", self.id, task.key, task.payload["frames"][0], message=reason))

    def _next(self, loop: Loop, free_slots: int) -> TaskRef:
        """The next task; with ``--tiles auto``, the last few frames split to fill free slots."""
        assert self.plan is not None
        task = self.queued.popleft()
        if self.spec.tiles.kind != "auto" or task.payload["tile"] is not None:
            return task
        if len(task.payload["frames"]) != 1:
            return task
        frames_left = 1 + sum(1 for t in self.queued if t.payload["tile"] is None)
        count = render.auto_tile_count(frames_left, free_slots)
        if count <= 1:
            return task
        frame = task.payload["frames"][0]
        tiles = self.plan.tile_tasks(frame, self.plan.tile_plan(count))
        db = loop.db
        stored = db.get(Task, task.id)
        db.delete(stored)  # the frame's task never ran: its tiles replace it
        rows = [
            Task(
                job_id=self.id,
                key=t.key,
                state=State.QUEUED.value,
                payload={"frames": [frame], "tile": t.tile, "split": count},
            )
            for t in tiles
        ]
        db.add_all(rows)
        db.commit()
        del self.tasks[task.key]
        refs = [TaskRef.of(r) for r in rows]
        self.tasks.update((r.key, r) for r in refs)
        self.tiled_frames += 1
        self.queued.extendleft(reversed(refs[1:]))
        return refs[0]

    def render_task(self, task: TaskRef) -> RenderTask:
        """The slot's work for a stored task (a restart rebuilds it from the key and the plan)."""
        assert self.plan is not None
        frames = tuple(task.payload["frames"])
        if task.payload["tile"] is None:
            return self.plan.frame_task(frames)
        tile_plan = self.plan.tile_plan(task.payload.get("split"))
        return self.plan.tile_tasks(frames[0], tile_plan)[task.payload["tile"]]

    def launch(self, loop: Loop, start: Start) -> Any:
        assert start.slot is not None
        # Progress and output reach the channel as "job/attempt/task".
        channel = f"{self.id}/{start.task.attempts}/"
        return start.slot.actor.render.remote(self.render_task(start.task), channel)

    # Results.

    def succeeded(self, loop: Loop, task: TaskRef, result: TaskResult) -> None:
        assert self.plan is not None
        for output in result.outputs:
            self.render_seconds += output.seconds
            future = self._collect(loop, output)
            if future is not None:
                self.writes[future[0]] = (output.frame, future[1])

    def _collect(
        self, loop: Loop, output: FrameOutput
    ) -> tuple[Future[None], FrameAssembly | None] | None:
        """Paste a tile or take a whole frame; start the write when a frame is complete."""
        plan = self.plan
        assert plan is not None
        path = plan.output(output.frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        if output.tile is None:
            assert output.data is not None
            return loop.writer.submit(write_bytes, path, output.data), None
        assembly = self.assemblies.get(output.frame)
        if assembly is None:
            split = self.tasks[f"f{output.frame}.t{output.tile}"].payload.get("split")
            assembly = FrameAssembly(plan.tile_plan(split), loop.buffers)
            self.assemblies[output.frame] = assembly
        assert output.pixels is not None
        assembly.add(output.tile, output.pixels.data)
        if not assembly.complete:
            return None
        del self.assemblies[output.frame]
        pixels = Pixels(assembly.frame(), output.pixels.channels, output.pixels.metadata)
        image = plan.image
        future = loop.writer.submit(write_frame, path, pixels, image.compression, image.quality)
        return future, assembly

    def settle(self, loop: Loop) -> None:
        """Record the frames whose writes have finished (or say why they could not be written)."""
        assert self.plan is not None
        for future in [f for f in self.writes if f.done()]:
            frame, assembly = self.writes.pop(future)
            if assembly is not None:
                assembly.release()
            error = future.exception()
            path = str(self.plan.output(frame))
            if error is not None:
                self.failed[frame] = f"could not write {path}: {error}"
                loop.emit(Event("failed", self.id, frame=frame, message=self.failed[frame]))
                continue
            loop.db.add(StoreEvent(job_id=self.id, kind="written", frame=frame, message=path))
            loop.db.commit()
            self.written[frame] = path
            loop.emit(Event("written", self.id, frame=frame, message=path))

    def forget(self, task: TaskRef) -> None:
        super().forget(task)
        for frame in task.payload["frames"]:
            self.failed.pop(frame, None)

    def failed_for_good(self, loop: Loop, task: TaskRef, reason: str) -> None:
        for frame in task.payload["frames"]:
            self.failed[frame] = reason.splitlines()[0]

    def outcome(self) -> tuple[State, str]:
        frames = self.plan.frames if self.plan else ()
        missing = [f for f in frames if f not in self.written]
        if self.failed or missing or self.plan is None:
            failed = len(set(self.failed) | set(missing))
            return State.FAILED, f"{failed} of {len(frames)} frames failed"
        return State.DONE, ""

    def close(self, loop: Loop) -> None:
        for assembly in self.assemblies.values():
            assembly.release()
        self.assemblies.clear()
