"""The one channel through which workers report progress and output; the scheduler drains it.

Only the latest fraction of each task is kept: a display wants where a task is now, not every
sample it passed. Output lines are kept in order until drained, and stored with the attempt that
printed them. One drain call per tick costs the scheduler far less than one call per update.
"""

from __future__ import annotations


class ProgressChannel:
    """A Ray actor (no CPU reserved) holding each running task's latest progress and new output."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}
        self._lines: dict[str, list[str]] = {}

    def report(self, key: str, fraction: float) -> None:
        self._latest[key] = fraction

    def log(self, key: str, lines: list[str]) -> None:
        self._lines.setdefault(key, []).extend(lines)

    def drain(self) -> tuple[dict[str, float], dict[str, list[str]]]:
        drained = self._latest, self._lines
        self._latest, self._lines = {}, {}
        return drained
