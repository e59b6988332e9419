"""The admin part of the API (``/api/v1/admin/…``): users, tokens, enrolments, policies, usage.

Every call needs an admin's token. Changes reach the scheduler at once: a user disabled, an
enrolment ended or a quota lowered holds their queued work on its next turn; a quota raised
releases it.
"""

import csv
import datetime as dt
import io
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi import Path as Path_
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.accounts import auth
from farm.accounts import standing as accounts
from farm.accounts.access import Caller, admin_only
from farm.accounts.standing import PROGRAMMES, ROLES, STATUSES
from farm.api.deps import Db, Me, Sched
from farm.api.models import refusals
from farm.errors import FarmError
from farm.labs import LAB
from farm.scheduler.loop import Scheduler
from farm.store import ledger
from farm.store.tables import Enrolment, Policy, Token, User, now

Name = Annotated[str, Field(max_length=64)]
COHORT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewUser(Strict):
    name: Name
    role: Literal["trainee", "instructor", "admin"] = "trainee"


class NewToken(Strict):
    user: Name
    days: float | None = Field(90.0, gt=0, le=3650, description="Life in days; null: no expiry.")


class NewEnrolment(Strict):
    user: Name
    programme: Literal["culturepreneurs", "work40", "staff"]
    cohort: Name
    starts: dt.date = Field(alias="from")
    ends: dt.date = Field(alias="until")
    status: Literal["active", "completed", "withdrawn"] = "active"

    model_config = ConfigDict(extra="forbid", strict=False, populate_by_name=True)


class Roster(Strict):
    csv: Annotated[str, Field(max_length=4_000_000)]


class PolicyChange(Strict):
    """Set fields of the policy of a programme, a cohort of it, or a user; ``clear`` unsets."""

    programme: Annotated[str, Field(max_length=32)] = ""
    cohort: Annotated[str, Field(max_length=64)] = ""
    user: Name = ""
    gpu_hours: float | None = Field(None, ge=0, le=1e7)
    cpu_hours: float | None = Field(None, ge=0, le=1e9)
    period: Literal["week", "month", "enrolment"] | None = None
    max_gpus: float | None = Field(None, ge=0, le=4096)
    max_priority: int | None = Field(None, ge=0, le=100)
    labs: list[Annotated[str, Field(max_length=32)]] | None = Field(None, max_length=32)
    output_root: Annotated[str, Field(max_length=4096)] | None = None
    clear: list[Literal[*accounts.LIMIT_FIELDS]] = Field(default_factory=list)  # type: ignore[valid-type]


def _user_json(user: User, enrolment: Enrolment | None) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "programme": enrolment.programme if enrolment else None,
        "cohort": enrolment.cohort if enrolment else None,
        "from": enrolment.starts.isoformat() if enrolment else None,
        "until": enrolment.ends.isoformat() if enrolment else None,
        "status": enrolment.status if enrolment else None,
    }


def _token_json(token: Token, user: str) -> dict[str, Any]:
    def iso(moment: dt.datetime | None) -> str | None:
        return moment.isoformat(timespec="seconds") if moment else None

    return {
        "id": token.id,
        "user": user,
        "hint": token.hint + "…",
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "revoked_at": iso(token.revoked_at),
    }


def enrol(db: Session, entry: NewEnrolment, role: str | None = None) -> str:
    """Add or update one enrolment (creating the user when ``role`` is given); returns what
    happened: added, updated or unchanged. The caller commits."""
    if not COHORT.match(entry.cohort):
        raise FarmError(f"cohort {entry.cohort!r}: letters, digits, '.', '_' or '-' only")
    if entry.ends < entry.starts:
        raise FarmError(f"the enrolment ends ({entry.ends}) before it starts ({entry.starts})")
    user = db.scalar(select(User).where(User.name == entry.user))
    if user is None:
        if role is None:
            raise FarmError(f"no user {entry.user!r}: add them first (farm admin user add)")
        user = auth.add_user(db, entry.user, role)
    found = db.scalar(
        select(Enrolment).where(
            Enrolment.user_id == user.id,
            Enrolment.programme == entry.programme,
            Enrolment.cohort == entry.cohort,
        )
    )
    values = {"starts": entry.starts, "ends": entry.ends, "status": entry.status}
    if found is None:
        db.add(Enrolment(user_id=user.id, programme=entry.programme, cohort=entry.cohort, **values))
        db.flush()
        return "added"
    if all(getattr(found, k) == v for k, v in values.items()):
        return "unchanged"
    for key, value in values.items():
        setattr(found, key, value)
    db.flush()
    return "updated"


def import_roster(db: Session, text: str) -> dict[str, int]:
    """Enrol every row of a roster CSV (columns user, programme, cohort, from, until, and
    optionally status and role), all or nothing: the first bad row is refused with its line."""
    try:
        return _import_rows(db, csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        db.rollback()
        raise FarmError(f"the roster is not CSV: {error}") from None


def _import_rows(db: Session, reader: "csv.DictReader[str]") -> dict[str, int]:
    needed = {"user", "programme", "cohort", "from", "until"}
    columns = set(reader.fieldnames or [])
    if not needed <= columns:
        missing = ", ".join(sorted(needed - columns))
        raise FarmError(f"line 1: the roster needs the columns {missing}")
    unknown = columns - needed - {"status", "role"}
    if unknown:
        raise FarmError(f"line 1: unknown column {sorted(unknown)[0]!r}")
    counts = {"added": 0, "updated": 0, "unchanged": 0, "users_added": 0}
    seen: dict[tuple[str, str, str], int] = {}
    for row in reader:
        line = reader.line_num
        try:
            if None in row or any(v is None for v in row.values()):
                raise FarmError("the row has a different number of fields than the header")
            cells = {k: v.strip() for k, v in row.items()}
            role = cells.get("role") or "trainee"
            if role not in ROLES:
                raise FarmError(f"role {role!r} is not one of {', '.join(ROLES)}")
            if cells["programme"] not in PROGRAMMES:
                raise FarmError(
                    f"programme {cells['programme']!r} is not one of {', '.join(PROGRAMMES)}"
                )
            status = cells.get("status") or "active"
            if status not in STATUSES:
                raise FarmError(f"status {status!r} is not one of {', '.join(STATUSES)}")
            dates = []
            for column in ("from", "until"):
                try:
                    dates.append(dt.date.fromisoformat(cells[column]))
                except ValueError:
                    raise FarmError(
                        f"{column} {cells[column]!r} is not a date like 2026-09-01"
                    ) from None
            key = (cells["user"], cells["programme"], cells["cohort"])
            if key in seen:
                raise FarmError(f"{'/'.join(key)} is already on line {seen[key]}")
            seen[key] = line
            auth.check_name(cells["user"])
            existed = db.scalar(select(User.id).where(User.name == cells["user"])) is not None
            entry = NewEnrolment(
                user=cells["user"],
                programme=cells["programme"],
                cohort=cells["cohort"],
                starts=dates[0],
                ends=dates[1],
                status=status,
            )
            counts[enrol(db, entry, role)] += 1
            counts["users_added"] += not existed
        except FarmError as error:
            db.rollback()
            raise FarmError(f"line {line}: {error}") from None
    return counts


def change_policy(db: Session, change: PolicyChange) -> Policy:
    """Apply ``change`` to its policy (created when new); the caller commits."""
    if change.user and (change.programme or change.cohort):
        raise FarmError("a policy is for a programme, a cohort, or a user: not a mix")
    if not change.user and not change.programme:
        raise FarmError("name the programme (and cohort) or the user the policy is for")
    if change.programme and change.programme not in PROGRAMMES:
        raise FarmError(f"programme {change.programme!r} is not one of {', '.join(PROGRAMMES)}")
    if change.user:
        auth.user_named(db, change.user)
    for lab in change.labs or []:
        if not LAB.match(lab):
            raise FarmError(f"lab {lab!r}: lower-case letters, digits and '_' only")
    if change.output_root is not None and not change.output_root.startswith("/"):
        raise FarmError(f"output root {change.output_root!r} must be an absolute path")
    key = {"programme": change.programme, "cohort": change.cohort, "user": change.user}
    policy = db.scalar(select(Policy).filter_by(**key))
    if policy is None:
        policy = Policy(**key)
        db.add(policy)
    for name in accounts.LIMIT_FIELDS:
        value = getattr(change, name)
        if value is not None:
            setattr(policy, name, value)
    for name in change.clear:
        setattr(policy, name, None)
    db.flush()
    return policy


def _policy_json(policy: Policy) -> dict[str, Any]:
    fields = {name: getattr(policy, name) for name in accounts.LIMIT_FIELDS}
    return {"programme": policy.programme, "cohort": policy.cohort, "user": policy.user, **fields}


def _since(day: dt.date | None) -> dt.datetime | None:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) if day else None


def admin(me: Me) -> Caller:
    """The caller, if an admin (403 if not)."""
    admin_only(me)
    return me


Admin = Annotated[Caller, Depends(admin)]

router = APIRouter(prefix="/admin", responses=refusals(400, 403, 422))


def committed(db: Session, scheduler: Scheduler) -> None:
    """Commit a change of accounts and have the scheduler read them again on its next turn."""
    db.commit()
    scheduler.accounts_changed()


@router.get("/users")
def users(db: Db, _: Admin) -> list[dict[str, Any]]:
    day = accounts.today()
    rows = []
    for user in db.scalars(select(User).order_by(User.name)):
        enrolments = list(db.scalars(select(Enrolment).where(Enrolment.user_id == user.id)))
        rows.append(_user_json(user, accounts.current_enrolment(enrolments, day)))
    return rows


@router.post("/users", status_code=201)
def add_user(body: NewUser, db: Db, _: Admin, scheduler: Sched) -> dict[str, Any]:
    user = auth.add_user(db, body.name, body.role)
    committed(db, scheduler)
    return _user_json(user, None)


@router.post("/users/{name}/{action}")
def set_user(
    name: Annotated[str, Path_(max_length=64)],
    action: Literal["disable", "enable"],
    db: Db,
    me: Admin,
    scheduler: Sched,
) -> dict[str, Any]:
    user = auth.user_named(db, name)
    if action == "disable" and user.name == me.name:
        raise FarmError("an admin cannot disable themself")
    user.disabled = action == "disable"
    committed(db, scheduler)
    return _user_json(user, None)


@router.post("/tokens", status_code=201)
def new_token(body: NewToken, db: Db, _: Admin) -> dict[str, Any]:
    user = auth.user_named(db, body.user)
    row, token = auth.issue(db, user, body.days)
    db.commit()
    return {**_token_json(row, user.name), "token": token}


@router.get("/tokens")
def tokens(db: Db, _: Admin) -> list[dict[str, Any]]:
    """Every token, without its secret."""
    query = select(Token, User.name).join(User, User.id == Token.user_id).order_by(Token.id)
    return [_token_json(token, name) for token, name in db.execute(query)]


@router.post("/tokens/{token_id}/revoke")
def revoke(token_id: Annotated[int, Path_(ge=1, le=2**62)], db: Db, _: Admin) -> dict[str, Any]:
    found = db.execute(
        select(Token, User.name).join(User, User.id == Token.user_id).where(Token.id == token_id)
    ).first()
    if found is None:
        raise FarmError(f"no token {token_id}")
    token, name = found
    if token.revoked_at is None:
        token.revoked_at = now()
        db.commit()
    return _token_json(token, name)


@router.post("/enrolments")
def add_enrolment(body: NewEnrolment, db: Db, _: Admin, scheduler: Sched) -> dict[str, Any]:
    result = enrol(db, body)
    committed(db, scheduler)
    return {"user": body.user, "result": result}


@router.post("/enrolments/import")
def import_enrolments(body: Roster, db: Db, _: Admin, scheduler: Sched) -> dict[str, int]:
    counts = import_roster(db, body.csv)
    committed(db, scheduler)
    return counts


@router.get("/policies")
def policies(db: Db, _: Admin) -> list[dict[str, Any]]:
    rows = db.scalars(select(Policy).order_by(Policy.programme, Policy.cohort, Policy.user))
    return [_policy_json(p) for p in rows]


@router.put("/policies")
def set_policy(body: PolicyChange, db: Db, _: Admin, scheduler: Sched) -> dict[str, Any]:
    policy = change_policy(db, body)
    committed(db, scheduler)
    return _policy_json(policy)


@router.get("/usage")
def usage(
    db: Db,
    _: Admin,
    by: Literal["user", "programme", "cohort"] = "user",
    since: dt.date | None = None,
    until: dt.date | None = None,
) -> list[dict[str, Any]]:
    return ledger.usage(db, by, _since(since), _since(until))


@router.get("/usage/daily")
def daily(db: Db, _: Admin, since: dt.date) -> list[dict[str, Any]]:
    return ledger.daily(db, _since(since) or dt.datetime.min)


@router.get("/standing/{name}")
def standing(name: Annotated[str, Path_(max_length=64)], db: Db, _: Admin) -> dict[str, Any]:
    return accounts.standing_of(db, name).as_json()
