"""What the cluster has, and what the scheduler's slots and tasks hold of it.

Ray's own view of free resources lags behind the scheduler's decisions, so the loop counts what it
holds itself and reads the cluster's totals only every REFRESH seconds.
"""

from __future__ import annotations

import collections
import time

import ray

REFRESH = 2.0  # seconds between reads of the cluster's resources


class Capacity:
    """The cluster's resources, and what the scheduler's slots and tasks hold of them."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.held: collections.Counter[str] = collections.Counter()
        self._read = -REFRESH

    def refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._read >= REFRESH:
            self.total = dict(ray.cluster_resources())
            self._read = time.monotonic()

    def fits(self, need: dict[str, float]) -> bool:
        # A plain loop: the scheduler asks this of every job with work on every turn.
        total, held = self.total, self.held
        for name, amount in need.items():
            if total.get(name, 0.0) - held[name] < amount - 1e-9:
                return False
        return True

    def hold(self, need: dict[str, float]) -> None:
        self.held.update(need)

    def release(self, need: dict[str, float]) -> None:
        self.held.subtract(need)
