"""Submitting jobs (``POST /jobs/<type>``): each route checks its spec and what the cluster offers,
then hands the job to one admission, which stores it if the caller's enrolment and quota accept it
and tells the scheduler."""

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from sqlalchemy.orm import Session

from farm.accounts import standing as accounts
from farm.accounts.access import Caller, confine, output_root
from farm.accounts.standing import Ask
from farm.api.deps import AdmissionLock, ClusterCheck, Data, Db, Files, Me, Scenes, Sched
from farm.api.models import (
    Accepted,
    CompSubmission,
    ProbeSubmission,
    RenderSubmission,
    TrainSubmission,
    refusals,
)
from farm.errors import FarmError, Forbidden
from farm.scheduler.kinds import comp as comp_job
from farm.scheduler.kinds.render import uploaded_origin
from farm.scheduler.kinds.train import read_dataset
from farm.scheduler.loop import Scheduler
from farm.store import submit
from farm.store.scenes import PREFIX as SCENE_PREFIX
from pipelines import probe, render, train
from pipelines.probe import ProbeSpec
from pipelines.render import RenderRequest
from workers import scene_cache

router = APIRouter()

Store = Callable[[tuple[str, str]], int]
"""Stores a job charged to the given enrolment (programme, cohort); returns its id."""


@dataclass(frozen=True)
class Admission:
    """The caller's way into the queue: one admission at a time, so that two submissions never
    both spend the last of a quota."""

    db: Session
    me: Caller
    lock: threading.Lock
    scheduler: Scheduler

    def __call__(self, ask: Ask, store: Store) -> Accepted:
        """Store a job with ``store`` if the caller's enrolment and quota accept ``ask`` (their
        standing read again under the lock), then have the scheduler load it."""
        with self.lock:
            standing = accounts.standing_of(self.db, self.me.name)
            accounts.admit(standing, ask, accounts.booked_gpu_seconds(self.db, self.me.name))
            job_id = store((standing.programme, standing.cohort))
        self.scheduler.notify(job_id)
        return Accepted(id=job_id, state="queued")


def admission(db: Db, me: Me, lock: AdmissionLock, scheduler: Sched) -> Admission:
    return Admission(db, me, lock, scheduler)


Admit = Annotated[Admission, Depends(admission)]

RUN_FIELDS = {"priority", "after", "slots", "threads", "stall_timeout", "lab", "name", "memory"}
"""A render submission's fields that are not the render's own (how and where the job runs)."""


@router.post("/jobs/render", status_code=201, responses=refusals(400, 403, 422))
def submit_render(
    body: RenderSubmission,
    db: Db,
    me: Me,
    data: Data,
    scenes: Scenes,
    files: Files,
    cluster: ClusterCheck,
    admit: Admit,
) -> Accepted:
    fields = body.model_dump(exclude=RUN_FIELDS | {"origin", "files"})
    if body.allow_scripts and me.role == "trainee":
        raise Forbidden("only instructors and admins may run a scene's own scripts")
    root = output_root(accounts.standing_of(db, me.name), data)
    scene = body.scene
    if not scene.startswith("sha256:"):
        scene = str(confine(scene, root, "scene", me.admin))
    fields["scene"], digest = scenes.resolve(scene)
    output = fields["output"] or f"renders/{Path(body.name or body.scene).stem}_####.exr"
    fields["output"] = str(confine(output, root, "output", me.admin))
    spec = render.validate(RenderRequest(**fields))
    gpu = spec.overrides.get("device", "CPU") != "CPU"
    cluster.check(body.threads, 1 if gpu else 0, body.lab, body.memory or 0)
    run = {
        "threads": body.threads,
        "slots": body.slots,
        "stall_timeout": body.stall_timeout,
        "lab": body.lab,
        "memory": body.memory,
        "digest": digest,
        **bundle(body, digest, files),
    }
    name = body.name or spec.scene.name
    return admit(
        Ask(body.priority, body.lab, 1.0 if gpu else 0.0, None, 1),
        lambda enrolment: submit.render(
            db, spec, run, me.name, body.priority, body.after, name, enrolment
        ),
    )


@router.post("/jobs/probe", status_code=201, responses=refusals(400, 403, 422))
def submit_probe(
    body: ProbeSubmission, db: Db, me: Me, cluster: ClusterCheck, admit: Admit
) -> Accepted:
    spec = probe.validate(ProbeSpec(**body.model_dump(exclude={"priority", "after"})))
    cluster.check(spec.cpus, spec.gpus, None, spec.memory)
    return admit(
        Ask(body.priority, None, spec.gpus, spec.seconds, spec.tasks),
        lambda enrolment: submit.probe_job(db, spec, me.name, body.priority, body.after, enrolment),
    )


@router.post("/jobs/train", status_code=201, responses=refusals(400, 403, 422))
def submit_train(
    body: TrainSubmission, db: Db, me: Me, cluster: ClusterCheck, admit: Admit, files: Files
) -> Accepted:
    spec = train.validate(train.TrainSpec(**body.model_dump(exclude={"priority", "after", "lab"})))
    read_dataset(spec.data, files.folder)  # an uploaded one is there, and is a dataset
    cluster.check(spec.cpus_per_worker, spec.gpus_per_worker, body.lab)
    gpus = spec.workers * spec.gpus_per_worker
    seconds = spec.max_hours * 3600 if spec.max_hours else None
    return admit(
        Ask(body.priority, body.lab, gpus, seconds, 1),
        lambda enrolment: submit.train_job(
            db, spec, me.name, body.priority, body.after, enrolment, body.lab
        ),
    )


@router.post("/jobs/comp", status_code=201, responses=refusals(400, 403, 422))
def submit_comp(
    body: CompSubmission,
    db: Db,
    me: Me,
    data: Data,
    cluster: ClusterCheck,
    admit: Admit,
    files: Files,
) -> Accepted:
    root = output_root(accounts.standing_of(db, me.name), data)

    def place(path: str, what: str) -> str:
        """An input uploaded from a laptop (``sha256:<dataset>/<name>``) where the server laid
        it out; any other path the caller's, inside their folder."""
        if what.startswith("input ") and path.startswith(SCENE_PREFIX):
            return files.uploaded_path(path)
        return str(confine(path, root, what, me.admin))

    spec = comp_job.prepare(db, body.spec, place, body.after)
    cluster.check(comp_job.CPUS, 0, body.lab)
    return admit(
        Ask(body.priority, body.lab, 0.0, None, 1),
        lambda enrolment: submit.comp_job(
            db, spec, me.name, body.priority, body.after, enrolment, body.lab, body.name
        ),
    )


def bundle(body: RenderSubmission, digest: str | None, files: Files) -> dict[str, Any]:
    """An uploaded scene and every file it uses, as its slots lay them out on a node: each path
    as it was where the scene was submitted from, so the scene's relative paths keep working."""
    if digest is None:
        if body.files or body.origin:
            raise FarmError("files and origin belong to an uploaded scene (scene: sha256:…)")
        return {}
    origin = body.origin or uploaded_origin(digest)
    files.require(body.files)
    listed = sorted({**body.files, origin: digest}.items())
    try:
        scene_cache.check(scene_cache.Bundle(origin, tuple(listed)))
    except ValueError as error:
        raise FarmError(f"the scene's files: {error}") from None
    return {"origin": origin, "files": [list(pair) for pair in listed]}
