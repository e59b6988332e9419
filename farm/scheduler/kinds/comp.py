"""A comp job in the scheduler: planned against its files when it may first run, one Ray task a
frame, and the review once every frame is done.

Planning reads image headers only (milliseconds a frame); it waits until the job is released, so a
comp chained after a render plans on the frames that render wrote. The preview transform is baked
once, at planning, and shared with every frame task through Ray's object store.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import ray
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.errors import FarmError
from farm.frames import OutputPattern
from farm.labs import LAB_SHARE, avoiding, lab_resource
from farm.scheduler.kinds.base import ActiveJob, Event, Loop, Start
from farm.store import states
from farm.store.queries import written_frames
from farm.store.states import State, TaskRef
from farm.store.tables import Event as StoreEvent
from farm.store.tables import Job, Task
from pipelines import comp
from pipelines.comp import CompPlan, CompSpec
from workers.comp import bake_preview, frame_task, header, review_task

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

    @property
    def has_plan(self) -> bool:
        return self.plan is not None

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
        return all(t.state is State.DONE for k, t in self.tasks.items() if k != comp.REVIEW)

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
            return _review.options(**options).remote(spec, plan)
        frame = start.task.payload["frames"][0]
        return _frame.options(**options).remote(spec, plan, frame, self.preview())

    def node_of(self, result: dict[str, Any]) -> str:
        return str(result["node"])

    def began(self, outcome: Any) -> float:
        if isinstance(outcome, dict):
            return float(outcome["began"])
        return getattr(getattr(outcome, "cause", None), "began", 0.0)

    def succeeded(self, loop: Loop, task: TaskRef, result: dict[str, Any]) -> None:
        """Record what the task wrote: a frame's EXR is a ``written`` frame (``farm fetch``)."""
        self.outputs[task.key] = result["paths"]
        frame = result["frame"]
        for path in result["paths"]:
            kind = "written" if frame is not None and path.endswith(".exr") else "output"
            loop.db.add(StoreEvent(job_id=self.id, kind=kind, frame=frame, message=path))
            loop.emit(Event(kind, self.id, task.key, frame, message=path))
        loop.db.commit()

    def failed_for_good(self, loop: Loop, task: TaskRef, reason: str) -> None:
        """A frame that failed for good leaves the review nothing whole to show."""
        review = self.tasks.get(comp.REVIEW)
        if task.key != comp.REVIEW and review is not None and review.state is State.QUEUED:
            states.move(loop.db, [review], State.FAILED, f"no review: {task.key} failed")
            self.queued.remove(review)


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
