"""API tokens: random, shown once, kept only as their SHA-256, revocable, with an expiry.

A token is 32 random bytes (``farm_`` + URL-safe base64). Being random, it needs no slow password
hash: SHA-256 of it is as hard to invert as guessing it, and lets a request be checked with one
indexed lookup. Every request looks the token up again, so a revoked token or a disabled user
stops working at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.accounts.standing import ROLES
from farm.errors import FarmError, Unauthorized
from farm.store.tables import Token, User, now

PREFIX = "farm_"
NAME = re.compile(r"^[a-z][a-z0-9._-]{0,63}$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise FarmError(
            f"user name {name!r} is not allowed: lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter, at most 64 characters"
        )
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise FarmError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def add_user(db: Session, name: str, role: str) -> User:
    check_name(name)
    check_role(role)
    if db.scalar(select(User).where(User.name == name)) is not None:
        raise FarmError(f"user {name} already exists")
    user = User(name=name, role=role, disabled=False)
    db.add(user)
    db.flush()
    return user


def user_named(db: Session, name: str) -> User:
    user = db.scalar(select(User).where(User.name == name))
    if user is None:
        raise FarmError(f"no user {name!r}")
    return user


def issue(db: Session, user: User, days: float | None) -> tuple[Token, str]:
    """A new token for ``user`` valid for ``days`` (None: until revoked); the caller commits."""
    if user.disabled:
        raise FarmError(f"user {user.name} is disabled: enable them before giving them a token")
    if days is not None and not 0 < days <= 3650:
        raise FarmError(f"a token's life must be between 0 and 3650 days, got {days:g}")
    token = PREFIX + secrets.token_urlsafe(32)
    expires = now() + dt.timedelta(days=days) if days is not None else None
    row = Token(user_id=user.id, digest=digest(token), hint=token[:10], expires_at=expires)
    db.add(row)
    db.flush()
    return row, token


def authenticate(db: Session, token: str | None) -> User:
    """The user a request's token belongs to, or :class:`Unauthorized` saying why not."""
    if not token:
        raise Unauthorized(
            "this farm server needs a token: set FARM_TOKEN or run farm login URL --token TOKEN"
        )
    found = db.execute(
        select(Token, User)
        .join(User, User.id == Token.user_id)
        .where(Token.digest == digest(token))
    ).first()
    if found is None:
        raise Unauthorized("the token is not known to this farm server")
    row, user = found
    if row.revoked_at is not None:
        raise Unauthorized(f"the token {row.hint}… was revoked")
    expires = row.expires_at
    if (
        expires is not None
        and (expires if expires.tzinfo else expires.replace(tzinfo=dt.UTC)) < now()
    ):
        raise Unauthorized(f"the token {row.hint}… expired on {expires:%Y-%m-%d}")
    if user.disabled:
        raise Unauthorized(f"user {user.name} is disabled")
    return user
