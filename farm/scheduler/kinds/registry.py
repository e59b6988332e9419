"""The job kinds by name: what the loop makes of a stored job's ``kind``."""

from __future__ import annotations

from farm.errors import FarmError
from farm.scheduler.kinds.base import ActiveJob, Loop
from farm.scheduler.kinds.comp import CompJob
from farm.scheduler.kinds.probe import ProbeJob
from farm.scheduler.kinds.render import RenderJob
from farm.scheduler.kinds.train import TrainJob
from farm.store.states import TaskRef
from farm.store.tables import Job

KINDS: dict[str, type[ActiveJob]] = {k.kind: k for k in (RenderJob, CompJob, TrainJob, ProbeJob)}


def take_up(loop: Loop, row: Job, tasks: list[TaskRef]) -> ActiveJob:
    """The stored job ``row`` made active by its kind."""
    kind = KINDS.get(row.kind)
    if kind is None:
        raise FarmError(f"job {row.id} is of an unknown kind {row.kind!r}")
    return kind.take_up(loop, row, tasks)
