"""What the scheduler holds of a job while it is not finished: its queued tasks in order, its
retry budget, the nodes blocked for it, and the kind-specific steps (:mod:`farm.render_job`,
:mod:`farm.probe_job`)."""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from farm.store.ledger import Bill, Use
from farm.store.states import State, TaskRef
from farm.store.tables import Job

if TYPE_CHECKING:
    from farm.scheduler.loop import Scheduler
    from farm.scheduler.slots import Slot

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


class ActiveJob:
    """A job in the scheduler. Subclasses say how its tasks are placed and what their results do."""

    kind: ClassVar[str]

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
        self.reported = 0  # metric rows a training run reported so far
        self.overtime: dict[str, str] = {}  # tasks the farm stopped at their time limit, and why

    @property
    def state(self) -> State:
        return State(self.row.state)

    @property
    def dispatchable(self) -> bool:
        return self.row.state in _RUNNABLE  # the walk asks every job: no State made for it

    def order_key(self) -> tuple[Any, ...]:
        """The job's own place among its owner's work: higher priority first, then the earlier
        submission. :func:`farm.fairshare.order` puts the owners' fair share before it."""
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

    def place(self, scheduler: Scheduler, starts: list[Start], room: float) -> None:
        """Add starts for at most ``room`` tasks (what the owner's account allows now)."""
        raise NotImplementedError

    def launch(self, scheduler: Scheduler, start: Start) -> Any:
        """Send the task to Ray; returns the ObjectRef of its result."""
        raise NotImplementedError

    def node_of(self, result: Any) -> str:
        """The Ray node a successful result came from."""
        return getattr(result, "node", "")

    def succeeded(self, scheduler: Scheduler, task: TaskRef, result: Any) -> None:
        """Act on a finished task's result (its DONE is already in the store)."""

    def failed_for_good(self, scheduler: Scheduler, task: TaskRef, reason: str) -> None:
        """A task whose retries are spent (its FAILED is already in the store)."""

    @property
    def busy(self) -> bool:
        """Work of the job that is neither queued nor running (frames being written)."""
        return False

    def outcome(self) -> tuple[State, str]:
        """The job's end once nothing is queued, running or busy."""
        failed = sum(1 for t in self.tasks.values() if t.state is State.FAILED)
        if failed:
            return State.FAILED, f"{failed} of {len(self.tasks)} tasks failed"
        return State.DONE, ""

    def close(self, scheduler: Scheduler) -> None:
        """The job left the scheduler: free what it held."""
