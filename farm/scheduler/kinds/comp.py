"""A comp job in the scheduler: planned against its files when it may first run, one Ray task a
frame, and the review once every frame is done.

Planning reads image headers only (milliseconds a frame); it waits until the job is released, so a
comp chained after a render plans on the frames that render wrote. The preview transform is baked
once, at planning, and shared with every frame task through Ray's object store.

No shared drive is needed (as for renders): the scheduler, beside the server's folders, reads the
files a task needs when it launches it (a frame's file of each input; the review's previews) and
puts each in Ray's object store (a still plate once a job); the node works in a folder of its own
and returns what it made, which the writer pool writes atomically where the job's paths point. A
task's outputs count (``written``/``output`` events, what ``farm fetch`` serves) once on disk; the
review starts once every frame's are. A restarted scheduler makes again a frame or a review whose
outputs never reached the disk.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import ray
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.errors import FarmError
from farm.frames import OutputPattern
from farm.labs import LAB_SHARE, avoiding, lab_resource
from farm.scheduler.kinds.base import ActiveJob, Event, Loop, Start
from farm.store import states
from farm.store.queries import comp_outputs, written_frames
from farm.store.states import State, TaskRef
from farm.store.tables import Event as StoreEvent
from farm.store.tables import Job, Task
from farm.tiling.imagefile import write_bytes
from pipelines import comp
from pipelines.comp import CompPlan, CompSpec
from workers.comp import (
    bake_preview,
    frame_inputs,
    frame_task,
    header,
    review_inputs,
    review_task,
)

CPUS = 1.0  # a comp frame is numpy and OpenImageIO on one core
# Baking a preview costs about 3 s of OCIO on two cores (10 million evaluations); OCIO's own
# processor costs about 0.4 µs a pixel, so the bake pays for itself after about four 1080p frames
# (benchmarks/comp.py). Below this many pixels in a job, frames use OCIO's processor directly.
BAKE_PAYS = 10_000_000
KEEP_BAKES = 8  # baked previews kept by transform: the next comp with the same view bakes none
_BAKES: dict[tuple[str, str, str | None, str | None], Any] = {}
_frame = ray.remote(frame_task)
_review = ray.remote(review_task)
_bake = ray.remote(bake_preview)


class CompJob(ActiveJob):
    kind = "comp"

    def __init__(self, row: Job, tasks: list[TaskRef]) -> None:
        spec = dict(row.spec)
        self.lab: str | None = spec.pop("lab", None)
        self.spec = CompSpec.from_json(spec)
        super().__init__(row, tasks, self.spec.retries)
        self.plan = CompPlan.from_json(self.spec, row.plan) if row.plan is not None else None
        self._preview: Any = None  # the baked preview, in Ray's object store
        self.outputs: dict[str, list[str]] = {}  # task key → what it wrote
        self.stills: dict[str, Any] = {}  # a still input's path → its bytes in Ray's object store
        self.writes: dict[Future[None], tuple[TaskRef, int | None, list[str]]] = {}
        self.failed: dict[str, str] = {}  # task key → why its outputs are not on disk

    @classmethod
    def take_up(cls, loop: Loop, row: Job, tasks: list[TaskRef]) -> CompJob:
        """After a restart: a frame or a review whose outputs never reached the disk runs again."""
        job = cls(row, tasks)
        if job.plan is not None:
            written = written_frames(loop.db, row.id)
            review = comp_outputs(loop.db, row.id)
            wanted = [(job.spec.contact_sheet, "contact_sheet"), (job.spec.movie, "movie")]
            again = [
                t
                for t in job.tasks.values()
                if t.state is State.DONE
                and (
                    any(path and review[key] is None for path, key in wanted)
                    if t.key == comp.REVIEW
                    else t.payload["frames"][0] not in written
                )
            ]
            states.move(
                loop.db, again, State.QUEUED, "its outputs were not written before the stop"
            )
            for task in sorted(again, key=lambda t: t.id, reverse=True):
                job.requeue(task)
        return job

    @property
    def has_plan(self) -> bool:
        return self.plan is not None

    @property
    def busy(self) -> bool:
        return bool(self.writes)

    @functools.cached_property
    def resources(self) -> dict[str, float]:
        held = {"CPU": CPUS}
        if self.lab:
            held[lab_resource(self.lab)] = LAB_SHARE
        return held

    @property
    def needs(self) -> dict[str, float]:
        return self.resources

    def place(self, loop: Loop, starts: list[Start], room: float) -> None:
        if self.plan is None and not self._plan_now(loop):
            return
        while self.queued and room > 0 and loop.make_room(self, self.resources):
            if self.queued[0].key == comp.REVIEW and not self._frames_done:
                if len(self.queued) == 1:
                    return  # the review waits for every frame
                self.queued.rotate(-1)  # frames retried behind it go first
                continue
            loop.capacity.hold(self.resources)
            task = self.queued.popleft()
            starts.append(Start(self, task, None, self.resources, self.resources))
            room -= 1

    @property
    def _frames_done(self) -> bool:
        """Every frame made and on disk: the review reads their previews."""
        done = all(t.state is State.DONE for k, t in self.tasks.items() if k != comp.REVIEW)
        return done and not self.writes

    def _plan_now(self, loop: Loop) -> bool:
        """Check the files and create the tasks; a job its files refuse fails before it runs."""
        try:
            plan = comp.inspect(self.spec, header, after_source(loop.db, self.row.depends_on))
        except FarmError as error:
            loop.refuse(self, str(error))
            return False
        db = loop.db
        rows = [
            Task(job_id=self.id, key=key, state=State.QUEUED.value, payload=payload)
            for key, payload in comp.expand(plan)
        ]
        db.add_all(rows)
        stored = db.get(Job, self.id)
        assert stored is not None
        stored.plan = self.row.plan = plan.as_json()
        db.commit()
        self.plan = plan
        self.add_tasks([TaskRef.of(r) for r in rows])
        loop.emit(Event("planned", self.id, plan=plan))
        return True

    def preview(self) -> Any:
        """The job's baked preview transform, as the ObjectRef of the Ray task that bakes it (its
        frames wait on it in Ray, not in the scheduler); None: each frame uses OCIO's own
        processor, quicker for a job too small to repay the bake."""
        plan = self.plan
        if plan is None or not self.spec.preview:
            return None
        if len(plan.frames) * plan.width * plan.height < BAKE_PAYS:
            return None
        key = (
            self.spec.config,
            self.spec.space_of(self.spec.result),
            self.spec.display,
            self.spec.view,
        )
        if key not in _BAKES:
            if len(_BAKES) >= KEEP_BAKES:
                del _BAKES[next(iter(_BAKES))]
            _BAKES[key] = _bake.options(num_cpus=1).remote(*key)
        return _BAKES[key]

    def launch(self, loop: Loop, start: Start) -> Any:
        assert self.plan is not None
        options: dict[str, Any] = {"num_cpus": CPUS}
        if self.lab:
            options["resources"] = {lab_resource(self.lab): LAB_SHARE}
        if self.blocked:
            options["label_selector"] = avoiding(self.blocked)
        spec, plan = self.spec.as_json(), self.row.plan
        if start.task.key == comp.REVIEW:
            shipped = {str(p): self._ship(p, False) for p in review_inputs(self.plan)}
            return _review.options(**options).remote(spec, plan, shipped)
        frame = start.task.payload["frames"][0]
        stills = {OutputPattern(s.pattern).path(frame) for s in self.plan.sources if s.still}
        shipped = {str(p): self._ship(p, p in stills) for p in frame_inputs(self.plan, frame)}
        return _frame.options(**options).remote(spec, plan, frame, self.preview(), shipped)

    def _ship(self, path: Path, still: bool) -> Any:
        """A file a task reads, put in Ray's object store (a still: once a job); a file the server
        cannot read goes as why, and fails the attempt on its node in one line naming it."""
        if still and str(path) in self.stills:
            return self.stills[str(path)]
        try:
            ref = ray.put(path.read_bytes())
        except OSError as error:
            return f"cannot read {path}: {error.strerror or error}"
        if still:
            self.stills[str(path)] = ref
        return ref

    def node_of(self, result: dict[str, Any]) -> str:
        return str(result["node"])

    def began(self, outcome: Any) -> float:
        if isinstance(outcome, dict):
            return float(outcome["began"])
        return getattr(getattr(outcome, "cause", None), "began", 0.0)

    def succeeded(self, loop: Loop, task: TaskRef, result: dict[str, Any]) -> None:
        """Hand what the task made to the writer pool: it counts once on disk (:meth:`settle`)."""
        files = [(Path(path), data) for path, data in result["files"]]
        future = loop.writer.submit(_write_all, files)
        self.writes[future] = (task, result["frame"], result["paths"])

    def settle(self, loop: Loop) -> None:
        """Record what is on disk: a frame's EXR is a ``written`` frame (``farm fetch``), the rest
        ``output``; a write that failed fails the job (and the review, with nothing to show)."""
        for future in [f for f in self.writes if f.done()]:
            task, frame, paths = self.writes.pop(future)
            error = future.exception()
            if error is not None:
                reason = f"{task.key}: could not write its outputs: {error}"
                self.failed[task.key] = reason
                loop.emit(Event("failed", self.id, task.key, frame, message=reason))
                self.failed_for_good(loop, task, reason)
                continue
            self.outputs[task.key] = paths
            for path in paths:
                kind = "written" if frame is not None and path.endswith(".exr") else "output"
                loop.db.add(StoreEvent(job_id=self.id, kind=kind, frame=frame, message=path))
                loop.emit(Event(kind, self.id, task.key, frame, message=path))
            loop.db.commit()

    def forget(self, task: TaskRef) -> None:
        super().forget(task)
        self.failed.pop(task.key, None)

    def outcome(self) -> tuple[State, str]:
        state, message = super().outcome()
        if state is State.DONE and self.failed:
            return State.FAILED, next(iter(self.failed.values()))
        return state, message

    def close(self, loop: Loop) -> None:
        self.stills.clear()  # Ray frees the plates

    def failed_for_good(self, loop: Loop, task: TaskRef, reason: str) -> None:
        """A frame that failed for good leaves the review nothing whole to show."""
        review = self.tasks.get(comp.REVIEW)
        if task.key != comp.REVIEW and review is not None and review.state is State.QUEUED:
            states.move(loop.db, [review], State.FAILED, f"no review: {task.key} failed")
            self.queued.remove(review)


def _write_all(files: list[tuple[Path, bytes]]) -> None:
    """A task's outputs written where they belong, each atomically (temp file, then rename)."""
    for path, data in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data)


def after_source(db: Session, after: list[int] | None) -> tuple[str, list[int]] | None:
    """The output pattern and written frames of the job a comp runs after (a render, or another
    comp), for its inputs with ``after = true``."""
    for job_id in after or []:
        row = db.get(Job, job_id)
        if row is not None and row.kind in ("render", "comp"):
            return row.spec["output"], sorted(written_frames(db, job_id))
    return None


def prepare(
    db: Session, data: dict[str, Any], place: Callable[[str, str], str], after: list[int]
) -> CompSpec:
    """A submitted spec checked and its paths placed. Its files are checked now when every job it
    runs after is done already; else when they are, before any frame runs."""
    spec = comp.parse(data).with_paths(place)
    if any(i.after for i in spec.inputs) and after_source(db, after) is None:
        raise FarmError(
            "an input has after = true: give --after JOB, a render whose frames it takes"
        )
    for path in spec.outputs:
        OutputPattern(path).check_writable()
    done = db.scalars(select(Job.id).where(Job.id.in_(after), Job.state == State.DONE.value))
    if len(set(done)) == len(set(after)):
        comp.inspect(spec, header, after_source(db, after))
    return spec
