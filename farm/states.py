"""The one state machine for jobs and tasks. Nothing else changes a state.

Jobs and tasks share the same states. A task is *queued* until a slot takes it, *running* while an
attempt is under way, and ends *done*, *failed* (its retries spent) or *cancelled*. *paused* and
*held* keep queued work from starting: paused by the user, held by the farm (a dependency, a quota).
Every transition is committed to the store before the caller acts on it, so a farm that dies at any
point restarts from what the store says.
"""

from __future__ import annotations

import enum

from sqlalchemy.orm import Session

from farm.store import Attempt, Event, Job, Task, TaskLog, now


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    HELD = "held"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED, State.CANCELLED)


ALLOWED: dict[State, frozenset[State]] = {
    # queued → failed: refused before anything ran (the scene would not open, the cluster is short).
    State.QUEUED: frozenset(
        {State.RUNNING, State.PAUSED, State.HELD, State.CANCELLED, State.FAILED}
    ),
    # running → queued is a retry: the attempt failed and the task waits for another slot.
    State.RUNNING: frozenset(
        {State.QUEUED, State.DONE, State.FAILED, State.CANCELLED, State.PAUSED, State.HELD}
    ),
    State.PAUSED: frozenset({State.QUEUED, State.CANCELLED}),
    State.HELD: frozenset({State.QUEUED, State.CANCELLED}),
    State.DONE: frozenset({State.QUEUED}),  # requeue
    State.FAILED: frozenset({State.QUEUED}),  # retry by hand
    State.CANCELLED: frozenset({State.QUEUED}),
}


class IllegalTransition(ValueError):
    """A state change the machine does not allow: a bug, never bad user input."""


def _check(what: str, old: str, new: State) -> None:
    if new not in ALLOWED[State(old)]:
        raise IllegalTransition(f"{what}: {old} → {new} is not allowed")


def move_job(db: Session, job: Job, new: State, message: str = "") -> None:
    """Change a job's state and record it."""
    _check(f"job {job.id}", job.state, new)
    if new is State.RUNNING and job.started_at is None:
        job.started_at = now()
    if new.finished:
        job.ended_at = now()
    job.state = new.value
    db.add(Event(job_id=job.id, kind=new.value, message=message))
    db.commit()


def move_task(
    db: Session,
    task: Task,
    new: State,
    *,
    node: str = "",
    error: str = "",
    resources: dict[str, float] | None = None,
) -> None:
    """Change a task's state: starting opens an attempt, leaving *running* closes it."""
    _check(f"task {task.job_id}/{task.key}", task.state, new)
    summary = error.splitlines()[0] if error else ""
    if new is State.RUNNING:
        task.attempts += 1
        db.add(Attempt(task=task, number=task.attempts, node=node, resources=resources or {}))
    elif task.state == State.RUNNING:
        attempt = task.tries[-1]
        attempt.ended_at = now()
        attempt.status = "done" if new is State.DONE else "failed"
        attempt.error = summary
        attempt.node = node or attempt.node
        if error:  # the whole story (Blender's last lines) for `farm logs`
            db.add(TaskLog(attempt=attempt, text=error))
    task.state = new.value
    if new is not State.RUNNING and new is not State.DONE:
        db.add(Event(job_id=task.job_id, task_id=task.id, kind=new.value, message=summary))
    db.commit()


def unstart(db: Session, task: Task) -> None:
    """Back to queued with the attempt taken back: the task sat queued on a slot that died
    before it began, so it never ran."""
    if task.state != State.RUNNING:
        raise IllegalTransition(f"task {task.job_id}/{task.key}: {task.state} has no attempt")
    db.delete(task.tries[-1])
    task.tries.pop()
    task.attempts -= 1
    task.state = State.QUEUED.value
    db.commit()
