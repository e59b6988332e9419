"""Who sees and changes what over the API, and where their files may be.

Trainees see and act on their own jobs only; instructors also read (not change) the jobs of the
cohorts they are enrolled in; admins see and change everything. A job someone may not see is
answered exactly like a job that does not exist (404), so ids reveal nothing; one they may see but
not change is refused with 403.

Outputs are confined to the owner's own folder, ``ROOT/USER``: ROOT is the output root their policy
sets (user, cohort, then programme), else ``DATA/outputs``. A relative output goes under it; an absolute one must lie
inside it once every symbolic link on the way is resolved, so neither ``..`` nor a link out of
the root escapes. Scenes given by path are confined the same way (uploads are by hash). Admins
may name any absolute path; their relative ones stay in their folder too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session

from farm.accounts.standing import Standing
from farm.errors import Forbidden, NotFound
from farm.store.tables import Enrolment, Job, User
from pipelines.render import user_path


@dataclass(frozen=True)
class Caller:
    """The user behind a request."""

    name: str
    role: str
    cohorts: frozenset[tuple[str, str]] = frozenset()  # (programme, cohort) they teach or follow

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def caller_for(db: Session, user: User) -> Caller:
    cohorts = frozenset(
        db.execute(
            select(Enrolment.programme, Enrolment.cohort).where(Enrolment.user_id == user.id)
        ).tuples()
    )
    return Caller(user.name, user.role, cohorts)


def jobs_visible(caller: Caller) -> Any:
    """The SQL condition selecting the jobs ``caller`` may read (None: all)."""
    if caller.admin:
        return None
    mine = Job.owner == caller.name
    if caller.role != "instructor" or not caller.cohorts:
        return mine
    taught = or_(*(and_(Job.programme == p, Job.cohort == c) for p, c in caller.cohorts))
    return or_(mine, taught if caller.cohorts else false())


def may_read(caller: Caller, job: Job) -> bool:
    if caller.admin or job.owner == caller.name:
        return True
    return caller.role == "instructor" and (job.programme, job.cohort) in caller.cohorts


def readable(db: Session, caller: Caller, job_id: int) -> Job:
    """The job if ``caller`` may read it; otherwise "no job", as if it did not exist."""
    job = db.get(Job, job_id) if 1 <= job_id <= 2**63 - 1 else None
    if job is None or not may_read(caller, job):
        raise NotFound(f"no job {job_id}")
    return job


def changeable(db: Session, caller: Caller, job_id: int) -> Job:
    """The job if ``caller`` may cancel, pause, resume or retry it."""
    job = readable(db, caller, job_id)
    if not caller.admin and job.owner != caller.name:
        raise Forbidden(f"job {job_id} belongs to {job.owner}: only they or an admin may change it")
    return job


def admin_only(caller: Caller) -> None:
    if not caller.admin:
        raise Forbidden(f"{caller.name} is a {caller.role}: only admins may do this")


def output_root(standing: Standing, data: Path) -> Path:
    """The user's own folder: ROOT/USER, ROOT being their policy's output root or DATA/outputs."""
    root = standing.limits.output_root
    return (Path(root) if root else data / "outputs") / standing.name


def _real(path: Path) -> Path:
    """``path`` with every symbolic link on its existing part resolved."""
    return Path(os.path.realpath(path))


def confine(path: str, root: Path, what: str, unconfined: bool = False) -> Path:
    """Where ``path`` (relative to ``root``, or absolute) points; refused if it leaves ``root``."""
    given = user_path(what, path)  # ~ expanded; NUL or ~nobody refused in one line
    target = Path(os.path.normpath(root / given)) if not given.is_absolute() else given
    if unconfined and given.is_absolute():
        return target
    if not _real(target).is_relative_to(_real(root)):
        raise Forbidden(f"{what} {path!r} is outside your folder {root}")
    return target
