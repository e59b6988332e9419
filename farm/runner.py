"""Runs one render job on a Ray cluster: dispatch, streaming assembly, retries, atomic writes.

The driver keeps one warm :class:`~workers.render_slot.RenderSlot` per slot, hands each idle slot the
next task, and waits on all running tasks at once with ``ray.wait`` (no thread per task). Tiles are
pasted into their frame as they arrive; a frame is written the moment its last tile lands, on a
small writer pool so the dispatch loop never waits on a disk.
"""

from __future__ import annotations

import collections
import getpass
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from sqlalchemy.orm import Session

from farm import states
from farm.errors import FarmError
from farm.states import State
from farm.store import Event as StoreEvent
from farm.store import Job, Task, open_store, session
from farm.tiling.assemble import BufferPool, FrameAssembly
from farm.tiling.imagefile import Pixels, write_bytes, write_frame
from pipelines import render
from pipelines.render import JobPlan, RenderSpec, RenderTask
from workers.blender_session import BlenderError, SessionOptions
from workers.progress import ProgressChannel
from workers.render_slot import FrameOutput, RenderSlot, TaskResult

PROGRESS_TICK = 0.5  # seconds between drains of the progress channel
# Tasks queued on one slot: the next task waits in the actor's mailbox, so a slot never idles for
# a driver round trip between two tasks.
SLOT_DEPTH = 2


@dataclass(frozen=True)
class Event:
    """What the display and the JSON summary learn about a running job."""

    kind: str  # planned | started | progress | done | retry | failed | written
    key: str = ""
    frame: int | None = None
    value: float = 0.0
    message: str = ""
    plan: JobPlan | None = None


@dataclass(frozen=True)
class RunOptions:
    """How this run uses the cluster (not part of the job: the same job may run anywhere)."""

    blender: str
    slots: int
    threads: int
    stall_timeout: float = 600.0


@dataclass
class RunSummary:
    """Everything ``farm render --json`` prints."""

    job: int | None = None  # the job's id in the store
    frames: list[int] = field(default_factory=list)
    written: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    tasks: int = 0
    attempts: int = 0
    retries: int = 0
    tiled_frames: int = 0
    slots: int = 0
    threads: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # from the start to the first task sent: Ray, slots, Blender
    render_seconds: float = 0.0
    width: int = 0
    height: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and len(self.written) == len(self.frames)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.job,
            "state": State.DONE.value if self.ok else State.FAILED.value,
            "frames": len(self.frames),
            "written": len(self.written),
            "paths": [self.written[f] for f in sorted(self.written)],
            "failed": {str(f): reason for f, reason in sorted(self.failed.items())},
            "resolution": [self.width, self.height],
            "tasks": self.tasks,
            "attempts": self.attempts,
            "retries": self.retries,
            "tiled_frames": self.tiled_frames,
            "slots": self.slots,
            "threads_per_slot": self.threads,
            "seconds": round(self.seconds, 3),
            "seconds_per_frame": round(self.seconds / max(1, len(self.written)), 4),
            "startup_seconds": round(self.startup_seconds, 3),
            "render_seconds": round(self.render_seconds, 3),
        }


def ensure_ray(address: str | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a quiet local one (embedded mode)."""
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


def _one_line(error: BaseException) -> str:
    """The cause of a failed attempt, without Ray's wrapping."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    return str(error).strip() or type(error).__name__


class RenderRun:
    """One render job from validated spec to written frames."""

    def __init__(
        self,
        spec: RenderSpec,
        options: RunOptions,
        on_event: Callable[[Event], None] | None = None,
        store: str | None = None,  # the store's URL; None: an in-memory store for this run
        owner: str | None = None,
    ) -> None:
        self.spec = spec
        self.options = options
        self.on_event = on_event or (lambda event: None)
        self.summary = RunSummary(slots=options.slots, threads=options.threads)
        self.store_url = store or "sqlite://"
        self.db: Session | None = None  # opened once the job is valid: a refusal records nothing
        self.job = Job(
            kind="render",
            name=spec.scene.name,
            owner=owner or getpass.getuser(),
            state=State.QUEUED.value,
            spec=spec.as_json(),
        )
        self._pool = BufferPool()
        self._progress: Any = None
        self._drained = 0.0
        self._started = 0.0
        self._nodes: list[str] = []  # the Ray node of each slot

    @property
    def _store(self) -> Session:
        """The job's store session, open from planning on."""
        assert self.db is not None, "the job is stored once it is planned"
        return self.db

    def _add_task(self, task: RenderTask) -> Task:
        row = Task(
            job=self.job,
            key=task.key,
            state=State.QUEUED.value,
            payload={"frames": list(task.frames), "tile": task.tile},
        )
        self._store.add(row)
        return row

    def _new_slot(self, settings: dict[str, Any]) -> Any:
        opts = self.options
        gpu = settings.get("device", "CPU") != "CPU"
        session = SessionOptions(
            blender=opts.blender,
            scene=self.spec.scene.absolute(),
            threads=opts.threads,
            allow_scripts=self.spec.allow_scripts,
            stall_timeout=opts.stall_timeout,
        )
        actor = ray.remote(RenderSlot).options(num_cpus=opts.threads, num_gpus=1 if gpu else 0)
        return actor.remote(session, settings, self._progress)

    def run(self) -> RunSummary:
        self._started = time.monotonic()
        slots: list[Any] = []
        try:
            ensure_ray()
            self._check_cluster()
            self._progress = ray.remote(ProgressChannel).options(num_cpus=0).remote()
            slots = [self._new_slot(self.spec.overrides) for _ in range(self.options.slots)]
            plan = self._open(slots)
            self.db = session(open_store(self.store_url))
            self._store.add(self.job)
            self._store.commit()
            self.summary.job = self.job.id
            self.summary.frames = list(plan.frames)
            self.summary.width, self.summary.height = plan.width, plan.height
            self.on_event(Event("planned", plan=plan))
            self._dispatch(plan, slots)
        except BaseException as error:
            self._close(slots, graceful=False)  # Ctrl-C or an error: no waiting on busy slots
            if self.db is not None:
                ended = State.CANCELLED if isinstance(error, KeyboardInterrupt) else State.FAILED
                states.move_job(self._store, self.job, ended, message=_one_line(error))
            raise
        self._close(slots, graceful=True)
        self.summary.seconds = time.monotonic() - self._started
        return self.summary

    def _check_cluster(self) -> None:
        """Refuse a layout Ray could never place (its actors would wait forever)."""
        opts, device = self.options, self.spec.overrides.get("device", "CPU")
        gpus = ray.cluster_resources().get("GPU", 0)
        if device != "CPU" and gpus < opts.slots:
            raise FarmError(
                f"--device {device} needs one GPU per slot: the Ray cluster has {gpus:g} GPUs "
                f"for {opts.slots} slots (use --slots)"
            )
        nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
        if sum(nodes) < opts.slots * opts.threads or max(nodes, default=0) < opts.threads:
            raise FarmError(
                f"{opts.slots} slots × {opts.threads} threads need {opts.slots * opts.threads} CPUs "
                f"(at least {opts.threads} on one node); the Ray cluster has {sum(nodes):g} "
                f"on {len(nodes)} node(s)"
            )

    def _close(self, slots: list[Any], graceful: bool) -> None:
        """End every actor; gracefully first, so idle slots quit Blender and tidy up (a busy
        slot's Blender dies with its worker anyway)."""
        if graceful:
            ray.wait([slot.close.remote() for slot in slots], num_returns=len(slots), timeout=5)
        for actor in [*slots, self._progress]:
            if actor is not None:
                ray.kill(actor)

    def _open(self, slots: list[Any]) -> JobPlan:
        """Open the scene in every slot at once; validate the job against what Blender reports."""
        try:
            infos = ray.get([slot.open.remote() for slot in slots])
        except RayTaskError as error:
            cause = error.cause if isinstance(error.cause, BlenderError) else error
            lines = [line for line in str(cause).splitlines() if line.strip()]
            detail = next((line for line in reversed(lines) if "rror" in line), lines[-1])
            raise FarmError(f"Blender could not open {self.spec.scene}: {detail.strip()}") from None
        self._nodes = [info["node"] for info in infos]
        plan = render.plan(self.spec, infos[0], len(slots))
        if plan.settings != self.spec.overrides:
            ray.get([slot.open.remote(plan.settings) for slot in slots])
        return plan

    def _dispatch(self, plan: JobPlan, slots: list[Any]) -> None:
        spec, summary = self.spec, self.summary
        pending = collections.deque(plan.chunks())
        assemblies: dict[int, FrameAssembly] = {}
        if spec.tiles.kind in ("grid", "size"):  # every frame in the job's tiles, from the start
            tile_plan = plan.tile_plan()
            assemblies = {f: FrameAssembly(tile_plan, self._pool) for f in plan.frames}
            tiled = (plan.tile_tasks(c.frames[0], tile_plan) for c in pending)
            pending = collections.deque(t for tiles in tiled for t in tiles)
        records = {task.key: self._add_task(task) for task in pending}
        self._store.commit()
        resources = {"CPU": self.options.threads}
        if plan.settings.get("device", "CPU") != "CPU":
            resources["GPU"] = 1
        load = [0] * len(slots)  # tasks queued on each slot
        # Replacement slots get work only once Ray has placed them and Blender is open: a node
        # gone with no room elsewhere must not strand tasks on a slot that never starts.
        opening: dict[ray.ObjectRef, int] = {}
        dropped: dict[int, str] = {}  # slots that could not start again, and why
        running: dict[ray.ObjectRef, tuple[RenderTask, int, Any, int]] = {}
        sequence = itertools.count()  # dispatch order: a slot runs its tasks in this order
        died_running: dict[Any, int] = {}  # dead slot → the task it was running when it died
        writes: dict[Future[None], tuple[int, FrameAssembly | None]] = {}
        whole_frames_waiting = sum(1 for t in pending if t.tile is None)

        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="farm-write") as writer:
            while pending or running or writes:
                while pending and (usable := self._usable(load, opening, dropped)):
                    task = pending.popleft()
                    if task.tile is None:
                        whole_frames_waiting -= 1
                        count = 1
                        if spec.tiles.kind == "auto" and len(task.frames) == 1:
                            free = sum(1 for i in usable if load[i] == 0)
                            count = render.auto_tile_count(whole_frames_waiting + 1, free)
                        if count > 1:
                            tile_plan = plan.tile_plan(count)
                            assemblies[task.frames[0]] = FrameAssembly(tile_plan, self._pool)
                            tiles = plan.tile_tasks(task.frames[0], tile_plan)
                            # The frame's task never ran: its tiles replace it.
                            self._store.delete(records.pop(task.key))
                            records.update((t.key, self._add_task(t)) for t in tiles)
                            self._store.commit()
                            pending.extendleft(reversed(tiles))
                            summary.tiled_frames += 1
                            continue
                    index = min(usable, key=load.__getitem__)
                    load[index] += 1
                    if self.job.state == State.QUEUED:
                        states.move_job(self._store, self.job, State.RUNNING)
                    states.move_task(
                        self._store,
                        records[task.key],
                        State.RUNNING,
                        node=self._nodes[index],
                        resources=resources,
                    )
                    if not summary.startup_seconds:
                        summary.startup_seconds = time.monotonic() - self._started
                    ref = slots[index].render.remote(task)
                    running[ref] = (task, index, slots[index], next(sequence))
                    self.on_event(Event("started", task.key, task.frames[0]))

                self._drain_progress()
                ready = self._wait([*running, *opening], writes)
                for ref in [r for r in ready if r in opening]:
                    index = opening.pop(ref)
                    try:
                        self._nodes[index] = ray.get(ref)["node"]
                    except (RayActorError, RayTaskError) as error:
                        dropped[index] = _one_line(error)  # no more work for it in this job
                if pending and not running and not opening and len(dropped) == len(slots):
                    reason = f"no render slot could start: {next(iter(dropped.values()))}"
                    for task in pending:  # nothing is left to run the rest
                        states.move_task(self._store, records[task.key], State.FAILED, error=reason)
                        self.summary.failed.update(dict.fromkeys(task.frames, reason))
                        self.on_event(Event("failed", task.key, task.frames[0], message=reason))
                    pending.clear()
                for ref in sorted((r for r in ready if r in running), key=lambda r: running[r][3]):
                    task, index, actor, seq = running.pop(ref)
                    load[index] -= 1
                    record = records[task.key]
                    try:
                        result: TaskResult = ray.get(ref)
                    except RayActorError as error:
                        if slots[index] is actor:
                            ray.kill(actor)  # its process died: a fresh slot takes its place
                            slots[index] = self._new_slot(plan.settings)
                            opening[slots[index].open.remote()] = index
                        if seq != died_running.setdefault(
                            actor, min([seq, *(s for _, _, a, s in running.values() if a == actor)])
                        ):
                            # It was queued behind the task the slot died running.
                            states.unstart(self._store, record)
                            pending.appendleft(task)
                            continue
                        self._failed(task, record, _one_line(error), pending)
                        continue
                    except RayTaskError as error:
                        self._failed(task, record, _one_line(error), pending)
                        continue
                    self._nodes[index] = result.node
                    states.move_task(self._store, record, State.DONE, node=result.node)
                    self.on_event(Event("done", task.key, task.frames[0]))
                    for output in result.outputs:
                        summary.render_seconds += output.seconds
                        written = self._collect(plan, output, assemblies, writer)
                        if written is not None:
                            writes[written[0]] = (output.frame, written[1])
                self._finish_writes(plan, writes)

        summary.tasks = len(records)
        summary.attempts = sum(r.attempts for r in records.values())
        summary.retries = summary.attempts - summary.tasks
        states.move_job(self._store, self.job, State.DONE if summary.ok else State.FAILED)

    @staticmethod
    def _usable(
        load: list[int], opening: dict[ray.ObjectRef, int], dropped: dict[int, str]
    ) -> list[int]:
        """Slots that can take another task: placed, open, and with room in their queue."""
        unusable = set(opening.values()) | dropped.keys()
        return [i for i, n in enumerate(load) if n < SLOT_DEPTH and i not in unusable]

    def _wait(self, refs: list[ray.ObjectRef], writes: dict[Future[None], Any]) -> list:
        """Block until a task or a slot's start finishes (or a progress tick passes)."""
        if not refs:
            if writes:
                next(iter(writes)).exception()
            return []
        ready, _ = ray.wait(refs, num_returns=1, timeout=PROGRESS_TICK)
        if ready and len(refs) > 1:
            more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        return ready

    def _collect(
        self,
        plan: JobPlan,
        output: FrameOutput,
        assemblies: dict[int, FrameAssembly],
        writer: ThreadPoolExecutor,
    ) -> tuple[Future[None], FrameAssembly | None] | None:
        """Paste a tile or take a whole frame; start the write when a frame is complete."""
        path = plan.output(output.frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        if output.tile is None:
            assert output.data is not None
            return writer.submit(write_bytes, path, output.data), None
        assembly = assemblies[output.frame]
        assert output.pixels is not None
        assembly.add(output.tile, output.pixels.data)
        if not assembly.complete:
            return None
        frame_pixels = Pixels(assembly.frame(), output.pixels.channels, output.pixels.metadata)
        image = plan.image
        future = writer.submit(write_frame, path, frame_pixels, image.compression, image.quality)
        return future, assembly

    def _finish_writes(self, plan: JobPlan, writes: dict[Future[None], Any]) -> None:
        for future in [f for f in writes if f.done()]:
            frame, assembly = writes.pop(future)
            if assembly is not None:
                assembly.release()
            error = future.exception()
            if error is not None:
                self.summary.failed[frame] = f"could not write {plan.output(frame)}: {error}"
                self.on_event(Event("failed", frame=frame, message=self.summary.failed[frame]))
                continue
            path = str(plan.output(frame))
            self._store.add(
                StoreEvent(job_id=self.job.id, kind="written", frame=frame, message=path)
            )
            self._store.commit()
            self.summary.written[frame] = path
            self.on_event(Event("written", frame=frame, message=path))

    def _failed(
        self,
        task: RenderTask,
        record: Task,
        reason: str,
        pending: collections.deque[RenderTask],
    ) -> None:
        """Retry the task on the next free slot, or give its frames up once retries are spent."""
        if record.attempts <= self.spec.retries:
            states.move_task(self._store, record, State.QUEUED, error=reason)
            pending.appendleft(task)
            self.on_event(Event("retry", task.key, task.frames[0], message=reason))
            return
        states.move_task(self._store, record, State.FAILED, error=reason)
        for frame in task.frames:
            self.summary.failed[frame] = reason.splitlines()[0]
        self.on_event(Event("failed", task.key, task.frames[0], message=reason))

    def _drain_progress(self) -> None:
        """Pass Blender's progress on, at most every PROGRESS_TICK seconds (each drain is a call)."""
        assert self._progress is not None
        now = time.monotonic()
        if now - self._drained < PROGRESS_TICK:
            return
        self._drained = now
        for key, fraction in ray.get(self._progress.drain.remote()).items():
            self.on_event(Event("progress", key, value=fraction))
