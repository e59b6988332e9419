"""The one channel through which render slots report progress; the driver drains it.

Only the latest fraction of each task is kept: a display wants where a task is now, not every
sample it passed, and one drain call per tick costs the driver far less than one call per update.
"""

from __future__ import annotations


class ProgressChannel:
    """A Ray actor (no CPU reserved) holding each running task's latest progress."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}

    def report(self, key: str, fraction: float) -> None:
        self._latest[key] = fraction

    def drain(self) -> dict[str, float]:
        latest, self._latest = self._latest, {}
        return latest
