"""The farm's HTTP API, version 1: JSON in and out, its OpenAPI spec at ``/openapi.json``.

Reads go straight to the store (SQLite in WAL mode lets them run beside the scheduler's writes);
submissions are validated and stored here, then handed to the scheduler; everything that changes a
state (cancel, pause, resume, retry) runs on the scheduler's thread. Every call but ``/health``
carries a token (``Authorization: Bearer …``); what it may see and do follows
:mod:`farm.accounts.access`. Every refusal is a 4xx whose ``detail`` is one line naming the
problem: 401 for a missing, unknown, expired or revoked token, 403 for what the caller's role or
quota does not allow, 404 for a job that does not exist or that the caller may not see (any id a
store could not hold included), 422 for a request that does not fit the spec (an unknown field, a
wrong type: bodies are checked strictly, so ``"3"`` or ``true`` is not a number), 400 for anything
else the farm refuses (a missing scene, a job already finished).

The routes live in one router per area (:mod:`farm.api.submissions`, :mod:`~farm.api.jobs`,
:mod:`~farm.api.files`, :mod:`~farm.api.overview`, :mod:`~farm.api.admin`); what they share is on
``app.state``, read through :mod:`farm.api.deps`.
"""

import threading
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.engine import Engine

from farm import __version__
from farm.api import PREFIX, admin, files, jobs, overview, submissions
from farm.api.cluster import Cluster
from farm.api.errors import invalid, refused, single_query_values
from farm.errors import FarmError
from farm.scheduler.loop import Scheduler
from farm.store.scenes import ContentStore, SceneStore

health_router = APIRouter()
"""The server's own route: the one call without a token."""


@health_router.get("/health")
def health() -> dict[str, Any]:
    return {"ok": True, "version": __version__}


ROUTERS = (
    health_router,
    submissions.router,
    jobs.router,
    files.router,
    overview.router,
    admin.router,
)
"""In the order their routes are matched and listed in the spec."""


def create_app(engine: Engine, scheduler: Scheduler, data: Path) -> FastAPI:
    """The API over ``engine``'s store, handing work to ``scheduler``; uploaded scenes and the
    frames of relative output paths live under ``data``."""
    app = FastAPI(
        title="CREIC lab farm",
        version=__version__,
        description="Render farm and ML job scheduler of the CREIC Film Lab and Work 4.0 Lab.",
    )
    app.state.engine = engine
    app.state.scheduler = scheduler
    app.state.data = data
    app.state.scenes = SceneStore(data / "scenes")
    app.state.files = ContentStore(data / "files")
    app.state.cluster = Cluster()
    app.state.admission = threading.Lock()  # one admission at a time: see submissions.Admission
    app.middleware("http")(single_query_values)
    app.exception_handler(FarmError)(refused)
    app.exception_handler(RequestValidationError)(invalid)
    for router in ROUTERS:
        app.include_router(router, prefix=PREFIX)
    return app
