"""Who may run what: roles, enrolments, the limits their policies set, and where they stand.

A user's limits take each field from the most specific policy that sets it (the user's own, then
their cohort's, then their programme's); a field no policy sets is unlimited. A quota counts the
GPU-hours (and CPU-hours) the ledger charged in the current period: a calendar week (from Monday
00:00 UTC), a calendar month, or the whole enrolment. Admins need no enrolment; everyone else runs
work only while an enrolment of theirs is active and its dates include today.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.errors import FarmError
from farm.store import ledger
from farm.store.tables import Enrolment, Job, Policy, Task, User

ROLES = ("trainee", "instructor", "admin")
PROGRAMMES = ("culturepreneurs", "work40", "staff")
STATUSES = ("active", "completed", "withdrawn")
LIMIT_FIELDS = (
    "gpu_hours",
    "cpu_hours",
    "period",
    "max_gpus",
    "max_priority",
    "labs",
    "output_root",
)


BOOK_FACTOR, BOOK_EXTRA = 1.05, 0.5


def booked(seconds: float) -> float:
    """What a task of known length is booked at: its length plus 5 % and half a second, what
    starting and reporting it may add."""
    return seconds * BOOK_FACTOR + BOOK_EXTRA


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Limits:
    """What a user may use; None: no limit."""

    gpu_hours: float | None = None
    cpu_hours: float | None = None
    period: str = "week"
    max_gpus: float | None = None
    max_priority: int | None = None
    labs: tuple[str, ...] | None = None
    output_root: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            name: (list(v) if isinstance(v, tuple) else v)
            for name in LIMIT_FIELDS
            for v in [getattr(self, name)]
        }


def merge(policies: list[Policy]) -> Limits:
    """Limits from policies ordered from the most general to the most specific."""
    values: dict[str, Any] = {}
    for policy in policies:
        for name in LIMIT_FIELDS:
            value = getattr(policy, name)
            if value is not None:
                values[name] = tuple(value) if name == "labs" else value
    return Limits(**values)


@dataclass
class Standing:
    """A user's account as the farm sees it now: role, enrolment, limits, and the quota used."""

    name: str
    role: str
    disabled: bool = False
    programme: str = ""
    cohort: str = ""
    enrolment: tuple[dt.date, dt.date, str] | None = None  # starts, ends, status
    limits: Limits = field(default_factory=Limits)
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None
    gpu_seconds: float = 0.0  # charged in the period
    cpu_seconds: float = 0.0

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    def not_allowed(self, day: dt.date | None = None) -> str:
        """Why the user may not run work now ('' when they may), quotas aside."""
        day = day or today()
        if self.disabled:
            return f"user {self.name} is disabled"
        if self.admin:
            return ""
        if self.enrolment is None:
            return f"{self.name} is not enrolled in any programme"
        starts, ends, status = self.enrolment
        where = f"{self.programme}/{self.cohort}"
        if status != "active":
            return f"the enrolment of {self.name} in {where} is {status}"
        if day < starts:
            return f"the enrolment of {self.name} in {where} starts on {starts}"
        if day > ends:
            return f"the enrolment of {self.name} in {where} ended on {ends}"
        return ""

    def remaining(self, extra_gpu: float = 0.0, extra_cpu: float = 0.0) -> tuple[float, float]:
        """GPU- and CPU-seconds left in the period after ``extra`` (inf: no quota)."""
        gpu = cpu = float("inf")
        if self.limits.gpu_hours is not None:
            gpu = self.limits.gpu_hours * 3600 - self.gpu_seconds - extra_gpu
        if self.limits.cpu_hours is not None:
            cpu = self.limits.cpu_hours * 3600 - self.cpu_seconds - extra_cpu
        return gpu, cpu

    def spent(self, running_gpu: float = 0.0, running_cpu: float = 0.0) -> str:
        """Why the quota stops new work ('' while some is left), counting running attempts."""
        gpu, cpu = self.remaining(running_gpu, running_cpu)
        if gpu <= 0:
            return (
                f"{self.name} has used the {self.limits.gpu_hours:g} GPU-hours of {self.renews()}"
            )
        if cpu <= 0:
            return (
                f"{self.name} has used the {self.limits.cpu_hours:g} CPU-hours of {self.renews()}"
            )
        return ""

    def renews(self) -> str:
        if self.period_end is None:
            return "their quota (it does not renew)"
        what = (
            "the enrolment" if self.limits.period == "enrolment" else f"this {self.limits.period}"
        )
        return f"{what} (until {self.period_end:%Y-%m-%d %H:%M} UTC)"

    def as_json(self) -> dict[str, Any]:
        gpu, cpu = self.remaining()
        enrolment = None
        if self.enrolment is not None:
            starts, ends, status = self.enrolment
            enrolment = {
                "programme": self.programme,
                "cohort": self.cohort,
                "from": starts.isoformat(),
                "until": ends.isoformat(),
                "status": status,
            }
        return {
            "user": self.name,
            "role": self.role,
            "disabled": self.disabled,
            "enrolment": enrolment,
            "limits": self.limits.as_json(),
            "period_start": _iso(self.period_start),
            "period_end": _iso(self.period_end),
            "gpu_hours_used": self.gpu_seconds / 3600,
            "cpu_hours_used": self.cpu_seconds / 3600,
            "gpu_hours_left": None if gpu == float("inf") else max(0.0, gpu / 3600),
            "cpu_hours_left": None if cpu == float("inf") else max(0.0, cpu / 3600),
            "may_run": self.not_allowed() or self.spent() or "yes",
        }


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def period_bounds(
    period: str, day: dt.date, enrolment: tuple[dt.date, dt.date, str] | None
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The current quota period: [start, end)."""
    if period == "month":
        start = day.replace(day=1)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        return _midnight(start), _midnight(end)
    if period == "enrolment":
        if enrolment is None:
            return None, None
        return _midnight(enrolment[0]), _midnight(enrolment[1] + dt.timedelta(days=1))
    start = day - dt.timedelta(days=day.weekday())
    return _midnight(start), _midnight(start + dt.timedelta(days=7))


def current_enrolment(enrolments: list[Enrolment], day: dt.date) -> Enrolment | None:
    """The enrolment that counts today: an active one covering today, else the most recent."""
    if not enrolments:
        return None
    covering = [e for e in enrolments if e.status == "active" and e.starts <= day <= e.ends]
    pool = covering or enrolments
    return max(pool, key=lambda e: (e.ends, e.starts, e.id))


def _policies_for(policies: list[Policy], user: str, programme: str, cohort: str) -> list[Policy]:
    """The policies that apply to a user, the most general first."""
    levels = [
        next((p for p in policies if (p.programme, p.cohort, p.user) == key), None)
        for key in ((programme, "", ""), (programme, cohort, ""), ("", "", user))
    ]
    return [p for p in levels if p is not None and (programme or p.user)]


def standings(
    db: Session, names: list[str] | None = None, day: dt.date | None = None
) -> dict[str, Standing]:
    """Where each user (all, or ``names``) stands today, with the quota used in their period."""
    day = day or today()
    query = select(User)
    if names is not None:
        query = query.where(User.name.in_(names))
    users = list(db.scalars(query))
    if not users:
        return {}
    enrolments: dict[int, list[Enrolment]] = {}
    for enrolment in db.scalars(
        select(Enrolment).where(Enrolment.user_id.in_([u.id for u in users]))
    ):
        enrolments.setdefault(enrolment.user_id, []).append(enrolment)
    policies = list(db.scalars(select(Policy)))
    result: dict[str, Standing] = {}
    for user in users:
        current = current_enrolment(enrolments.get(user.id, []), day)
        standing = Standing(user.name, user.role, user.disabled)
        if current is not None:
            standing.programme, standing.cohort = current.programme, current.cohort
            standing.enrolment = (current.starts, current.ends, current.status)
        standing.limits = merge(
            _policies_for(policies, user.name, standing.programme, standing.cohort)
        )
        standing.period_start, standing.period_end = period_bounds(
            standing.limits.period, day, standing.enrolment
        )
        result[user.name] = standing
    by_start: dict[dt.datetime | None, list[str]] = {}
    for standing in result.values():
        by_start.setdefault(standing.period_start, []).append(standing.name)
    for start, owners in by_start.items():  # one query a period start, not one a user
        for owner, (gpu, cpu) in ledger.used_by(db, owners, start).items():
            result[owner].gpu_seconds, result[owner].cpu_seconds = gpu, cpu
    return result


def standing_of(db: Session, name: str) -> Standing:
    found = standings(db, [name]).get(name)
    if found is None:
        raise FarmError(f"no user {name!r}")
    return found


@dataclass(frozen=True)
class Ask:
    """What a submission asks of its owner's account."""

    priority: int
    lab: str | None
    gpus: float  # per task (a render slot: 1 with a GPU device)
    task_seconds: float | None  # one task's known length, None when unknown
    tasks: int

    @property
    def gpu_seconds(self) -> float | None:
        """What the job books of a GPU-hour quota (see :func:`booked`)."""
        if self.task_seconds is None:
            return None
        return booked(self.task_seconds) * self.gpus * self.tasks


def admit(standing: Standing, ask: Ask, booked_gpu_seconds: float) -> None:
    """Refuse, in one line, a submission its owner's enrolment or quota does not allow.
    ``booked_gpu_seconds``: what the owner's unfinished jobs of known length will still spend."""
    reason = standing.not_allowed()
    if reason:
        raise FarmError(f"{reason}: no new work is accepted")
    limits = standing.limits
    if limits.max_priority is not None and ask.priority > limits.max_priority:
        raise FarmError(
            f"priority {ask.priority} is above {standing.name}'s highest, {limits.max_priority}"
        )
    if limits.labs is not None:
        allowed = ", ".join(limits.labs) or "none"
        if ask.lab is None:
            raise FarmError(
                f"{standing.name} may use the labs {allowed} only: choose one with --lab"
            )
        if ask.lab not in limits.labs:
            raise FarmError(f"{standing.name} may not use the {ask.lab} lab (allowed: {allowed})")
    if limits.max_gpus is not None and ask.gpus > limits.max_gpus:
        raise FarmError(
            f"a task asks {ask.gpus:g} GPUs, above {standing.name}'s {limits.max_gpus:g} at once"
        )
    gpu_left, cpu_left = standing.remaining()
    if cpu_left <= 0:
        raise FarmError(
            f"{standing.name} has used the {limits.cpu_hours:g} CPU-hours of "
            f"{standing.renews()}: no new work is accepted"
        )
    if not ask.gpus or gpu_left == float("inf"):
        return
    if gpu_left <= 0:
        raise FarmError(
            f"{standing.name} has used the {limits.gpu_hours:g} GPU-hours of "
            f"{standing.renews()}: no new GPU work is accepted"
        )
    wants = ask.gpu_seconds
    left = gpu_left - booked_gpu_seconds
    if wants is not None and wants > left + 1e-9:
        raise FarmError(
            f"the job needs {wants / 3600:.3g} GPU-hours but {standing.name} has "
            f"{max(left, 0) / 3600:.3g} left in {standing.renews()}"
        )


UNFINISHED = ("queued", "running", "paused", "held")


def booked_gpu_seconds(db: Session, owner: str) -> float:
    """What ``owner``'s unfinished tasks of known length will still spend of a GPU-hour quota."""
    total = db.scalar(
        select(func.sum(Job.task_gpus * (Job.task_seconds * BOOK_FACTOR + BOOK_EXTRA)))
        .join(Task, Task.job_id == Job.id)
        .where(
            Job.owner == owner,
            Job.task_seconds.is_not(None),
            Job.task_gpus > 0,
            Task.state.in_(UNFINISHED),
        )
    )
    return float(total or 0.0)
