"""Quotas while work runs: what each user's running attempts hold and will spend, and how many more
tasks their account lets start now.

The scheduler asks :meth:`Quotas.room` for every job it walks. A concurrency cap counts the GPUs of
the user's attempts in flight. An hours quota counts what the ledger charged in the period, what
running attempts of unknown length have spent so far, and what running tasks of known length (a
probe's seconds, a training run's ``--max-hours``) will spend, booked in full with a margin
(:data:`MARGIN`) for starting and reporting them: so tasks of known length never take a user past
their quota, and tasks of unknown length stop starting once it is reached (running ones finish).
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from farm.accounts import standing as accounts
from farm.accounts.standing import Standing, booked

INF = math.inf


@dataclass(slots=True)
class Meter:
    """Resource-seconds spent so far by attempts in flight: now × rate − Σ began × amount."""

    rate: float = 0.0
    begun: float = 0.0

    def add(self, amount: float, began: float) -> None:
        self.rate += amount
        self.begun += amount * began

    def at(self, now: float) -> float:
        return max(now * self.rate - self.begun, 0.0)


@dataclass(slots=True)
class InFlight:
    """A user's attempts in flight, summed: GPUs held, what they all spent so far, what those of
    unknown length spent so far, and what those of known length are booked at."""

    gpus: float = 0.0
    gpu_all: Meter = field(default_factory=Meter)
    cpu_all: Meter = field(default_factory=Meter)
    gpu_unknown: Meter = field(default_factory=Meter)
    cpu_unknown: Meter = field(default_factory=Meter)
    gpu_booked: float = 0.0
    cpu_booked: float = 0.0

    def add(self, sign: int, gpus: float, cpus: float, seconds: float | None, began: float) -> None:
        self.gpus += sign * gpus
        self.gpu_all.add(sign * gpus, began)
        self.cpu_all.add(sign * cpus, began)
        if seconds is None:
            self.gpu_unknown.add(sign * gpus, began)
            self.cpu_unknown.add(sign * cpus, began)
        else:
            self.gpu_booked += sign * gpus * booked(seconds)
            self.cpu_booked += sign * cpus * booked(seconds)

    def spending(self, now: float) -> tuple[float, float]:
        """GPU- and CPU-seconds the attempts count for against a quota now."""
        return (
            self.gpu_unknown.at(now) + self.gpu_booked,
            self.cpu_unknown.at(now) + self.cpu_booked,
        )

    def running(self, now: float) -> tuple[float, float]:
        """GPU- and CPU-seconds the attempts of unknown length have spent so far."""
        return self.gpu_unknown.at(now), self.cpu_unknown.at(now)


class Quotas:
    """Every user's standing (read from the store now and then) and their work in flight."""

    def __init__(self) -> None:
        self.standings: dict[str, Standing] = {}
        self.flight: collections.defaultdict[str, InFlight] = collections.defaultdict(InFlight)
        self._absent: set[str] = set()  # owners with no account (the embedded farm's)

    def refresh(self, db: Session) -> None:
        """Read every user's standing again, keeping what is in flight."""
        self.standings = accounts.standings(db)
        self._absent.clear()

    def know(self, db: Session, owner: str) -> None:
        """Read ``owner``'s standing if it was not read yet (a user added since)."""
        if owner not in self.standings and owner not in self._absent:
            found = accounts.standings(db, [owner])
            self.standings.update(found)
            if not found:
                self._absent.add(owner)

    def started(
        self, owner: str, gpus: float, cpus: float, seconds: float | None, at: float
    ) -> None:
        self.flight[owner].add(1, gpus, cpus, seconds, at)

    def ended(self, owner: str, gpus: float, cpus: float, seconds: float | None, at: float) -> None:
        self.flight[owner].add(-1, gpus, cpus, seconds, at)

    def charged(self, owner: str, gpu_seconds: float, cpu_seconds: float) -> None:
        standing = self.standings.get(owner)
        if standing is not None:
            standing.gpu_seconds += gpu_seconds
            standing.cpu_seconds += cpu_seconds

    def room(
        self, owner: str, gpus: float, cpus: float, seconds: float | None, now: float
    ) -> float:
        """How many more tasks of this size the owner's account lets start now."""
        standing = self.standings.get(owner)
        if standing is None:  # no account (the embedded farm): no limits
            return INF
        limits = standing.limits
        room = INF
        flight = self.flight.get(owner) or InFlight()
        if limits.max_gpus is not None and gpus > 0:
            room = math.floor((limits.max_gpus - flight.gpus) / gpus + 1e-9)
        if limits.gpu_hours is None and limits.cpu_hours is None:
            return max(room, 0)
        gpu_spending, cpu_spending = flight.spending(now)
        gpu_left, cpu_left = standing.remaining(gpu_spending, cpu_spending)
        for amount, left in ((gpus, gpu_left), (cpus, cpu_left)):
            if amount <= 0 or left == INF:
                continue
            if left <= 0:
                return 0
            if seconds is not None:
                room = min(room, math.floor(left / (amount * booked(seconds))))
        return max(room, 0)

    def hold_reason(
        self, owner: str, gpus: float, cpus: float, seconds: float | None, now: float
    ) -> str:
        """Why the owner's queued work must be held ('' when it may run): the enrolment, or a
        quota that not even one more task fits in once their work in flight has ended."""
        standing = self.standings.get(owner)
        if standing is None:
            return ""
        reason = standing.not_allowed()
        if reason:
            return reason
        flight = self.flight.get(owner) or InFlight()
        gpu_run, cpu_run = flight.running(now)
        spent = standing.spent(gpu_run, cpu_run)
        if spent:
            return spent
        if seconds is None or flight.gpu_booked or flight.cpu_booked:
            return ""  # what is booked may come back unspent when its tasks end
        gpu_left, cpu_left = standing.remaining(gpu_run, cpu_run)
        for amount, left, what in ((gpus, gpu_left, "GPU"), (cpus, cpu_left, "CPU")):
            need = amount * booked(seconds)
            if amount > 0 and left != INF and need > left:
                return (
                    f"a task needs {need / 3600:.3g} {what}-hours but {owner} has "
                    f"{left / 3600:.3g} left in {standing.renews()}"
                )
        return ""
