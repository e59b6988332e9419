"""The one state machine for jobs and tasks. Nothing else changes a state.

Jobs and tasks share the same states. A task is *queued* until the scheduler starts it, *running*
while an attempt is under way, and ends *done*, *failed* (its retries spent) or *cancelled*.
*paused* and *held* keep queued work from starting: paused by the user, held by the farm (a
dependency not met yet, a quota). Every transition is committed to the store before the caller acts
on it, so a farm that dies at any point restarts from what the store says.

Transitions are compare-and-set: a row changes only if it is still in the state the caller saw, so
two writers (the scheduler and a restarted one, or an admin's tool) can never both move it. They
come in batches, one transaction each, because the scheduler starts and ends thousands of tasks a
second.
"""

from __future__ import annotations

import enum
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, insert, select, update
from sqlalchemy.orm import Session

from farm.store.ledger import Bill, record
from farm.store.tables import Attempt, Event, Job, Task, TaskLog, now

_TASKS = Task.__table__
_ATTEMPTS = Attempt.__table__
_JOBS = Job.__table__
_EVENTS = Event.__table__


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
    State.HELD: frozenset({State.QUEUED, State.CANCELLED, State.PAUSED}),
    State.DONE: frozenset({State.QUEUED}),  # requeue
    State.FAILED: frozenset({State.QUEUED}),  # retry by hand
    State.CANCELLED: frozenset({State.QUEUED}),
}


class IllegalTransition(ValueError):
    """A state change the machine does not allow, or a row another writer moved first: a bug or a
    race lost, never bad user input."""


@dataclass(slots=True)
class TaskRef:
    """What the scheduler keeps of a task between reads of the store."""

    id: int
    job_id: int
    key: str
    state: State
    attempts: int
    payload: dict[str, Any] = field(default_factory=dict)
    failures: int = 0  # attempts that failed (lost ones, cut short by a server stop, are not)

    @classmethod
    def of(cls, row: Task) -> TaskRef:
        """What to keep of a stored task."""
        return cls(row.id, row.job_id, row.key, State(row.state), row.attempts, row.payload)


@dataclass(frozen=True, slots=True)
class Ending:
    """How one running attempt ended: the task's new state and what the attempt leaves behind."""

    task: TaskRef
    state: State
    node: str = ""
    error: str = ""  # the whole story (Blender's last lines, a traceback) for `farm logs`
    attempt_status: str = ""  # default: done for DONE, else failed; "lost" after a restart
    bill: Bill | None = None  # what the ledger charges for the attempt (None: nothing)


def _check(what: str, old: State, new: State) -> None:
    if new not in ALLOWED[old]:
        raise IllegalTransition(f"{what}: {old} → {new} is not allowed")


def _set_state(table: Any) -> Any:
    return (
        update(table)
        .where(table.c.id.in_(bindparam("ids", expanding=True)), table.c.state == bindparam("old"))
        .values(state=bindparam("new"))
    )


# Statements are built once: on SQLite, building one through SQLAlchemy costs more than running it.
_SET_STATE = {_TASKS: _set_state(_TASKS), _JOBS: _set_state(_JOBS)}
_START = (
    update(_TASKS)
    .where(_TASKS.c.id == bindparam("tid"), _TASKS.c.state == bindparam("old"))
    .values(state=State.RUNNING.value, attempts=bindparam("number"))
)
_OPEN_ATTEMPT = insert(_ATTEMPTS)
_CLOSE_ATTEMPT = (
    update(_ATTEMPTS)
    .where(_ATTEMPTS.c.task_id == bindparam("tid"), _ATTEMPTS.c.number == bindparam("n"))
    .values(
        ended_at=bindparam("moment"),
        status=bindparam("status"),
        error=bindparam("summary"),
        # An ending that names no node keeps the node the attempt started on.
        node=case((bindparam("where") == "", _ATTEMPTS.c.node), else_=bindparam("where")),
    )
)
_ADD_EVENT = insert(_EVENTS)


def _changed(db: Session, result: Any, expected: int, old: State) -> None:
    """Roll back unless every row the caller saw in ``old`` moved: another writer came first."""
    if result.rowcount != expected:
        db.rollback()
        raise IllegalTransition(
            f"{expected - result.rowcount} of {expected} rows were no longer {old}"
        )


def _compare_and_set(
    db: Session, table: Any, ids_by_old: dict[State, list[int]], new: State
) -> None:
    for old, ids in ids_by_old.items():
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            result = db.execute(
                _SET_STATE[table], {"ids": chunk, "old": old.value, "new": new.value}
            )
            _changed(db, result, len(chunk), old)


def move_job(db: Session, job: Job, new: State, message: str = "") -> None:
    """Change a job's state and record it."""
    values = _stage_move(db, job, new, message)
    db.commit()
    _moved(db, job, new, values)


def _stage_move(db: Session, job: Job, new: State, message: str) -> dict[str, Any]:
    """The statements of a job's move, left uncommitted so a caller can join them to others."""
    old = State(job.state)
    _check(f"job {job.id}", old, new)
    _compare_and_set(db, _JOBS, {old: [job.id]}, new)
    values: dict[str, Any] = {}
    if new is State.RUNNING and job.started_at is None:
        values["started_at"] = now()
    if new.finished:
        values["ended_at"] = now()
    elif old.finished:
        values["ended_at"] = None
    if values:
        db.execute(update(Job).where(Job.id == job.id).values(**values))
    db.add(Event(job_id=job.id, kind=new.value, message=message))
    return values


def _moved(db: Session, job: Job, new: State, values: dict[str, Any]) -> None:
    job.state = new.value
    for name, value in values.items():
        setattr(job, name, value)
    db.expire(job, ["state", "started_at", "ended_at"])


def start(
    db: Session,
    starts: Sequence[tuple[TaskRef, str, dict[str, float]]],
    jobs: Sequence[Job] = (),
) -> None:
    """Queued → running for a batch of tasks, each opening an attempt on ``node`` with
    ``resources``, and for ``jobs`` (their queued jobs); one transaction, so no reader sees a
    task run in a job that is still queued."""
    if not starts:
        return
    for task, _, _ in starts:
        _check(f"task {task.job_id}/{task.key}", task.state, State.RUNNING)
    # State and attempt count in one statement a row, still compare-and-set on the state.
    result = db.execute(
        _START,
        [{"tid": t.id, "old": t.state.value, "number": t.attempts + 1} for t, _, _ in starts],
    )
    _changed(db, result, len(starts), State.QUEUED)
    moment = now()
    db.execute(
        _OPEN_ATTEMPT,
        [
            {
                "task_id": task.id,
                "number": task.attempts + 1,
                "node": node,
                "resources": resources,
                "started_at": moment,
                "status": "running",
                "error": "",
            }
            for task, node, resources in starts
        ],
    )
    moves = [(job, _stage_move(db, job, State.RUNNING, "")) for job in jobs]
    db.commit()
    for job, values in moves:
        _moved(db, job, State.RUNNING, values)
    for task, _, _ in starts:
        task.state = State.RUNNING
        task.attempts += 1


def end(db: Session, endings: Sequence[Ending]) -> None:
    """Close a batch of running attempts (done, failed, lost) and move their tasks on."""
    if not endings:
        return
    by_new: dict[State, list[int]] = defaultdict(list)
    for ending in endings:
        task = ending.task
        if task.state is not State.RUNNING:
            raise IllegalTransition(f"task {task.job_id}/{task.key}: {task.state} has no attempt")
        _check(f"task {task.job_id}/{task.key}", task.state, ending.state)
        by_new[ending.state].append(task.id)
    for new, ids in by_new.items():
        _compare_and_set(db, _TASKS, {State.RUNNING: ids}, new)
    moment = now()
    statuses = [
        e.attempt_status or ("done" if e.state is State.DONE else "failed") for e in endings
    ]
    db.execute(
        _CLOSE_ATTEMPT,
        [
            {
                "tid": e.task.id,
                "n": e.task.attempts,
                "moment": moment,
                "status": status,
                "summary": e.error.splitlines()[0] if e.error else "",
                "where": e.node,
            }
            for e, status in zip(endings, statuses, strict=True)
        ],
    )
    record(
        db,
        [
            (e.task.id, e.task.attempts, e.task.job_id, status, e.bill)
            for e, status in zip(endings, statuses, strict=True)
            if e.bill is not None and status != "lost"
        ],
        moment,
    )
    for ending in endings:
        if ending.error:
            attempt_id = db.scalar(
                select(Attempt.id).where(
                    Attempt.task_id == ending.task.id, Attempt.number == ending.task.attempts
                )
            )
            db.add(TaskLog(attempt_id=attempt_id, text=ending.error))
        if ending.state is not State.DONE:
            retry = ending.state is State.QUEUED and ending.attempt_status != "lost"
            db.add(
                Event(
                    job_id=ending.task.job_id,
                    task_id=ending.task.id,
                    kind="retry" if retry else ending.state.value,
                    message=ending.error.splitlines()[0] if ending.error else "",
                )
            )
    db.commit()
    for ending in endings:
        ending.task.state = ending.state


def move(db: Session, tasks: Iterable[TaskRef], new: State, message: str = "") -> None:
    """Move tasks that are not running (queued, paused, held, finished) to ``new``; one
    transaction, one event per task."""
    tasks = list(tasks)
    if not tasks:
        return
    by_old: dict[State, list[int]] = defaultdict(list)
    for task in tasks:
        if task.state is State.RUNNING:
            raise IllegalTransition(
                f"task {task.job_id}/{task.key}: running tasks end through end()"
            )
        _check(f"task {task.job_id}/{task.key}", task.state, new)
        by_old[task.state].append(task.id)
    _compare_and_set(db, _TASKS, by_old, new)
    db.execute(
        _ADD_EVENT,
        [
            {
                "job_id": t.job_id,
                "task_id": t.id,
                "kind": new.value,
                "message": message,
                "at": now(),
            }
            for t in tasks
        ],
    )
    db.commit()
    for task in tasks:
        task.state = new


def unstart(db: Session, tasks: Sequence[TaskRef]) -> None:
    """Back to queued with the attempt taken back: the task sat queued on a slot that died (or was
    stopped) before it began, so it never ran."""
    if not tasks:
        return
    for task in tasks:
        if task.state is not State.RUNNING:
            raise IllegalTransition(f"task {task.job_id}/{task.key}: {task.state} has no attempt")
    _compare_and_set(db, _TASKS, {State.RUNNING: [t.id for t in tasks]}, State.QUEUED)
    for task in tasks:
        db.execute(
            Attempt.__table__.delete().where(
                Attempt.task_id == task.id, Attempt.number == task.attempts
            )
        )
        db.execute(update(Task).where(Task.id == task.id).values(attempts=task.attempts - 1))
    db.commit()
    for task in tasks:
        task.state = State.QUEUED
        task.attempts -= 1
