"""The store's tables as schema version 1 created them, frozen.

Migration step 1 builds exactly these tables, whatever the models in :mod:`farm.store.tables` look like
now; later steps ALTER them forward. Never edit this file.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

_V1 = MetaData()
_WHEN = DateTime(timezone=True)

Table("schema_version", _V1, Column("version", Integer, primary_key=True))
Table(
    "jobs",
    _V1,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(256), nullable=False),
    Column("owner", String(64), nullable=False, index=True),
    Column("state", String(16), nullable=False, index=True),
    Column("priority", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("submitted_at", _WHEN, nullable=False),
    Column("started_at", _WHEN),
    Column("ended_at", _WHEN),
)
Table(
    "tasks",
    _V1,
    Column("id", Integer, primary_key=True),
    Column("job_id", ForeignKey("jobs.id"), nullable=False, index=True),
    Column("key", String(64), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False),
    Column("payload", JSON, nullable=False),
    UniqueConstraint("job_id", "key"),
)
Table(
    "attempts",
    _V1,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id"), nullable=False, index=True),
    Column("number", Integer, nullable=False),
    Column("node", String(64), nullable=False),
    Column("resources", JSON, nullable=False),
    Column("started_at", _WHEN, nullable=False),
    Column("ended_at", _WHEN),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=False),
)
Table(
    "task_logs",
    _V1,
    Column("id", Integer, primary_key=True),
    Column("attempt_id", ForeignKey("attempts.id"), nullable=False, index=True),
    Column("text", Text, nullable=False),
)
Table(
    "events",
    _V1,
    Column("id", Integer, primary_key=True),
    Column("job_id", ForeignKey("jobs.id"), nullable=False, index=True),
    Column("task_id", ForeignKey("tasks.id")),
    Column("at", _WHEN, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("frame", Integer),
    Column("message", Text, nullable=False),
)


def create_v1(connection: Connection) -> None:
    """Migration step 1: the version-1 tables."""
    _V1.create_all(connection)
