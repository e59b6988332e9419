"""Read-only views of jobs for the CLI (and, later, the API): lists and per-job status."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.errors import FarmError, NotFound
from farm.store.states import State
from farm.store.tables import Event, Job, Task


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def task_counts(db: Session, job_ids: list[int]) -> dict[int, dict[str, int]]:
    """Tasks by state for each job, every state present (zeros included)."""
    counts = {job_id: dict.fromkeys(State, 0) for job_id in job_ids}
    rows = db.execute(
        select(Task.job_id, Task.state, func.count())
        .where(Task.job_id.in_(job_ids))
        .group_by(Task.job_id, Task.state)
    )
    for job_id, state, count in rows:
        counts[job_id][State(state)] = count
    return {job_id: {s.value: n for s, n in c.items()} for job_id, c in counts.items()}


def status(job: Job, counts: dict[str, int], message: str = "") -> dict[str, Any]:
    """What ``farm status JOB --json`` prints: the job's state and its tasks by state."""
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "owner": job.owner,
        "state": job.state,
        "priority": job.priority,
        "tasks": counts,
        "message": message,
        "after": list(job.depends_on or []),
        "submitted_at": _iso(job.submitted_at),
        "started_at": _iso(job.started_at),
        "ended_at": _iso(job.ended_at),
    }


def list_jobs(db: Session, limit: int = 50, where: Any = None) -> list[dict[str, Any]]:
    """The newest jobs first (those ``where`` selects, when given)."""
    query = select(Job).order_by(Job.id.desc()).limit(limit)
    if where is not None:
        query = query.where(where)
    jobs = list(db.scalars(query))
    counts = task_counts(db, [job.id for job in jobs])
    return [status(job, counts[job.id]) for job in jobs]


def job_status(db: Session, job_id: int) -> dict[str, Any]:
    job = _job(db, job_id)
    message = db.scalar(
        select(Event.message)
        .where(Event.job_id == job_id, Event.task_id.is_(None), Event.kind == job.state)
        .order_by(Event.id.desc())
        .limit(1)
    )
    info = status(job, task_counts(db, [job_id])[job_id], message or "")
    if job.kind == "comp":
        info["outputs"] = comp_outputs(db, job_id)
    return info


def comp_outputs(db: Session, job_id: int) -> dict[str, Any]:
    """What a comp job wrote: its EXR frames and previews in frame order, its contact sheet and
    movie (the latest write of each)."""
    rows = db.execute(
        select(Event.kind, Event.frame, Event.message)
        .where(Event.job_id == job_id, Event.kind.in_(("written", "output")))
        .order_by(Event.id)
    )
    frames: dict[int, str] = {}
    previews: dict[int, str] = {}
    review: dict[str, str] = {}
    for kind, frame, path in rows:
        if kind == "written":
            frames[frame] = path
        elif frame is not None:
            previews[frame] = path
        else:
            review["movie" if path.endswith(".mp4") else "contact_sheet"] = path
    return {
        "frames": [frames[f] for f in sorted(frames)],
        "previews": [previews[f] for f in sorted(previews)],
        "contact_sheet": review.get("contact_sheet"),
        "movie": review.get("movie"),
    }


def job_logs(db: Session, job_id: int, task_key: str | None = None) -> list[dict[str, Any]]:
    """Every attempt of the job's tasks (or of one task), with its outcome and log."""
    job = _job(db, job_id)
    tasks = [t for t in job.tasks if task_key is None or t.key == task_key]
    if task_key is not None and not tasks:
        raise FarmError(f"job {job_id} has no task {task_key!r}")
    return [
        {
            "task": task.key,
            "attempt": attempt.number,
            "node": attempt.node,
            "resources": attempt.resources,
            "status": attempt.status,
            "started_at": _iso(attempt.started_at),
            "ended_at": _iso(attempt.ended_at),
            "error": attempt.error,
            "log": "\n".join(log.text for log in attempt.logs),
        }
        for task in tasks
        for attempt in task.tries
    ]


MAX_ID = 2**63 - 1  # the largest id a store holds (SQLite INTEGER, PostgreSQL BIGINT)


def known_id(job_id: int) -> int:
    """``job_id`` if a store could hold it; any other number is simply no job (a store would not
    take 10**30 as a key, and must not be asked to)."""
    if not 1 <= job_id <= MAX_ID:
        raise NotFound(f"no job {job_id}")
    return job_id


def _job(db: Session, job_id: int) -> Job:
    job = db.get(Job, known_id(job_id))
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


def job_tasks(db: Session, job_id: int) -> list[dict[str, Any]]:
    """Every task of the job with its state and attempts, in the job's order."""
    _job(db, job_id)
    rows = db.execute(
        select(Task.key, Task.state, Task.attempts).where(Task.job_id == job_id).order_by(Task.id)
    )
    return [{"task": key, "state": state, "attempts": attempts} for key, state, attempts in rows]


def job_events(db: Session, job_id: int, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
    """What happened to the job since event ``after``: state changes, retries, frames written."""
    _job(db, job_id)
    rows = db.execute(
        select(Event.id, Event.at, Event.kind, Event.frame, Event.message, Task.key)
        .outerjoin(Task, Task.id == Event.task_id)
        .where(Event.job_id == job_id, Event.id > after)
        .order_by(Event.id)
        .limit(limit)
    )
    return [
        {"id": i, "at": _iso(at), "kind": kind, "frame": frame, "task": key, "message": message}
        for i, at, kind, frame, message, key in rows
    ]


def written_frames(db: Session, job_id: int) -> dict[int, str]:
    """The frames a job wrote, from the store's ``written`` events: frame → path of its last
    write. What a restart does not render again, a comp after the job reads, ``farm fetch``
    serves."""
    rows = db.execute(
        select(Event.frame, Event.message)
        .where(Event.job_id == job_id, Event.kind == "written")
        .order_by(Event.id)
    )
    return {frame: path for frame, path in rows}


def job_metrics(db: Session, job_id: int) -> list[dict[str, Any]]:
    """The rows a training run reported, in order (each with its ``time`` and ``checkpoint``)."""
    _job(db, job_id)
    rows = db.scalars(
        select(Event.message)
        .where(Event.job_id == job_id, Event.kind == "metric")
        .order_by(Event.id)
    )
    return [json.loads(text) for text in rows]
