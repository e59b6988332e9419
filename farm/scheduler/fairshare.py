"""Fair share: among users with runnable work, the one who used the farm least lately goes first.

Each user's usage decays: it is halved every ``half_life`` seconds (7 days by default), so last
month's marathon weighs little today. Usage is billed as CPU-seconds plus ``GPU_WEIGHT`` times
GPU-seconds, running attempts included. Slurm's classic factor orders the users:

    F(u) = 2 ** (-U(u) / S(u))

where U(u) is u's share of the decayed usage of all users with runnable work and S(u) = 1 / n is
u's share of the farm, equal for the n users with runnable work. F is 1 for a user who used nothing
and 0.5 for one who used exactly their share. The farm's one ordering (:func:`order`) sorts jobs by
F, highest first, then by the job's own key (priority, then submission). Fair share only orders
work: a farm where nobody else waits lets one user use every node, within their quota.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

DAY = 86_400.0
HALF_LIFE = 7 * DAY
GPU_WEIGHT = 10.0  # a GPU-second bills as ten CPU-seconds, about their price ratio on lab nodes


def billing(gpu_seconds: float, cpu_seconds: float) -> float:
    return cpu_seconds + GPU_WEIGHT * gpu_seconds


class FairShare:
    """Decayed usage per user, charged as attempts end."""

    def __init__(self, half_life: float = HALF_LIFE) -> None:
        if half_life <= 0:
            raise ValueError("the fair-share half-life must be positive")
        self.half_life = half_life
        self._usage: dict[str, tuple[float, float]] = {}  # user → (usage, as of when)

    def charge(self, user: str, amount: float, at: float) -> None:
        self._usage[user] = (self.usage(user, at) + amount, at)

    def usage(self, user: str, at: float) -> float:
        value, then = self._usage.get(user, (0.0, at))
        return value * math.exp2(-(at - then) / self.half_life)

    def factors(
        self, users: Iterable[str], at: float, running: dict[str, float] | None = None
    ) -> dict[str, float]:
        """F for each of ``users`` (those with runnable work), counting ``running`` usage."""
        running = running or {}
        usage = {u: self.usage(u, at) + running.get(u, 0.0) for u in users}
        total = sum(usage.values())
        if not usage or total <= 0:
            return dict.fromkeys(usage, 1.0)
        share = 1.0 / len(usage)
        return {u: math.exp2(-(value / total) / share) for u, value in usage.items()}


class Orderable(Protocol):
    owner: str

    def order_key(self) -> tuple[Any, ...]: ...


J = TypeVar("J", bound=Orderable)


def order(jobs: Iterable[J], factor: Callable[[str], float]) -> list[J]:
    """The farm's one ordering of work: fair-share factor, then the job's own key."""
    return sorted(jobs, key=lambda job: (-factor(job.owner), job.order_key()))
