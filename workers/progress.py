"""The one channel through which workers report progress and output; the scheduler drains it.

Only the latest fraction of each task is kept: a display wants where a task is now, not every
sample it passed. Output lines and a training run's metrics are kept in order until drained, and stored with the attempt that
printed them. One drain call per tick costs the scheduler far less than one call per update.
"""

from __future__ import annotations


class ProgressChannel:
    """A Ray actor (no CPU reserved) holding each running task's latest progress and new output."""

    def __init__(self) -> None:
        self._latest: dict[str, float] = {}
        self._lines: dict[str, list[str]] = {}
        self._metrics: dict[str, list[dict]] = {}

    def report(self, key: str, fraction: float) -> None:
        self._latest[key] = fraction

    def log(self, key: str, lines: list[str]) -> None:
        self._lines.setdefault(key, []).extend(lines)

    def metric(self, key: str, row: dict) -> None:
        """A row of metrics a training run reported (every one is kept, in order)."""
        self._metrics.setdefault(key, []).append(row)

    def drain(self) -> tuple[dict[str, float], dict[str, list[str]], dict[str, list[dict]]]:
        drained = self._latest, self._lines, self._metrics
        self._latest, self._lines, self._metrics = {}, {}, {}
        return drained
