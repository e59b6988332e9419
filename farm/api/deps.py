"""The routes' dependencies: a store session, the caller, and the server's parts.

:func:`farm.api.app.create_app` keeps the parts on ``app.state`` (``engine``, ``scheduler``,
``data``, ``scenes``, ``cluster``, ``admission``); each dependency reads one from the request's
app, so that a route names what it uses and the routers need no factory. A ``Request`` parameter
does not show in the OpenAPI spec.
"""

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from farm.accounts import auth
from farm.accounts.access import Caller, caller_for
from farm.api.cluster import Cluster
from farm.scheduler.loop import Scheduler
from farm.store.scenes import ContentStore, SceneStore
from farm.store.tables import session


def db(request: Request) -> Iterator[Session]:
    """One store session per request (shared by the request's dependencies), closed after it."""
    with session(request.app.state.engine) as opened:
        yield opened


Db = Annotated[Session, Depends(db)]

bearer = HTTPBearer(auto_error=False, description="An API token: farm admin token create")


def caller(
    db: Db, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Caller:
    """The user behind the request's token; a missing or bad token is refused (401)."""
    token = credentials.credentials if credentials else None
    return caller_for(db, auth.authenticate(db, token))


Me = Annotated[Caller, Depends(caller)]


def scheduler(request: Request) -> Scheduler:
    """The scheduler: it loads what is submitted and runs every change of a job's state."""
    return request.app.state.scheduler


Sched = Annotated[Scheduler, Depends(scheduler)]


def data(request: Request) -> Path:
    """The server's data folder: relative output paths of callers with no output root go here."""
    return request.app.state.data


Data = Annotated[Path, Depends(data)]


def scenes(request: Request) -> SceneStore:
    """The scenes uploaded for renders."""
    return request.app.state.scenes


Scenes = Annotated[SceneStore, Depends(scenes)]


def files(request: Request) -> ContentStore:
    """The files uploaded scenes use (textures, libraries, caches), by content."""
    return request.app.state.files


Files = Annotated[ContentStore, Depends(files)]


def cluster(request: Request) -> Cluster:
    """What the Ray cluster offers, for refusing work no node could run."""
    return request.app.state.cluster


ClusterCheck = Annotated[Cluster, Depends(cluster)]


def admission_lock(request: Request) -> threading.Lock:
    """The lock that admits one submission at a time, so that two never both spend the last of
    a quota."""
    return request.app.state.admission


AdmissionLock = Annotated[threading.Lock, Depends(admission_lock)]
