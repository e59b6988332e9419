"""A job once submitted: what the caller may read of it (its state, tasks, logs, events and
metrics) and the verbs that change it (cancel, pause, resume, retry).

Reads go straight to the store (SQLite in WAL mode lets them run beside the scheduler's writes);
a verb runs on the scheduler's thread, which owns every change of state. A job the caller may not
see is refused as if it did not exist (404).
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query

from farm.accounts.access import changeable, jobs_visible, readable
from farm.api.deps import Db, Me, Sched
from farm.api.models import Changed, TaskChoice, refusals
from farm.store.queries import job_events, job_logs, job_metrics, job_status, job_tasks, list_jobs

router = APIRouter()

VERBS = ("cancel", "pause", "resume", "retry")
"""The changes of state a caller may ask for: each a method of the scheduler of the same name."""


@router.get("/jobs/{job_id}/metrics", responses=refusals(404, 422))
def metrics(job_id: int, db: Db, me: Me) -> list[dict[str, Any]]:
    """What a training run reported, in order."""
    return job_metrics(db, readable(db, me, job_id).id)


@router.get("/jobs", responses=refusals(422))
def jobs(
    db: Db, me: Me, limit: Annotated[int, Query(ge=1, le=10_000)] = 50
) -> list[dict[str, Any]]:
    """The newest jobs the caller may see."""
    return list_jobs(db, limit, jobs_visible(me))


@router.get("/jobs/{job_id}", responses=refusals(404, 422))
def status(job_id: int, db: Db, me: Me) -> dict[str, Any]:
    return job_status(db, readable(db, me, job_id).id)


@router.get("/jobs/{job_id}/tasks", responses=refusals(404, 422))
def tasks(job_id: int, db: Db, me: Me) -> list[dict[str, Any]]:
    return job_tasks(db, readable(db, me, job_id).id)


@router.get("/jobs/{job_id}/logs", responses=refusals(400, 404, 422))
def logs(
    job_id: int, db: Db, me: Me, task: Annotated[str | None, Query(max_length=64)] = None
) -> list[dict[str, Any]]:
    return job_logs(db, readable(db, me, job_id).id, task)


@router.get("/jobs/{job_id}/events", responses=refusals(404, 422))
def events(
    job_id: int,
    db: Db,
    me: Me,
    after: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    return job_events(db, readable(db, me, job_id).id, after, limit)


def change(verb: str) -> Callable[..., Changed]:
    """The endpoint of one verb: the caller must be allowed to change the job (403 or 404 if
    not); the scheduler says what became of it."""

    def endpoint(
        job_id: int, db: Db, me: Me, scheduler: Sched, body: TaskChoice | None = None
    ) -> Changed:
        choice = body.task if body else None
        changeable(db, me, job_id)
        result = scheduler.call(getattr(scheduler, verb), job_id, choice)
        return Changed(id=job_id, result=result)

    endpoint.__name__ = verb  # the operation ids of the spec are made from it
    return endpoint


for verb in VERBS:
    router.post(f"/jobs/{{job_id}}/{verb}", name=verb, responses=refusals(400, 403, 404, 422))(
        change(verb)
    )
