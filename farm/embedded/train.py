"""``farm train`` on this machine: the same scheduler as the server's, in this process (embedded
mode), with the run's metrics shown as they come."""

from __future__ import annotations

import getpass
import json
from collections.abc import Callable
from typing import Any

from farm.config import farm_home
from farm.embedded.runner import Here
from farm.errors import FarmError
from farm.scheduler.kinds.base import Event
from farm.scheduler.kinds.train import TrainJob, launcher, run_name
from farm.store import submit
from farm.store.queries import job_metrics
from farm.store.states import State
from farm.store.tables import Job
from pipelines.train import TrainSpec


def train_here(
    spec: TrainSpec | None,
    resume: int | None = None,
    on_metric: Callable[[dict[str, Any]], None] | None = None,
    priority: int = 50,
) -> dict[str, Any]:
    """Run a training job to its end on this machine's Ray (or ``resume`` a stopped one from its
    latest checkpoint); returns what ``--json`` prints."""
    launcher()  # a farm without the training extra says so before it starts anything
    here = Here(storage=farm_home() / "train")
    scheduler = here.scheduler
    if resume is not None:
        row = scheduler.db.get(Job, resume)
        if row is None or row.kind != "train":
            raise FarmError(f"no training job {resume} on this machine")
        if row.state == State.DONE:
            raise FarmError(f"job {resume} is done: nothing to resume")
        if State(row.state).finished:
            scheduler.retry(resume)
        job_id = resume
    else:
        assert spec is not None
        job_id = submit.train_job(scheduler.db, spec, getpass.getuser(), priority)

    def listen(event: Event) -> None:
        if event.kind == "metric" and on_metric is not None:
            on_metric(json.loads(event.message))

    job = here.run(job_id, listen)
    assert isinstance(job, TrainJob)
    return {
        "id": job_id,
        "state": job.state.value,
        "message": job.reason,
        "metrics": job_metrics(scheduler.db, job_id),
        "storage": str(scheduler.storage / run_name(job_id)),
        "checkpoint": (job.result or {}).get("checkpoint"),
    }
