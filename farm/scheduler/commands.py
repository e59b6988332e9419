"""What users ask of jobs through the API or the CLI: cancel, pause, resume, retry (a job, or one
task), and what runs where. Each runs on the scheduler's thread (:meth:`Scheduler.call`)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.errors import FarmError, NotFound
from farm.scheduler.admission import RETRIED
from farm.scheduler.kinds.base import ActiveJob, Flight
from farm.scheduler.slots import SlotPool
from farm.store import states
from farm.store.states import State, TaskRef
from farm.store.tables import Job, Task

_WAITING = (State.QUEUED, State.PAUSED, State.HELD)


def _drop(job: ActiveJob, tasks: list[TaskRef]) -> None:
    """Take tasks out of the job's queue."""
    gone = {t.id for t in tasks}
    if gone:
        job.queued = collections.deque(t for t in job.queued if t.id not in gone)


class Commands:
    """The scheduler's part that changes jobs when users ask (a mixin of
    :class:`farm.scheduler.loop.Scheduler`, whose state it shares)."""

    db: Session
    jobs: dict[int, ActiveJob]
    flights: dict[Any, Flight]
    _pool: SlotPool | None

    # What users ask of jobs (through the API or the CLI); each runs on the scheduler's thread.

    def _job(self, job_id: int) -> ActiveJob:
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        row = self.db.get(Job, job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        raise FarmError(f"job {job_id} is {row.state}: nothing to change")

    @staticmethod
    def _task(job: ActiveJob, key: str) -> TaskRef:
        task = job.tasks.get(key)
        if task is None:
            raise FarmError(f"job {job.id} has no task {key!r}")
        return task

    def cancel(self, job_id: int, key: str | None = None) -> str:
        """Cancel a job (or one task): queued work never starts, running work is stopped."""
        job = self._job(job_id)
        if key is None:
            if job.state is State.CANCELLED:  # its last attempts are still ending
                raise FarmError(f"job {job_id} is cancelled: nothing to change")
            states.move_job(self.db, job.row, State.CANCELLED, "cancelled")
            job.cancelling = True
            waiting = [t for t in job.tasks.values() if t.state in _WAITING]
        else:
            task = self._task(job, key)
            if task.state.finished:
                raise FarmError(f"task {key} of job {job_id} is already {task.state}")
            job.cancel_keys.add(key)
            waiting = [task] if task.state in _WAITING else []
        states.move(self.db, waiting, State.CANCELLED, "cancelled")
        _drop(job, waiting)
        self._stop_running(job, None if key is None else {key})
        return State.CANCELLED.value if key is None else f"task {key} cancelled"

    def _stop_running(self, job: ActiveJob, keys: set[str] | None) -> None:
        """Stop the job's running attempts. A slot is ended only when it is running the job's own
        task; a task merely queued behind another job's is cancelled when its turn comes."""
        for ref, flight in list(self.flights.items()):
            start = flight.start
            if start.job is not job or (keys is not None and start.task.key not in keys):
                continue
            if start.slot is None:
                self._cancel(ref)
                continue
            on_slot = [f.seq for f in self.flights.values() if f.start.slot is start.slot]
            if flight.seq == min(on_slot):
                self._remove_slot(start.slot)  # Blender dies with the slot's worker

    def pause(self, job_id: int, key: str | None = None) -> str:
        """Queued work waits until resumed; running work finishes."""
        job = self._job(job_id)
        if key is None:
            if job.state is State.PAUSED:
                raise FarmError(f"job {job_id} is already paused")
            states.move_job(self.db, job.row, State.PAUSED, "paused")
            waiting = [t for t in job.tasks.values() if t.state is State.QUEUED]
        else:
            task = self._task(job, key)
            if task.state is not State.QUEUED:
                raise FarmError(
                    f"task {key} of job {job_id} is {task.state}: only queued tasks pause"
                )
            waiting = [task]
        states.move(self.db, waiting, State.PAUSED, "paused")
        _drop(job, waiting)
        return State.PAUSED.value if key is None else f"task {key} paused"

    def resume(self, job_id: int, key: str | None = None) -> str:
        job = self._job(job_id)
        if key is None:
            if job.state is not State.PAUSED:
                raise FarmError(f"job {job_id} is {job.state}, not paused")
            states.move_job(self.db, job.row, State.QUEUED, "resumed")
            paused = [t for t in job.tasks.values() if t.state is State.PAUSED]
        else:
            task = self._task(job, key)
            if task.state is not State.PAUSED:
                raise FarmError(f"task {key} of job {job_id} is {task.state}, not paused")
            paused = [task]
        states.move(self.db, paused, State.QUEUED, "resumed")
        for task in sorted(paused, key=lambda t: t.id, reverse=True):
            job.requeue(task)
        job.held_for = ""
        self._review(job)
        return job.state.value if key is None else f"task {key} resumed"

    def retry(self, job_id: int, key: str | None = None) -> str:
        """Queue failed and cancelled tasks again (or one task, even a done one)."""
        job = self.jobs.get(job_id)
        if job is None:
            row = self.db.get(Job, job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            tasks = self.db.scalars(select(Task).where(Task.job_id == job_id))
            refs = {t.key: TaskRef.of(t) for t in tasks}
        else:
            row, refs = job.row, job.tasks
        if key is not None:
            chosen = [refs[key]] if key in refs else []
            if not chosen:
                raise FarmError(f"job {job_id} has no task {key!r}")
            if not chosen[0].state.finished:
                raise FarmError(
                    f"task {key} of job {job_id} is {chosen[0].state}: nothing to retry"
                )
        else:
            chosen = [t for t in refs.values() if t.state in (State.FAILED, State.CANCELLED)]
            unwritten = (
                row.kind == "render" and State(row.state).finished and row.state != State.DONE
            )
            if not chosen and job is not None and job.state is State.CANCELLED:
                raise FarmError(
                    f"job {job_id} is still stopping its cancelled tasks: retry once they stop"
                )
            if not chosen and not unwritten:
                raise FarmError(f"job {job_id} has no failed or cancelled tasks to retry")
        if State(row.state).finished:
            states.move_job(self.db, row, State.QUEUED, "retried")
        states.move(self.db, chosen, State.QUEUED, RETRIED)
        if job is None:
            self.load(job_id)
        else:
            job.cancel_keys.difference_update(t.key for t in chosen)
            for task in sorted(chosen, key=lambda t: t.id, reverse=True):
                job.forget(task)
                job.requeue(task)
        return f"{len(chosen)} task(s) queued again"

    def node_work(self) -> dict[str, dict[str, Any]]:
        """Per Ray node: tasks running in its slots, and the scenes its slots hold open."""
        work: dict[str, dict[str, Any]] = {}
        for slot in self.pool.slots if self._pool is not None else []:
            if slot.node:
                entry = work.setdefault(slot.node, {"running": 0, "slots": []})
                entry["running"] += min(slot.load, 1)
                entry["slots"].append(Path(slot.profile.scene).name)
        return work
