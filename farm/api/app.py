"""The farm's HTTP API, version 1: JSON in and out, its OpenAPI spec at ``/openapi.json``.

Reads go straight to the store (SQLite in WAL mode lets them run beside the scheduler's writes);
submissions are validated and stored here, then handed to the scheduler; everything that changes a
state (cancel, pause, resume, retry) runs on the scheduler's thread. Every call but ``/health``
carries a token (``Authorization: Bearer …``); what it may see and do follows :mod:`farm.access`.
Every refusal is a 4xx whose ``detail`` is one line naming the problem: 401 for a missing, unknown,
expired or revoked token, 403 for what the caller's role or quota does not allow, 404 for a job
that does not exist or that the caller may not see (any id a store could not hold included), 422
for a request that does not fit the spec (an unknown field, a wrong type: bodies are checked
strictly, so ``"3"`` or ``true`` is not a number), 400 for anything else the farm refuses (a
missing scene, a job already finished).
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import ray
from fastapi import Depends, FastAPI, Query, Request
from fastapi import Path as Path_
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from farm import __version__
from farm.accounts import auth
from farm.accounts import standing as accounts
from farm.accounts.access import (
    Caller,
    caller_for,
    changeable,
    confine,
    jobs_visible,
    output_root,
    readable,
)
from farm.accounts.standing import Ask, Standing
from farm.api import PREFIX
from farm.api.admin import admin_routes
from farm.errors import FarmError, Forbidden, NotFound, Unauthorized
from farm.labs import LAB_PATTERN, lab_resource
from farm.scheduler.kinds import comp as comp_job
from farm.scheduler.loop import Scheduler
from farm.store import submit
from farm.store.queries import (
    job_events,
    job_logs,
    job_metrics,
    job_outputs,
    job_status,
    job_tasks,
    list_jobs,
)
from farm.store.scenes import PREFIX as SCENE_PREFIX
from farm.store.scenes import SceneStore
from farm.store.tables import session
from pipelines import probe, render, train
from pipelines.probe import ProbeSpec
from pipelines.render import RenderRequest

Text = Annotated[str, Field(max_length=4096)]
Short = Annotated[str, Field(max_length=64)]
Lab = Annotated[str, Field(pattern=LAB_PATTERN)]


class Submission(BaseModel):
    """What every job type's submission carries besides its own spec."""

    model_config = ConfigDict(extra="forbid", strict=True)
    priority: int = Field(50, ge=0, le=100, description="Higher runs first.")
    after: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(
        default_factory=list, max_length=100, description="Jobs that must be done first."
    )


class RenderSubmission(Submission):
    """``farm submit render``: the options of ``farm render``; paths as the server sees them."""

    scene: Text
    frames: Text | None = None
    chunk: int = Field(1, ge=1, le=1_000_000)
    tiles: Short = "auto"
    overscan: int = Field(0, ge=0, le=65_536)
    output: Text | None = None
    format: Short | None = None
    samples: int | None = Field(None, ge=1, le=1_000_000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    resolution: Short | None = None
    engine: Short | None = None
    device: Short = "CPU"
    compression: Short | None = None
    allow_scripts: bool = False
    retries: int = Field(2, ge=0, le=100)
    slots: int | None = Field(None, ge=1, le=4096, description="Most slots the job may hold.")
    threads: int = Field(2, ge=1, le=1024, description="Render threads (CPUs) per slot.")
    memory: int | None = Field(None, ge=1, le=2**50, description="Bytes each slot reserves.")
    stall_timeout: float = Field(600.0, gt=0, le=86_400)
    lab: Lab | None = None
    name: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="The job's name (default: the scene's file name)."
    )


class ProbeSubmission(Submission):
    """``farm submit probe``: N tasks that hold a slot for a while and say where they ran."""

    tasks: int = Field(1, ge=1, le=probe.MAX_TASKS)
    seconds: float = Field(0.0, ge=0, le=86_400)
    cpus: float = Field(1.0, gt=0, le=1024)
    gpus: float = Field(0.0, ge=0, le=64)
    memory: int = Field(0, ge=0, le=2**50, description="Bytes each task reserves.")
    fail_first: int = Field(0, ge=0, le=100)
    retries: int = Field(2, ge=0, le=100)


class TrainSubmission(Submission):
    """``farm submit train``: the script travels as text; Ray Train runs it on the cluster."""

    script: Annotated[str, Field(max_length=256)] = Field(description="The script's file name.")
    source: Annotated[str, Field(max_length=train.MAX_SCRIPT)] = Field(
        description="The script: defines train_loop_per_worker(config)."
    )
    workers: int = Field(1, ge=1, le=1024)
    cpus_per_worker: float = Field(1.0, gt=0, le=1024)
    gpus_per_worker: float = Field(0.0, ge=0, le=64)
    max_hours: float | None = Field(None, gt=0, le=8760)
    config: dict[Annotated[str, Field(max_length=128)], Any] = Field(
        default_factory=dict, max_length=256, description="train_loop_config."
    )
    max_failures: int = Field(2, ge=0, le=100)
    lab: Lab | None = None


class CompSubmission(Submission):
    """``farm comp``: the spec file's tables as JSON; paths as the server sees them, relative
    ones in the caller's own folder."""

    spec: dict[Annotated[str, Field(max_length=64)], Any] = Field(
        max_length=16, description="The comp spec: inputs, ops, output, review (see the README)."
    )
    lab: Lab | None = None
    name: Annotated[str, Field(max_length=256)] | None = None


class Scene(BaseModel):
    scene: str = Field(description="What a render submission names it by: sha256:<digest>.")
    bytes: int


class TaskChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    task: Short | None = Field(None, description="One task (e.g. f12.t3); none: the whole job.")


class Accepted(BaseModel):
    id: int
    state: str


class Changed(BaseModel):
    id: int
    result: str


class Problem(BaseModel):
    """Every refusal: ``detail`` is one line naming the problem."""

    detail: str
    errors: int | None = Field(None, description="How many fields were wrong (422 only).")


def _refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    words = {
        400: "Refused: the farm cannot do this (one line says why)",
        401: "No token, or one that does not work (unknown, expired, revoked)",
        403: "The caller's role or quota does not allow this",
        404: "No such job (or not one of the caller's)",
        422: "The request does not fit this spec (one line names the first problem)",
    }
    return {code: {"model": Problem, "description": words[code]} for code in (401, *codes)}


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` as one printable line: control characters escaped, at most ``limit`` characters."""
    line = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def validation_detail(error: RequestValidationError) -> str:
    """The first problem of a request that does not fit the spec, in one line."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    if first["type"] == "json_invalid":
        reason = first.get("ctx", {}).get("error", "it cannot be parsed")
        return f"the request body is not valid JSON: {reason}"
    if not loc:  # the body as a whole
        if first["type"] == "missing":
            return "the request body is missing: send a JSON object"
        return "the request body must be a JSON object (Content-Type: application/json)"
    where = ".".join(one_line(p, 64) for p in loc)
    return f"{where}: {first['msg']}"


class Cluster:
    """What the Ray cluster offers, read at most every couple of seconds for submissions."""

    def __init__(self) -> None:
        self._nodes: list[dict[str, Any]] = []
        self._read = 0.0

    def nodes(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._read > 2.0:
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            self._read = time.monotonic()
        return self._nodes

    def check(self, cpus: float, gpus: float, lab: str | None, memory: int = 0) -> None:
        """Refuse work no node of the cluster could ever run."""
        nodes = self.nodes()
        if lab is not None:
            nodes = [n for n in nodes if n["Resources"].get(lab_resource(lab), 0) > 0]
            if not nodes:
                raise FarmError(f"no node of the {lab} lab has joined the cluster")
        if not any(
            n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus
            for n in nodes
        ):
            most = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
            gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
            raise FarmError(
                f"no node has {cpus:g} CPUs and {gpus:g} GPUs (the largest has {most:g} CPUs, "
                f"and the most GPUs on one node is {gpu:g})"
            )
        if memory and not any(n["Resources"].get("memory", 0) >= memory for n in nodes):
            most = max((n["Resources"].get("memory", 0) for n in nodes), default=0)
            raise FarmError(
                f"no node has {memory / 2**30:.3g} GiB of memory for Ray (the most is "
                f"{most / 2**30:.3g} GiB)"
            )


def create_app(engine: Engine, scheduler: Scheduler, data: Path) -> FastAPI:
    """The API over ``engine``'s store, handing work to ``scheduler``; uploaded scenes and the
    frames of relative output paths live under ``data``."""
    app = FastAPI(
        title="CREIC lab farm",
        version=__version__,
        description="Render farm and ML job scheduler of the CREIC Film Lab and Work 4.0 Lab.",
    )
    cluster = Cluster()
    scenes = SceneStore(data / "scenes")
    # One admission at a time: two submissions never both spend the last of a quota.
    admission = threading.Lock()

    def db() -> Iterator[Session]:
        with session(engine) as opened:
            yield opened

    Db = Annotated[Session, Depends(db)]

    bearer = HTTPBearer(auto_error=False, description="An API token: farm admin token create")

    def caller(
        db: Db, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> Caller:
        token = credentials.credentials if credentials else None
        return caller_for(db, auth.authenticate(db, token))

    Me = Annotated[Caller, Depends(caller)]

    @app.middleware("http")
    async def single_query_values(request: Request, call_next: Any) -> Any:
        """A query parameter given twice is refused: the spec says each is one value, and taking
        the last (what FastAPI does) would accept a request the spec forbids."""
        seen: set[str] = set()
        for name, _ in request.query_params.multi_items():
            if name in seen:
                detail = f"{one_line(name, 64)}: query parameter given more than once"
                return JSONResponse({"detail": detail, "errors": 1}, status_code=422)
            seen.add(name)
        return await call_next(request)

    @app.exception_handler(FarmError)
    async def refused(_: Request, error: FarmError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthorized) else None
        detail = {"detail": one_line(str(error))}
        return JSONResponse(detail, status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": one_line(validation_detail(error)), "errors": len(error.errors())},
            status_code=422,
        )

    def admitted(db: Session, me: Caller, ask: Ask) -> Standing:
        """The caller's standing, if their enrolment and quota accept ``ask`` (under the lock)."""
        standing = accounts.standing_of(db, me.name)
        accounts.admit(standing, ask, accounts.booked_gpu_seconds(db, me.name))
        return standing

    @app.get(f"{PREFIX}/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "version": __version__}

    @app.post(f"{PREFIX}/jobs/render", status_code=201, responses=_refusals(400, 403, 422))
    def submit_render(body: RenderSubmission, db: Db, me: Me) -> Accepted:
        fields = body.model_dump(
            exclude={
                "priority",
                "after",
                "slots",
                "threads",
                "stall_timeout",
                "lab",
                "name",
                "memory",
            }
        )
        if body.allow_scripts and me.role == "trainee":
            raise Forbidden("only instructors and admins may run a scene's own scripts")
        standing = accounts.standing_of(db, me.name)
        root = output_root(standing, data)
        scene = body.scene
        if not scene.startswith("sha256:"):
            scene = str(confine(scene, root, "scene", me.admin))
        fields["scene"], digest = scenes.resolve(scene)
        output = fields["output"] or f"renders/{Path(body.name or body.scene).stem}_####.exr"
        fields["output"] = str(confine(output, root, "output", me.admin))
        spec = render.validate(RenderRequest(**fields))
        gpu = spec.overrides.get("device", "CPU") != "CPU"
        cluster.check(body.threads, 1 if gpu else 0, body.lab, body.memory or 0)
        ask = Ask(body.priority, body.lab, 1.0 if gpu else 0.0, None, 1)
        run = {
            "threads": body.threads,
            "slots": body.slots,
            "stall_timeout": body.stall_timeout,
            "lab": body.lab,
            "memory": body.memory,
            "digest": digest,
        }
        name = body.name or spec.scene.name
        with admission:
            standing = admitted(db, me, ask)
            enrolment = (standing.programme, standing.cohort)
            job_id = submit.render(
                db, spec, run, me.name, body.priority, body.after, name, enrolment
            )
        scheduler.notify(job_id)
        return Accepted(id=job_id, state="queued")

    @app.post(f"{PREFIX}/jobs/probe", status_code=201, responses=_refusals(400, 403, 422))
    def submit_probe(body: ProbeSubmission, db: Db, me: Me) -> Accepted:
        spec = probe.validate(ProbeSpec(**body.model_dump(exclude={"priority", "after"})))
        cluster.check(spec.cpus, spec.gpus, None, spec.memory)
        ask = Ask(body.priority, None, spec.gpus, spec.seconds, spec.tasks)
        with admission:
            standing = admitted(db, me, ask)
            enrolment = (standing.programme, standing.cohort)
            job_id = submit.probe_job(db, spec, me.name, body.priority, body.after, enrolment)
        scheduler.notify(job_id)
        return Accepted(id=job_id, state="queued")

    @app.post(f"{PREFIX}/jobs/train", status_code=201, responses=_refusals(400, 403, 422))
    def submit_train(body: TrainSubmission, db: Db, me: Me) -> Accepted:
        fields = body.model_dump(exclude={"priority", "after", "lab"})
        spec = train.validate(train.TrainSpec(**fields))
        cluster.check(spec.cpus_per_worker, spec.gpus_per_worker, body.lab)
        gpus = spec.workers * spec.gpus_per_worker
        seconds = spec.max_hours * 3600 if spec.max_hours else None
        ask = Ask(body.priority, body.lab, gpus, seconds, 1)
        with admission:
            standing = admitted(db, me, ask)
            enrolment = (standing.programme, standing.cohort)
            job_id = submit.train_job(
                db, spec, me.name, body.priority, body.after, enrolment, body.lab
            )
        scheduler.notify(job_id)
        return Accepted(id=job_id, state="queued")

    @app.post(f"{PREFIX}/jobs/comp", status_code=201, responses=_refusals(400, 403, 422))
    def submit_comp(body: CompSubmission, db: Db, me: Me) -> Accepted:
        root = output_root(accounts.standing_of(db, me.name), data)
        spec = comp_job.prepare(
            db, body.spec, lambda path, what: str(confine(path, root, what, me.admin)), body.after
        )
        cluster.check(comp_job.CPUS, 0, body.lab)
        with admission:
            standing = admitted(db, me, Ask(body.priority, body.lab, 0.0, None, 1))
            enrolment = (standing.programme, standing.cohort)
            job_id = submit.comp_job(
                db, spec, me.name, body.priority, body.after, enrolment, body.lab, body.name
            )
        scheduler.notify(job_id)
        return Accepted(id=job_id, state="queued")

    @app.get(f"{PREFIX}/jobs/{{job_id}}/metrics", responses=_refusals(404, 422))
    def metrics(job_id: int, db: Db, me: Me) -> list[dict[str, Any]]:
        """What a training run reported, in order."""
        return job_metrics(db, readable(db, me, job_id).id)

    @app.get(f"{PREFIX}/jobs", responses=_refusals(422))
    def jobs(
        db: Db, me: Me, limit: Annotated[int, Query(ge=1, le=10_000)] = 50
    ) -> list[dict[str, Any]]:
        """The newest jobs the caller may see."""
        return list_jobs(db, limit, jobs_visible(me))

    @app.get(f"{PREFIX}/jobs/{{job_id}}", responses=_refusals(404, 422))
    def status(job_id: int, db: Db, me: Me) -> dict[str, Any]:
        return job_status(db, readable(db, me, job_id).id)

    @app.get(f"{PREFIX}/jobs/{{job_id}}/tasks", responses=_refusals(404, 422))
    def tasks(job_id: int, db: Db, me: Me) -> list[dict[str, Any]]:
        return job_tasks(db, readable(db, me, job_id).id)

    @app.get(f"{PREFIX}/jobs/{{job_id}}/logs", responses=_refusals(400, 404, 422))
    def logs(
        job_id: int, db: Db, me: Me, task: Annotated[str | None, Query(max_length=64)] = None
    ) -> list[dict[str, Any]]:
        return job_logs(db, readable(db, me, job_id).id, task)

    @app.get(f"{PREFIX}/jobs/{{job_id}}/events", responses=_refusals(404, 422))
    def events(
        job_id: int,
        db: Db,
        me: Me,
        after: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict[str, Any]]:
        return job_events(db, readable(db, me, job_id).id, after, limit)

    def change(verb: str) -> Any:
        def endpoint(job_id: int, db: Db, me: Me, body: TaskChoice | None = None) -> Changed:
            choice = body.task if body else None
            changeable(db, me, job_id)
            result = scheduler.call(getattr(scheduler, verb), job_id, choice)
            return Changed(id=job_id, result=result)

        endpoint.__name__ = verb
        return endpoint

    for verb in ("cancel", "pause", "resume", "retry"):
        app.post(
            f"{PREFIX}/jobs/{{job_id}}/{verb}", name=verb, responses=_refusals(400, 403, 404, 422)
        )(change(verb))

    @app.put(f"{PREFIX}/scenes/{{digest}}", status_code=201, responses=_refusals(400, 422))
    async def upload_scene(
        digest: Annotated[str, Path_(max_length=64)], request: Request, _: Me
    ) -> Scene:
        """Store a .blend under its sha256 (the body is the file); the same bytes twice are one."""
        if scenes.path(digest).is_file():
            return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=scenes.path(digest).stat().st_size)
        upload = scenes.upload(digest)
        try:
            async for chunk in request.stream():
                upload.add(chunk)
            size = upload.finish()
        except BaseException:
            upload.abort()
            raise
        return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=size)

    @app.get(f"{PREFIX}/scenes/{{digest}}", responses=_refusals(400, 404, 422))
    def scene(digest: Annotated[str, Path_(max_length=64)], _: Me) -> Scene:
        path = scenes.path(digest)
        if not path.is_file():
            raise NotFound(f"no uploaded scene {SCENE_PREFIX}{digest}")
        return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=path.stat().st_size)

    @app.get(f"{PREFIX}/jobs/{{job_id}}/outputs", responses=_refusals(404, 422))
    def outputs(job_id: int, db: Db, me: Me) -> list[dict[str, Any]]:
        """The frames the job has written, for `farm fetch`."""
        return job_outputs(db, readable(db, me, job_id).id)

    @app.get(f"{PREFIX}/jobs/{{job_id}}/outputs/{{frame}}", responses=_refusals(404, 422))
    def output(job_id: int, frame: int, db: Db, me: Me) -> FileResponse:
        for written in job_outputs(db, readable(db, me, job_id).id):
            if written["frame"] == frame:
                return FileResponse(written["path"], filename=Path(written["path"]).name)
        raise NotFound(f"job {job_id} has no frame {frame} on disk")

    @app.get(f"{PREFIX}/nodes", responses=_refusals())
    def nodes(_: Me) -> list[dict[str, Any]]:
        work = scheduler.call(scheduler.node_work)
        rows = []
        for node in ray.nodes():
            resources = node.get("Resources", {})
            rows.append(
                {
                    "id": node["NodeID"],
                    "host": node.get("NodeManagerHostname", ""),
                    "address": node.get("NodeManagerAddress", ""),
                    "alive": bool(node.get("Alive")),
                    "cpus": resources.get("CPU", 0),
                    "gpus": resources.get("GPU", 0),
                    "labs": sorted(k.removesuffix("_lab") for k in resources if k.endswith("_lab")),
                    **work.get(node["NodeID"], {"running": 0, "slots": []}),
                }
            )
        return rows

    @app.get(f"{PREFIX}/me", responses=_refusals())
    def me(db: Db, me: Me) -> dict[str, Any]:
        """Who the token belongs to, their enrolment, limits and the quota used in this period."""
        return accounts.standing_of(db, me.name).as_json()

    app.include_router(admin_routes(Db, Me, scheduler, _refusals), prefix=PREFIX)
    return app
