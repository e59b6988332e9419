"""The farm's store: jobs, tasks, attempts, task logs and events in SQL.

SQLAlchemy 2 over SQLite (WAL) by default, PostgreSQL by URL. The schema is versioned: a store
opened by a newer farm is migrated forward in one transaction, one numbered step at a time, and a
store written by a farm newer than this one is refused rather than misread.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from farm.errors import FarmError
from farm.store.schema_v1 import create_v1
from farm.store.schema_v3 import add_accounts


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(primary_key=True)


class Job(Base):
    """One submission: a render, a comp, a training run."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(256))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    priority: Mapped[int] = mapped_column(Integer, default=50)
    spec: Mapped[dict[str, Any]]
    # Jobs that must be done before this one runs (`--after`).
    depends_on: Mapped[list[int]] = mapped_column(JSON, default=list)
    # What the job learnt once it started (a render: the scene as Blender reported it), so a
    # restarted server plans it again without asking Blender.
    plan: Mapped[dict[str, Any] | None]
    # Ray nodes that failed too many of this job's tasks: the job runs no more tasks there.
    blocked_nodes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The owner's enrolment when the job was submitted: what its attempts are charged to.
    programme: Mapped[str] = mapped_column(String(32), default="")
    cohort: Mapped[str] = mapped_column(String(64), default="")
    # One task's known length and GPUs (a probe's, a training run's --max-hours), so that admission
    # can book what queued work will spend of a GPU-hour quota; None: not known in advance.
    task_seconds: Mapped[float | None] = mapped_column(Float)
    task_gpus: Mapped[float] = mapped_column(Float, default=0.0)
    submitted_at: Mapped[dt.datetime] = mapped_column(default=now)
    started_at: Mapped[dt.datetime | None]
    ended_at: Mapped[dt.datetime | None]
    tasks: Mapped[list[Task]] = relationship(back_populates="job", order_by="Task.id")


class Task(Base):
    """A frame, a chunk of frames or a tile of a job."""

    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("job_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]]
    job: Mapped[Job] = relationship(back_populates="tasks")
    tries: Mapped[list[Attempt]] = relationship(back_populates="task", order_by="Attempt.number")


class Attempt(Base):
    """One try of a task on one node."""

    __tablename__ = "attempts"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(64), default="")
    resources: Mapped[dict[str, Any]]
    started_at: Mapped[dt.datetime] = mapped_column(default=now)
    ended_at: Mapped[dt.datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|done|failed|lost
    error: Mapped[str] = mapped_column(Text, default="")
    task: Mapped[Task] = relationship(back_populates="tries")
    logs: Mapped[list[TaskLog]] = relationship(back_populates="attempt", order_by="TaskLog.id")


class TaskLog(Base):
    """Log lines of an attempt (Blender's output on failure, a trainer's traceback)."""

    __tablename__ = "task_logs"
    id: Mapped[int] = mapped_column(primary_key=True)
    attempt_id: Mapped[int] = mapped_column(ForeignKey("attempts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    attempt: Mapped[Attempt] = relationship(back_populates="logs")


class Event(Base):
    """What happened to a job, in order: submitted, state changes, frames written, retries."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    at: Mapped[dt.datetime] = mapped_column(default=now)
    kind: Mapped[str] = mapped_column(String(32))
    frame: Mapped[int | None]  # for "written": the frame now on disk (what a restart skips)
    message: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    """Someone who may use the farm: a trainee, an instructor or an admin."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=now)


class Token(Base):
    """An API token: only its SHA-256 is kept; the token itself is shown once."""

    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))  # the token's first characters, for lists
    created_at: Mapped[dt.datetime] = mapped_column(default=now)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]


class Enrolment(Base):
    """A user's place in a programme's cohort, from one date to another (both included)."""

    __tablename__ = "enrolments"
    __table_args__ = (UniqueConstraint("user_id", "programme", "cohort"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    programme: Mapped[str] = mapped_column(String(32))
    cohort: Mapped[str] = mapped_column(String(64))
    starts: Mapped[dt.date] = mapped_column(Date)
    ends: Mapped[dt.date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))  # active | completed | withdrawn


class Policy(Base):
    """Quotas and the output root for a programme, one of its cohorts, or one user ('' where a
    level does not apply). A user's limits take each field from the most specific policy that
    sets it: user, then cohort, then programme."""

    __tablename__ = "policies"
    __table_args__ = (UniqueConstraint("programme", "cohort", "user"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    programme: Mapped[str] = mapped_column(String(32), default="")
    cohort: Mapped[str] = mapped_column(String(64), default="")
    user: Mapped[str] = mapped_column(String(64), default="")
    gpu_hours: Mapped[float | None] = mapped_column(Float)
    cpu_hours: Mapped[float | None] = mapped_column(Float)
    period: Mapped[str | None] = mapped_column(String(16))  # week | month | enrolment
    max_gpus: Mapped[float | None] = mapped_column(Float)
    max_priority: Mapped[int | None]
    labs: Mapped[list[str] | None] = mapped_column(JSON)
    output_root: Mapped[str | None] = mapped_column(Text)


class Charge(Base):
    """The ledger: one row per ended attempt, its measured wall time and what it held."""

    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("task_id", "attempt"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    programme: Mapped[str] = mapped_column(String(32))
    cohort: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime] = mapped_column(index=True)
    seconds: Mapped[float] = mapped_column(Float)
    gpus: Mapped[float] = mapped_column(Float)
    cpus: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))


def _add_job_columns(connection: Connection) -> None:
    """Version 2: job dependencies, the stored plan, and nodes blocked for a job."""
    for ddl in (
        "ALTER TABLE jobs ADD COLUMN depends_on JSON NOT NULL DEFAULT '[]'",
        "ALTER TABLE jobs ADD COLUMN plan JSON",
        "ALTER TABLE jobs ADD COLUMN blocked_nodes JSON NOT NULL DEFAULT '[]'",
    ):
        connection.execute(text(ddl))


# Step N brings a store from version N to N + 1. Append; never edit a released step: each step
# finds the tables exactly as the steps before it left them (schema_v1.py and schema_v3.py freeze theirs).
MIGRATIONS: list[Callable[[Connection], None]] = [create_v1, _add_job_columns, add_accounts]
SCHEMA_VERSION = len(MIGRATIONS)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL lets readers (the CLI, the API) read while the scheduler writes."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def open_store(url: str) -> Engine:
    """Open (creating or migrating) the store at ``url``: ``sqlite:///path`` or ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    migrate(engine)
    return engine


def _version(connection: Connection) -> int:
    if not connection.dialect.has_table(connection, SchemaVersion.__tablename__):
        return 0
    return connection.execute(select(SchemaVersion.version)).scalar_one_or_none() or 0


def store_version(engine: Engine) -> int:
    """The schema version of the store (0: empty)."""
    with engine.connect() as connection:
        return _version(connection)


def migrate(engine: Engine) -> None:
    """Bring the store to this farm's schema version, in one transaction."""
    with engine.begin() as connection:
        version = _version(connection)
        if version > SCHEMA_VERSION:
            raise FarmError(
                f"the store is at schema version {version}, newer than this farm's "
                f"{SCHEMA_VERSION}: upgrade the farm"
            )
        for step in MIGRATIONS[version:]:
            step(connection)
        if version != SCHEMA_VERSION:
            connection.execute(SchemaVersion.__table__.delete())
            connection.execute(SchemaVersion.__table__.insert().values(version=SCHEMA_VERSION))


def session(engine: Engine) -> Session:
    return Session(engine, expire_on_commit=False)
