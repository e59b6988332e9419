"""The ledger: every ended attempt charged to its owner, programme and cohort.

An attempt is charged its measured wall time (from when it really began on its node to when the
farm learnt it ended) times what it held: GPU-seconds and CPU-seconds. Failed and cancelled
attempts are charged like done ones, since they held the node as long; attempts *lost* when a
server stopped are not, since nobody knows when they ended. Rows are written in the same
transaction that ends the attempt (:func:`farm.store.states.end`), so the ledger and the attempts agree.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from farm.store.tables import Charge

_LEDGER = Charge.__table__
BY = ("user", "programme", "cohort")


@dataclass(frozen=True, slots=True)
class Use:
    """Who an attempt is charged to, and what it held while it ran."""

    owner: str
    programme: str
    cohort: str
    gpus: float
    cpus: float


@dataclass(frozen=True, slots=True)
class Bill:
    """An attempt's charge: its use, and when (epoch seconds) it began running on its node."""

    use: Use
    began: float


def record(db: Session, entries: list[tuple[int, int, int, str, Bill]], ended: dt.datetime) -> None:
    """Add ledger rows for attempts (task id, attempt number, job id, status, bill) that ended at
    ``ended``; the caller commits them with the attempts."""
    if not entries:
        return
    end = ended.timestamp()
    db.execute(
        insert(_LEDGER),
        [
            {
                "task_id": task_id,
                "attempt": number,
                "job_id": job_id,
                "owner": bill.use.owner,
                "programme": bill.use.programme,
                "cohort": bill.use.cohort,
                "started_at": dt.datetime.fromtimestamp(min(bill.began, end), dt.UTC),
                "ended_at": ended,
                "seconds": max(0.0, end - bill.began),
                "gpus": bill.use.gpus,
                "cpus": bill.use.cpus,
                "status": status,
            }
            for task_id, number, job_id, status, bill in entries
        ],
    )


def used_by(
    db: Session, owners: list[str], since: dt.datetime | None
) -> dict[str, tuple[float, float]]:
    """GPU-seconds and CPU-seconds charged to each of ``owners`` since ``since`` (None: ever);
    owners charged nothing are left out."""
    query = select(
        Charge.owner,
        func.sum(Charge.seconds * Charge.gpus),
        func.sum(Charge.seconds * Charge.cpus),
    ).group_by(Charge.owner)
    if len(owners) < 500:  # a whole farm's accounts: every owner, no IN list
        query = query.where(Charge.owner.in_(owners))
    if since is not None:
        query = query.where(Charge.ended_at >= since)
    wanted = set(owners)
    return {
        owner: (float(gpu or 0.0), float(cpu or 0.0))
        for owner, gpu, cpu in db.execute(query)
        if owner in wanted
    }


def usage(
    db: Session, by: str, since: dt.datetime | None, until: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Charged hours grouped by user, programme or cohort, the most GPU-hours first."""
    if by not in BY:
        raise ValueError(by)
    keys = {
        "user": (Charge.owner,),
        "programme": (Charge.programme,),
        "cohort": (Charge.programme, Charge.cohort),
    }[by]
    query = select(
        *keys,
        func.sum(Charge.seconds * Charge.gpus),
        func.sum(Charge.seconds * Charge.cpus),
        func.count(),
        func.count(func.distinct(Charge.job_id)),
    ).group_by(*keys)
    if since is not None:
        query = query.where(Charge.ended_at >= since)
    if until is not None:
        query = query.where(Charge.ended_at < until)
    rows = []
    for row in db.execute(query):
        *names, gpu, cpu, attempts, jobs = row
        rows.append(
            {
                by: "/".join(names) if by == "cohort" else names[0],
                "gpu_hours": round(float(gpu or 0) / 3600, 6),
                "cpu_hours": round(float(cpu or 0) / 3600, 6),
                "attempts": attempts,
                "jobs": jobs,
            }
        )
    return sorted(rows, key=lambda r: (-r["gpu_hours"], -r["cpu_hours"], r[by]))


def daily(db: Session, since: dt.datetime) -> list[dict[str, Any]]:
    """GPU- and CPU-hours per day and cohort since ``since``, for the usage plot."""
    totals: dict[tuple[dt.date, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    rows = db.execute(
        select(
            Charge.ended_at,
            Charge.programme,
            Charge.cohort,
            Charge.seconds,
            Charge.gpus,
            Charge.cpus,
        ).where(Charge.ended_at >= since)
    )
    for ended, programme, cohort, seconds, gpus, cpus in rows:
        day = ended.astimezone(dt.UTC).date() if ended.tzinfo else ended.date()
        total = totals[(day, f"{programme}/{cohort}" if programme else "(none)")]
        total[0] += seconds * gpus / 3600
        total[1] += seconds * cpus / 3600
    return [
        {"day": day.isoformat(), "cohort": cohort, "gpu_hours": g, "cpu_hours": c}
        for (day, cohort), (g, c) in sorted(totals.items())
    ]


def history(db: Session, since: dt.datetime) -> list[tuple[str, float, float, float]]:
    """(owner, ended at as epoch seconds, GPU-seconds, CPU-seconds) since ``since``: what fair
    share decays."""
    rows = db.execute(
        select(
            Charge.owner,
            Charge.ended_at,
            Charge.seconds * Charge.gpus,
            Charge.seconds * Charge.cpus,
        ).where(Charge.ended_at >= since)
    )
    return [
        (owner, (ended if ended.tzinfo else ended.replace(tzinfo=dt.UTC)).timestamp(), g, c)
        for owner, ended, g, c in rows
    ]
