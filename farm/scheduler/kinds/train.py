"""A training run in the scheduler: one task that holds every worker's CPUs and GPUs while Ray
Train runs the script, its metrics passed on as they come, and TensorBoard files written."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from farm.errors import FarmError
from farm.labs import LAB_SHARE, lab_resource
from farm.scheduler.kinds.base import ActiveJob, Event, Loop, Start
from farm.store.scenes import PREFIX, ContentStore
from farm.store.states import State, TaskRef
from farm.store.tables import Event as StoreEvent
from farm.store.tables import Job
from pipelines.train import TrainSpec
from workers.run_storage import RunFiles


@functools.cache
def launcher() -> Any:
    """The launcher as a Ray task, made on first use: Ray Train and torch load only on a farm
    that trains (``pip install -e '.[train]'``)."""
    try:
        from workers.trainer import run
    except ImportError as error:  # the farm's own advice, not a bare `pip install torch` (CUDA)
        missing = f"{error.name} is not installed" if error.name else str(error).split(". ")[0]
        raise FarmError(
            f"this farm cannot train: {missing} (install the training extra: pip install -e '.[train]')"
        ) from None
    return ray.remote(run)


def run_name(job_id: int) -> str:
    """The Ray Train run of a job: the same name on every attempt, so a new attempt resumes it."""
    return f"job-{job_id}"


class TrainJob(ActiveJob):
    kind = "train"

    def __init__(
        self, row: Job, tasks: list[TaskRef], storage: Path, uploads: Path | None = None
    ) -> None:
        spec = dict(row.spec)
        self.lab: str | None = spec.pop("lab", None)
        self.spec = TrainSpec(**spec)
        # Ray Train restarts the worker group itself (max_failures); a run that fails anyway
        # failed for a reason a retry would meet again.
        super().__init__(row, tasks, retries=0)
        self.storage = storage
        self.uploads = uploads
        self.dataset = read_dataset(self.spec.data, uploads)
        self._files: Any = None  # the run's RunFiles actor, on the server's node
        self.result: dict[str, Any] | None = None
        launcher()  # a farm that cannot train fails the job now, saying why
        self._writer: Any = None
        self.failure = ""  # the telling line of the run's last failure
        self.reported = 0  # metric rows the run reported so far
        self.time_limit = self.size[2]

    @classmethod
    def take_up(cls, loop: Loop, row: Job, tasks: list[TaskRef]) -> TrainJob:
        return cls(row, tasks, loop.storage, loop.uploads)

    @property
    def needs(self) -> dict[str, float]:
        """What one worker holds: a node without it can run none of the run's workers."""
        held = {"CPU": self.spec.cpus_per_worker}
        if self.spec.gpus_per_worker:
            held["GPU"] = self.spec.gpus_per_worker
        return held

    @functools.cached_property
    def size(self) -> tuple[float, float, float | None]:
        held = self.spec.resources
        seconds = self.spec.max_hours * 3600 if self.spec.max_hours else None
        return held.get("GPU", 0.0), held["CPU"], seconds

    def place(self, loop: Loop, starts: list[Start], room: float) -> None:
        held = self.spec.resources
        if self.queued and room > 0 and loop.make_room(self, held):
            loop.capacity.hold(held)
            starts.append(Start(self, self.queued.popleft(), None, held, held))

    def launch(self, loop: Loop, start: Start) -> Any:
        options: dict[str, Any] = {"num_cpus": 0}
        placement = {lab_resource(self.lab): LAB_SHARE} if self.lab else {}
        if placement:
            options["resources"] = placement
        key = f"{self.id}/{start.task.attempts}/{start.task.key}"
        spec, files = self.spec.as_json(), self._run_files()
        return (
            launcher()
            .options(**options)
            .remote(spec, files, run_name(self.id), loop.progress, key, self.dataset, placement)
        )

    def _run_files(self) -> Any:
        """A new :class:`RunFiles` actor for the run's attempt, on this (the server's) node: its
        folder here and its dataset's files, for nodes that share no drive with this one."""
        self._end_files()
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        digests = sorted(set((self.dataset or {}).values()))
        uploads = str(self.uploads) if self.uploads else None
        self._files = (
            ray.remote(RunFiles)
            .options(num_cpus=0, scheduling_strategy=here)
            .remote(str(self.storage), run_name(self.id), digests, uploads)
        )
        return self._files

    def _end_files(self) -> None:
        if self._files is not None:
            ray.kill(self._files)
            self._files = None

    def node_of(self, result: dict[str, Any]) -> str:
        return str(result.get("node", ""))

    def succeeded(self, loop: Loop, task: TaskRef, result: Any) -> None:
        if result.get("checkpoint"):  # a path of the run's storage: here, on the server
            result = {**result, "checkpoint": str(self.storage / result["checkpoint"])}
        self.result = result

    def failed_for_good(self, loop: Loop, task: TaskRef, reason: str) -> None:
        self.failure = telling_line(reason)

    def outcome(self) -> tuple[State, str]:
        """A failed run says why in its status: the script's own error, not a task count."""
        if self.failure and any(t.state is State.FAILED for t in self.tasks.values()):
            return State.FAILED, f"the run failed: {self.failure}"
        return super().outcome()

    def metrics(self, loop: Loop, rows: list[dict[str, Any]]) -> None:
        """Store what the run reported (``farm metrics``), pass it on, and write TensorBoard."""
        for row in rows:
            self._tensorboard(row, self.reported)
            self.reported += 1
            text = json.dumps(row, sort_keys=True)
            loop.db.add(StoreEvent(job_id=self.id, kind="metric", message=text))
            loop.emit(Event("metric", self.id, message=text))

    def _tensorboard(self, row: dict[str, Any], index: int) -> None:
        """Write a reported row to the run's TensorBoard files (its numbers, by step)."""
        if self._writer is None:
            from tensorboardX import SummaryWriter  # only a farm that trains needs it

            self._writer = SummaryWriter(str(self.storage / run_name(self.id) / "tensorboard"))
        step = row.get("step", index)
        step = step if isinstance(step, int) else index
        for name, value in row.items():
            if name not in ("step", "time", "checkpoint") and isinstance(value, (int, float)):
                self._writer.add_scalar(name, value, step, walltime=row.get("time"))
        self._writer.flush()

    def close(self, loop: Loop) -> None:
        self._end_files()
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_dataset(data: str | None, uploads: Path | None) -> dict[str, str] | None:
    """An uploaded dataset's files (name → sha256); None for no dataset or a folder path (a
    shared drive every node sees)."""
    if not data or not data.startswith(PREFIX):
        return None
    if uploads is None:
        raise FarmError(f"no uploaded dataset {data} here: uploads need a farm server")
    return ContentStore(uploads).dataset(data)


def telling_line(text: str) -> str:
    """The line of a traceback a trainee needs first: the last exception's (``ValueError: …``)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION.match(line)]
    return (errors or lines or [""])[-1][:300]


_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b")
