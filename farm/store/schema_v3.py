"""What migration step 3 adds, frozen: accounts, tokens, enrolments, policies and the ledger, and
the jobs' programme, cohort and known task size.

Never edit this file: later steps ALTER these tables forward (see :mod:`farm.store.schema_v1`).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

_V3 = MetaData()
_WHEN = DateTime(timezone=True)
# The tables that exist before step 3, as far as the new tables' foreign keys need them.
_BEFORE = [Table(name, _V3, Column("id", Integer, primary_key=True)) for name in ("jobs", "tasks")]

Table(
    "users",
    _V3,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("created_at", _WHEN, nullable=False),
)
Table(
    "tokens",
    _V3,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, index=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("hint", String(16), nullable=False),
    Column("created_at", _WHEN, nullable=False),
    Column("expires_at", _WHEN),
    Column("revoked_at", _WHEN),
)
Table(
    "enrolments",
    _V3,
    Column("id", Integer, primary_key=True),
    Column("user_id", ForeignKey("users.id"), nullable=False, index=True),
    Column("programme", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("starts", Date, nullable=False),
    Column("ends", Date, nullable=False),
    Column("status", String(16), nullable=False),
    UniqueConstraint("user_id", "programme", "cohort"),
)
Table(
    "policies",
    _V3,
    Column("id", Integer, primary_key=True),
    Column("programme", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("user", String(64), nullable=False),
    Column("gpu_hours", Float),
    Column("cpu_hours", Float),
    Column("period", String(16)),
    Column("max_gpus", Float),
    Column("max_priority", Integer),
    Column("labs", JSON),
    Column("output_root", Text),
    UniqueConstraint("programme", "cohort", "user"),
)
Table(
    "ledger",
    _V3,
    Column("id", Integer, primary_key=True),
    Column("task_id", ForeignKey("tasks.id"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("job_id", ForeignKey("jobs.id"), nullable=False, index=True),
    Column("owner", String(64), nullable=False, index=True),
    Column("programme", String(32), nullable=False),
    Column("cohort", String(64), nullable=False),
    Column("started_at", _WHEN, nullable=False),
    Column("ended_at", _WHEN, nullable=False, index=True),
    Column("seconds", Float, nullable=False),
    Column("gpus", Float, nullable=False),
    Column("cpus", Float, nullable=False),
    Column("status", String(16), nullable=False),
    UniqueConstraint("task_id", "attempt"),
)


def add_accounts(connection: Connection) -> None:
    """Migration step 3: the account tables, and what a job records for its owner's accounts."""
    _V3.create_all(connection, tables=[t for t in _V3.sorted_tables if t not in _BEFORE])
    for ddl in (
        "ALTER TABLE jobs ADD COLUMN programme VARCHAR(32) NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN cohort VARCHAR(64) NOT NULL DEFAULT ''",
        "ALTER TABLE jobs ADD COLUMN task_seconds FLOAT",
        "ALTER TABLE jobs ADD COLUMN task_gpus FLOAT NOT NULL DEFAULT 0",
    ):
        connection.execute(text(ddl))
