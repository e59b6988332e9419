"""Where the CLI reads jobs from: the farm server when one is configured, else the embedded farm's
store. Both answer with the same JSON shapes (:mod:`farm.store.queries` makes them on either side)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from farm.cli.client import Client, server_url
from farm.config import STORE_FILE, farm_home, store_url
from farm.errors import FarmError, NotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

NEEDS_SERVER = (
    "{what} needs a farm server: set FARM_URL or run `farm login URL` "
    "(without one, `farm render` runs a job on this machine)"
)


class Farm(Protocol):
    def jobs(self, limit: int) -> list[dict[str, Any]]: ...
    def status(self, job: int) -> dict[str, Any]: ...
    def logs(self, job: int, task: str | None) -> list[dict[str, Any]]: ...
    def events(self, job: int, after: int) -> list[dict[str, Any]]: ...
    def metrics(self, job: int) -> list[dict[str, Any]]: ...
    def change(self, verb: str, job: int, task: str | None) -> str: ...


class LocalFarm:
    """The embedded farm's store, read only: its jobs ran (or run) in a ``farm render``."""

    def __init__(self) -> None:
        # The store's code loads only here (SQLAlchemy is most of a command's start-up), and
        # nothing is created just to be read: before the first job there is no store.
        from farm.store import queries
        from farm.store.tables import open_store, session

        self.queries = queries
        exists = (farm_home() / STORE_FILE).exists()
        self.db: Session | None = session(open_store(store_url())) if exists else None

    def _store(self, job: int) -> Session:
        if self.db is None:
            raise NotFound(f"no job {job}")
        self.db.expire_all()
        return self.db

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return self.queries.list_jobs(self.db, limit) if self.db else []

    def status(self, job: int) -> dict[str, Any]:
        return self.queries.job_status(self._store(job), job)

    def logs(self, job: int, task: str | None) -> list[dict[str, Any]]:
        return self.queries.job_logs(self._store(job), job, task)

    def events(self, job: int, after: int) -> list[dict[str, Any]]:
        return self.queries.job_events(self._store(job), job, after)

    def metrics(self, job: int) -> list[dict[str, Any]]:
        return self.queries.job_metrics(self._store(job), job)

    def change(self, verb: str, job: int, task: str | None) -> str:
        raise FarmError(NEEDS_SERVER.format(what=f"farm {verb}"))


class RemoteFarm:
    """A farm server, through its API."""

    def __init__(self, url: str) -> None:
        self.client = Client(url)

    def jobs(self, limit: int) -> list[dict[str, Any]]:
        return self.client.get("/jobs", limit=limit)

    def status(self, job: int) -> dict[str, Any]:
        return self.client.get(f"/jobs/{job}")

    def logs(self, job: int, task: str | None) -> list[dict[str, Any]]:
        return self.client.get(f"/jobs/{job}/logs", task=task)

    def events(self, job: int, after: int) -> list[dict[str, Any]]:
        return self.client.get(f"/jobs/{job}/events", after=after)

    def metrics(self, job: int) -> list[dict[str, Any]]:
        return self.client.get(f"/jobs/{job}/metrics")

    def change(self, verb: str, job: int, task: str | None) -> str:
        return self.client.post(f"/jobs/{job}/{verb}", {"task": task})["result"]


def connect() -> LocalFarm | RemoteFarm:
    url = server_url()
    return RemoteFarm(url) if url else LocalFarm()


def remote(what: str) -> RemoteFarm:
    """The configured server, or a one-line refusal naming the command that needs it."""
    url = server_url()
    if not url:
        raise FarmError(NEEDS_SERVER.format(what=what))
    return RemoteFarm(url)
