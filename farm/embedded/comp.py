"""``farm comp`` on this machine: the same scheduler as the server's, in this process (embedded
mode), with the frames shown as they are made."""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any

from farm.embedded.runner import Here, store_engine
from farm.errors import FarmError
from farm.scheduler.kinds import comp as comp_job
from farm.scheduler.kinds.base import Event
from farm.store import submit
from farm.store.queries import comp_outputs
from farm.store.states import State
from farm.store.tables import Job, session
from pipelines.comp import CompSpec
from pipelines.render import user_path


def check_here(data: dict[str, Any], after: list[int]) -> CompSpec:
    """A comp for this machine checked before anything starts: its spec, its files, and the jobs
    of this machine's store it runs after, which must be done already (nothing else runs them)."""
    db = session(store_engine())
    for job_id in after:
        row = db.get(Job, job_id)
        if row is None:
            raise FarmError(f"--after {job_id}: no such job on this machine")
        if row.state != State.DONE:
            raise FarmError(
                f"--after {job_id}: that job is {row.state}; on this machine a comp runs after "
                "a job that is done (or submit both to a farm server)"
            )
    spec = comp_job.prepare(db, data, lambda path, what: str(user_path(what, path)), after)
    db.close()
    return spec


def comp_here(
    spec: CompSpec,
    after: list[int],
    priority: int = 50,
    on_event: Callable[[Event], None] | None = None,
) -> dict[str, Any]:
    """Run a checked comp (:func:`check_here`) to its end on this machine's Ray; returns what
    ``--json`` prints."""
    here = Here(store_engine())
    job_id = submit.comp_job(here.db, spec, getpass.getuser(), priority, after)
    job = here.run(job_id, on_event)
    return {
        "id": job_id,
        "state": job.state.value,
        "message": job.reason,
        "outputs": comp_outputs(here.db, job_id),
    }
