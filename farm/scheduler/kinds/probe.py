"""A probe job in the scheduler: plain Ray tasks, no slots, a result that names the node."""

from __future__ import annotations

import functools
from typing import Any

import ray

from farm.labs import avoiding
from farm.scheduler.kinds.base import ActiveJob, Loop, Start
from farm.store.states import TaskRef
from farm.store.tables import Job
from pipelines import probe
from pipelines.probe import ProbeSpec
from workers.probe import probe as probe_task

# Tasks sent ahead per CPU's worth of capacity: short tasks need many in flight to keep Ray busy,
# long ones only one behind the running one, so a higher-priority job never waits behind a deep
# queue Ray already holds. Sized from the task's known length: about a quarter second ahead.
AHEAD_SECONDS = 0.25
MAX_AHEAD = 256

_remote = ray.remote(probe_task)

# One share dict per distinct share, held by every job that asks it: the scheduler's walk reads a
# job's share on every turn, and a thousand jobs then read one dict already in the CPU's cache.
_SHARES: dict[tuple[tuple[str, float], ...], dict[str, float]] = {}


class ProbeJob(ActiveJob):
    kind = "probe"

    def __init__(self, row: Job, tasks: list[TaskRef]) -> None:
        self.spec = ProbeSpec(**row.spec)
        super().__init__(row, tasks, self.spec.retries)
        self.resources = probe.resources(self.spec)
        self.ahead = max(2, min(MAX_AHEAD, int(AHEAD_SECONDS / max(self.spec.seconds, 1e-3))))
        share = {k: v / self.ahead for k, v in self.resources.items()}
        self.share = _SHARES.setdefault(tuple(sorted(share.items())), share)  # read-only
        self._sender: tuple[frozenset[str], Any] | None = None

    @property
    def needs(self) -> dict[str, float]:
        return self.resources

    @functools.cached_property
    def size(self) -> tuple[float, float, float | None]:
        return self.spec.gpus, self.spec.cpus, self.spec.seconds

    def place(self, loop: Loop, starts: list[Start], room: float) -> None:
        share = self.share
        while self.queued and room > 0 and loop.capacity.fits(share):
            loop.capacity.hold(share)
            starts.append(Start(self, self.queued.popleft(), None, self.resources, share))
            room -= 1

    def launch(self, loop: Loop, start: Start) -> Any:
        return self._function().remote(self.spec.seconds, start.task.attempts, self.spec.fail_first)

    def _function(self) -> Any:
        """The remote function with the job's options, made again only when the nodes blocked for
        the job change: making it costs a third of what sending a task does."""
        blocked = frozenset(self.blocked)
        if self._sender is None or self._sender[0] != blocked:
            options: dict[str, Any] = {"num_cpus": self.spec.cpus, "num_gpus": self.spec.gpus}
            if self.spec.memory:
                options["memory"] = self.spec.memory
            if blocked:
                options["label_selector"] = avoiding(blocked)
            self._sender = (blocked, _remote.options(**options))
        return self._sender[1]

    def node_of(self, result: tuple[str, float]) -> str:
        return result[0]

    def began(self, outcome: Any) -> float:
        if isinstance(outcome, tuple):
            return outcome[1]
        return getattr(getattr(outcome, "cause", None), "began", 0.0)
