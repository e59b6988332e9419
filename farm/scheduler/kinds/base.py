"""What the scheduler holds of a job while it is not finished, and the narrow interface between
the loop and the job kinds.

An :class:`ActiveJob` keeps a job's queued tasks in order, its retry budget and the nodes blocked
for it; each kind (one module beside this one, registered by name in :mod:`.registry`) says how its
tasks are placed and sent and what their results do, through hooks the loop calls: the loop never
asks which kind a job is. A kind asks the loop only through :class:`Loop` (the store session,
events, the cluster's capacity, room, slots, the writer pool) and never imports the loop.
"""

from __future__ import annotations

import collections
import functools
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy.orm import Session

from farm.scheduler.capacity import Capacity
from farm.scheduler.slots import Slot, SlotPool, SlotProfile
from farm.store.ledger import Bill, Use
from farm.store.states import State, TaskRef
from farm.store.tables import Job
from farm.tiling.assemble import BufferPool

_QUOTA_KEYS: dict[tuple[str, tuple[float, float, float | None]], int] = {}
_RUNNABLE = frozenset({State.QUEUED.value, State.RUNNING.value})
BLOCK_AFTER = 3  # failed tasks of one job on one node before the node is blocked for the job


@dataclass(frozen=True, slots=True)
class Start:
    """A decision of the scheduler: run ``task`` of ``job`` (on ``slot`` where it needs one)."""

    job: ActiveJob
    task: TaskRef
    slot: Slot | None
    resources: dict[str, float]  # what the attempt is recorded as using
    held: dict[str, float] | None = None  # what the scheduler's capacity holds while it runs


@dataclass(slots=True)
class Flight:
    """A start sent to Ray, until its result is back."""

    start: Start
    seq: int  # dispatch order: a slot runs its tasks in this order
    sent: float  # when (epoch seconds) it was sent to Ray


@dataclass(frozen=True)
class Event:
    """What a display or a watcher learns about a running job."""

    kind: str  # planned | started | progress | done | retry | failed | written | finished
    job: int = 0
    key: str = ""
    frame: int | None = None
    value: float = 0.0
    message: str = ""
    plan: Any = None


class Loop(Protocol):
    """What a job kind may ask of the scheduler's loop, on the loop's own thread."""

    db: Session  # the loop's store session: the only writer of states
    capacity: Capacity  # what the cluster has, and what the loop's tasks and slots hold of it
    writer: Executor  # frames are written here, so the loop never waits on a disk
    buffers: BufferPool  # frame buffers reused across assemblies
    storage: Path  # training runs' results and checkpoints, one folder a job
    uploads: Path | None  # what trainees uploaded, by sha256 (a server's data folder)

    @property
    def pool(self) -> SlotPool:
        """The warm render slots."""
        ...

    @property
    def progress(self) -> Any:
        """The progress channel (an actor) that tasks report through."""
        ...

    def emit(self, event: Event) -> None:
        """Tell the loop's listeners (a display, a watcher)."""

    def make_room(self, job: ActiveJob, need: dict[str, float]) -> bool:
        """Whether ``need`` fits now, once idle slots no job ahead of ``job`` wants are ended."""
        ...

    def grow(self, job: ActiveJob, profile: SlotProfile) -> Slot | None:
        """Start another slot of ``profile`` for ``job``, if there is room."""
        ...

    def refuse(self, job: ActiveJob, reason: str) -> None:
        """End a job its inputs refuse (at planning) as failed, before any task runs."""


class ActiveJob:
    """A job in the scheduler. Subclasses say how its tasks are placed and what their results do."""

    kind: ClassVar[str]
    # What each task of the job takes of the cluster, where that is all the loop needs to know to
    # pass over a job with no room this turn (a probe): None for kinds that place with more care.
    share: dict[str, float] | None = None
    profile: SlotProfile | None = None  # the slots a job that renders on warm slots runs on
    time_limit: float | None = None  # seconds an attempt may run before the farm stops it

    @classmethod
    def take_up(cls, loop: Loop, row: Job, tasks: list[TaskRef]) -> ActiveJob:
        """The stored job made active (on submission, or after a restart)."""
        return cls(row, tasks)  # type: ignore[call-arg]  # kinds whose __init__ needs no more

    def __init__(self, row: Job, tasks: list[TaskRef], retries: int) -> None:
        self.row = row
        self.id = row.id
        self.owner = row.owner
        self._order_key = (-row.priority, row.submitted_at, row.id)  # fixed while it is active
        self.use = Use(row.owner, row.programme or "", row.cohort or "", 0.0, 0.0)
        self.held_for = ""  # why the farm holds the job (a dependency, the owner's account)
        self.waiting = ""  # the job it waits for, if any, as last read
        self.retries = retries
        self.tasks: dict[str, TaskRef] = {t.key: t for t in tasks}
        self.queued: collections.deque[TaskRef] = collections.deque(
            t for t in sorted(tasks, key=lambda t: t.id) if t.state is State.QUEUED
        )
        self.in_flight = 0
        self.blocked: set[str] = set(row.blocked_nodes or [])
        self.node_failures: collections.Counter[str] = collections.Counter()
        self.cancelling = False  # the whole job was cancelled: its running tasks end cancelled
        self.cancel_keys: set[str] = set()  # running tasks cancelled one by one
        self.reason = ""  # why the job ended, when it did not end done
        self.overtime: dict[str, str] = {}  # tasks the farm stopped at their time limit, and why

    @property
    def state(self) -> State:
        return State(self.row.state)

    @property
    def dispatchable(self) -> bool:
        return self.row.state in _RUNNABLE  # the walk asks every job: no State made for it

    def order_key(self) -> tuple[Any, ...]:
        """The job's own place among its owner's work: higher priority first, then the earlier
        submission. :func:`farm.scheduler.fairshare.order` puts the owners' fair share before it."""
        return self._order_key

    @property
    def has_plan(self) -> bool:
        """Whether the job knows its tasks (a render or comp plans against its files first)."""
        return True

    @property
    def needs(self) -> dict[str, float]:
        """What one of the job's tasks holds while it runs: a node without it cannot run them."""
        raise NotImplementedError

    @functools.cached_property
    def size(self) -> tuple[float, float, float | None]:
        """One task's GPUs, CPUs and known length in seconds (None: not known): what quotas
        count."""
        needs = self.needs
        return needs.get("GPU", 0.0), needs.get("CPU", 0.0), None

    @functools.cached_property
    def quota_key(self) -> int:
        """Jobs with the same key (owner and task size) get the same room from the owner's
        account: a small int, hashed in no time on the scheduler's walk."""
        return _QUOTA_KEYS.setdefault((self.owner, self.size), len(_QUOTA_KEYS))

    def bill(self, began: float) -> Bill:
        """What the ledger charges one of the job's attempts that began at ``began``."""
        gpus, cpus, _ = self.size
        return Bill(Use(self.use.owner, self.use.programme, self.use.cohort, gpus, cpus), began)

    def began(self, outcome: Any) -> float:
        """When (epoch seconds) the attempt behind a result or a failure began on its node, where
        the task says; 0: it does not."""
        return 0.0

    def add_tasks(self, tasks: list[TaskRef]) -> None:
        self.tasks.update((t.key, t) for t in tasks)
        self.queued.extend(t for t in tasks if t.state is State.QUEUED)

    def requeue(self, task: TaskRef) -> None:
        """A task back in the queue goes first: a retry should not wait behind the whole job."""
        self.queued.appendleft(task)

    def forget(self, task: TaskRef) -> None:
        """A task queued again by hand: what its earlier failures left behind no longer counts."""
        task.failures = 0

    def place(self, loop: Loop, starts: list[Start], room: float) -> None:
        """Add starts for at most ``room`` tasks (what the owner's account allows now)."""
        raise NotImplementedError

    def launch(self, loop: Loop, start: Start) -> Any:
        """Send the task to Ray; returns the ObjectRef of its result."""
        raise NotImplementedError

    def node_of(self, result: Any) -> str:
        """The Ray node a successful result came from."""
        return getattr(result, "node", "")

    def succeeded(self, loop: Loop, task: TaskRef, result: Any) -> None:
        """Act on a finished task's result (its DONE is already in the store)."""

    def failed_for_good(self, loop: Loop, task: TaskRef, reason: str) -> None:
        """A task whose retries are spent (its FAILED is already in the store)."""

    @property
    def busy(self) -> bool:
        """Work of the job that is neither queued nor running (frames being written): the loop
        calls :meth:`settle` on every turn while there is some."""
        return False

    def settle(self, loop: Loop) -> None:
        """Record the busy work that has finished (frames on disk)."""

    @property
    def wants_slots(self) -> bool:
        """Whether the job has work for slots of its :attr:`profile` (idle ones stay open)."""
        return self.profile is not None and (bool(self.queued) or not self.has_plan)

    def slot_opened(self, loop: Loop, info: dict[str, Any]) -> None:
        """A slot of the job's :attr:`profile` opened its scene; ``info`` is what it reported."""

    def slot_failed(self, loop: Loop, blender_refused: str | None) -> None:
        """A slot of the job's :attr:`profile` could not start: Blender refused the scene (its
        reason), or Ray lost the slot (None)."""

    def metrics(self, loop: Loop, rows: list[dict[str, Any]]) -> None:
        """Rows the job's task reported through the progress channel (training runs)."""

    def outcome(self) -> tuple[State, str]:
        """The job's end once nothing is queued, running or busy."""
        failed = sum(1 for t in self.tasks.values() if t.state is State.FAILED)
        if failed:
            return State.FAILED, f"{failed} of {len(self.tasks)} tasks failed"
        return State.DONE, ""

    def close(self, loop: Loop) -> None:
        """The job left the scheduler: free what it held."""
