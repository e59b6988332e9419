"""The one state machine for jobs and tasks. Nothing else changes a state.

Jobs and tasks share the same states. A task is *queued* until a slot takes it, *running* while an
attempt is under way, and ends *done*, *failed* (its retries spent) or *cancelled*. *paused* and
*held* keep queued work from starting: paused by the user, held by the farm (a dependency, a quota).
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field


class State(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    HELD = "held"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (State.DONE, State.FAILED, State.CANCELLED)


ALLOWED: dict[State, frozenset[State]] = {
    State.QUEUED: frozenset({State.RUNNING, State.PAUSED, State.HELD, State.CANCELLED}),
    # running → queued is a retry: the attempt failed and the task waits for another slot.
    State.RUNNING: frozenset(
        {State.QUEUED, State.DONE, State.FAILED, State.CANCELLED, State.PAUSED, State.HELD}
    ),
    State.PAUSED: frozenset({State.QUEUED, State.CANCELLED}),
    State.HELD: frozenset({State.QUEUED, State.CANCELLED}),
    State.DONE: frozenset({State.QUEUED}),  # requeue
    State.FAILED: frozenset({State.QUEUED}),  # retry by hand
    State.CANCELLED: frozenset({State.QUEUED}),
}


class IllegalTransition(ValueError):
    """A state change the machine does not allow: a bug, never bad user input."""


@dataclass
class TaskRecord:
    """A task's state and its attempts so far."""

    key: str
    state: State = State.QUEUED
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    started: float | None = None
    ended: float | None = None

    def move(self, new: State) -> None:
        """Change state, or raise :class:`IllegalTransition`; counts attempts on each start."""
        if new not in ALLOWED[self.state]:
            raise IllegalTransition(f"task {self.key}: {self.state} → {new} is not allowed")
        now = time.time()
        if new is State.RUNNING:
            self.attempts += 1
            self.started = now
            self.ended = None
        elif new.finished:
            self.ended = now
        self.state = new

    def unstart(self) -> None:
        """Back to queued, the attempt not counted: it was queued on a slot that died before
        the task began, so it never ran."""
        if self.state is not State.RUNNING:
            raise IllegalTransition(f"task {self.key}: {self.state} has no attempt to take back")
        self.state = State.QUEUED
        self.attempts -= 1
        self.started = None
