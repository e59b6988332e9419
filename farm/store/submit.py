"""Adding a validated job to the store: the one path for the CLI's embedded farm and the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from farm.errors import FarmError
from farm.store.states import State
from farm.store.tables import Job, Task
from pipelines import probe
from pipelines.comp import CompSpec
from pipelines.probe import ProbeSpec
from pipelines.render import RenderSpec
from pipelines.train import TrainSpec

PRIORITY_RANGE = (0, 100)


def _job(
    db: Session,
    kind: str,
    name: str,
    owner: str,
    spec: dict[str, Any],
    priority: int,
    after: list[int],
    enrolment: tuple[str, str],
    task_gpus: float,
    task_seconds: float | None = None,
) -> Job:
    low, high = PRIORITY_RANGE
    if not low <= priority <= high:
        raise FarmError(f"--priority must be between {low} and {high}, got {priority}")
    after = sorted(set(after))
    if after:
        found = set(db.scalars(select(Job.id).where(Job.id.in_(after))))
        missing = [j for j in after if j not in found]
        if missing:
            raise FarmError(f"--after {missing[0]}: no such job")
    job = Job(
        kind=kind,
        name=name[:256],
        owner=owner,
        state=State.QUEUED.value,
        priority=priority,
        spec=spec,
        depends_on=after,
        blocked_nodes=[],
        programme=enrolment[0],
        cohort=enrolment[1],
        task_gpus=task_gpus,
        task_seconds=task_seconds,
    )
    db.add(job)
    db.flush()
    return job


def render(
    db: Session,
    spec: RenderSpec,
    run: dict[str, Any],
    owner: str,
    priority: int = 50,
    after: list[int] | None = None,
    name: str | None = None,
    enrolment: tuple[str, str] = ("", ""),
) -> int:
    """A render job; its tasks are added once a slot has opened the scene and the job is planned.
    ``run`` says how it uses the cluster: threads per slot, a cap on slots, stall timeout, lab.
    ``enrolment``: the owner's programme and cohort, what its attempts are charged to."""
    spec_json = {**spec.as_json(), "run": run}
    gpus = 0.0 if spec.overrides.get("device", "CPU") == "CPU" else 1.0
    job = _job(
        db,
        "render",
        name or spec.scene.name,
        owner,
        spec_json,
        priority,
        after or [],
        enrolment,
        gpus,
    )
    db.commit()
    return job.id


def probe_job(
    db: Session,
    spec: ProbeSpec,
    owner: str,
    priority: int = 50,
    after: list[int] | None = None,
    enrolment: tuple[str, str] = ("", ""),
) -> int:
    """A probe job with all its tasks, in one transaction."""
    job = _job(
        db,
        "probe",
        f"probe {spec.tasks}×{spec.seconds:g}s",
        owner,
        spec.as_json(),
        priority,
        after or [],
        enrolment,
        spec.gpus,
        spec.seconds,
    )
    db.execute(
        insert(Task.__table__),  # Core, not the ORM's bulk insert: half the time a task
        [
            {
                "job_id": job.id,
                "key": key,
                "state": State.QUEUED.value,
                "attempts": 0,
                "payload": payload,
            }
            for key, payload in probe.expand(spec)
        ],
    )
    db.commit()
    return job.id


def train_job(
    db: Session,
    spec: TrainSpec,
    owner: str,
    priority: int = 50,
    after: list[int] | None = None,
    enrolment: tuple[str, str] = ("", ""),
    lab: str | None = None,
) -> int:
    """A training run: one task, the run, holding every worker's CPUs and GPUs."""
    gpus = spec.workers * spec.gpus_per_worker
    seconds = spec.max_hours * 3600 if spec.max_hours else None
    name = f"train {spec.script} ×{spec.workers}"
    job = _job(
        db,
        "train",
        name,
        owner,
        {**spec.as_json(), "lab": lab},
        priority,
        after or [],
        enrolment,
        gpus,
        seconds,
    )
    db.add(Task(job_id=job.id, key="run", state=State.QUEUED.value, attempts=0, payload={}))
    db.commit()
    return job.id


def comp_job(
    db: Session,
    spec: CompSpec,
    owner: str,
    priority: int = 50,
    after: list[int] | None = None,
    enrolment: tuple[str, str] = ("", ""),
    lab: str | None = None,
    name: str | None = None,
) -> int:
    """A comp job; its frame tasks are added when it is planned against its files."""
    job = _job(
        db,
        "comp",
        name or f"comp {Path(spec.output).name}",
        owner,
        {**spec.as_json(), "lab": lab},
        priority,
        after or [],
        enrolment,
        0.0,
    )
    db.commit()
    return job.id
