"""What the scheduler does with what comes back: attempts ended in one transaction per batch,
retries and failures for good, nodes blocked for a job, the ledger's charges, progress and output
passed on, and tasks stopped at their time limit."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from farm.accounts.quota import Quotas
from farm.scheduler import fairshare
from farm.scheduler.capacity import Capacity
from farm.scheduler.fairshare import FairShare
from farm.scheduler.kinds.base import BLOCK_AFTER, ActiveJob, Event, Flight
from farm.scheduler.slots import Slot
from farm.store import ledger, states
from farm.store.states import Ending, State, TaskRef
from farm.store.tables import Attempt, Job, TaskLog

PROGRESS_TICK = 0.5  # seconds between drains of the progress channel
STOP_GRACE = 30.0  # seconds a cancelled task may take to stop before its process is killed


def one_line(error: BaseException) -> str:
    """The cause of a failed attempt, without Ray's wrapping."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    return str(error).strip() or type(error).__name__


def bind(function: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: function(*args)


class Outcomes:
    """The scheduler's part that ends attempts and acts on them (a mixin of
    :class:`farm.scheduler.loop.Scheduler`, whose state it shares)."""

    db: Session
    jobs: dict[int, ActiveJob]
    flights: dict[Any, Flight]
    capacity: Capacity
    quotas: Quotas
    fairshare: FairShare
    listeners: list[Callable[[Event], None]]
    _died_running: dict[Slot, int]
    _stopping: dict[Any, float]
    _progress: Any
    _drained: float
    _swept_limits: float

    def _completed(self, refs: list[Any]) -> None:
        """End a batch of attempts in one transaction, then act on them."""
        endings: list[Ending] = []
        unstarts: list[TaskRef] = []
        then: list[Callable[[], None]] = []
        bills: dict[int, ledger.Bill] = {}
        now = time.time()
        try:  # every result in one call; a batch with a failure in it is read ref by ref below
            results: list[Any] | None = ray.get(refs)
        except Exception:
            results = None
        for index, ref in enumerate(refs):
            flight = self.flights.pop(ref)
            start = flight.start
            job, task, slot = start.job, start.task, start.slot
            job.in_flight -= 1
            self.quotas.ended(job.owner, *job.size, flight.sent)
            if start.held is not None:
                self.capacity.release(start.held)
            began = flight.sent
            if slot is not None:
                slot.load -= 1
                slot.idle_since = time.monotonic()
                began, slot.freed = max(began, slot.freed), now  # it waited for the one before
            try:
                result = ray.get(ref) if results is None else results[index]
                began = max(began, job.began(result))
            except RayActorError as error:
                if slot is not None:
                    self._remove_slot(slot)
                    running = [f.seq for f in self.flights.values() if f.start.slot is slot]
                    first = self._died_running.setdefault(slot, min([flight.seq, *running]))
                    if flight.seq != first:  # queued behind the task the slot died running
                        unstarts.append(task)
                        then.append(bind(self._after_unstart, job, task))
                        continue
                node = slot.node if slot else ""
                self._failure(job, task, one_line(error), node, endings, then)
            except TaskCancelledError:
                if task.key in job.overtime:  # stopped by the farm at its time limit
                    node = slot.node if slot else ""
                    self._failure(job, task, job.overtime[task.key], node, endings, then)
                else:
                    endings.append(Ending(task, State.CANCELLED, attempt_status="cancelled"))
            except RayTaskError as error:
                began = max(began, job.began(error))
                node = slot.node if slot else getattr(error.cause, "node", "")
                self._failure(job, task, one_line(error), node, endings, then)
            else:
                endings.append(Ending(task, State.DONE, job.node_of(result)))
                then.append(bind(job.succeeded, self, task, result))
                if self.listeners:
                    frames = task.payload.get("frames")
                    self.emit(Event("done", job.id, task.key, frames[0] if frames else None))
            finally:
                if task not in unstarts:
                    bills[task.id] = self._charge(job, min(began, now), now)
        for slot in [
            s
            for s in self._died_running
            if not any(f.start.slot is s for f in self.flights.values())
        ]:
            del self._died_running[slot]  # every task it held is accounted for
        endings = [replace(self._unless_cancelled(e), bill=bills.get(e.task.id)) for e in endings]
        states.end(self.db, endings)
        states.unstart(self.db, unstarts)
        for action in then:
            action()

    def _charge(self, job: ActiveJob, began: float, now: float) -> ledger.Bill:
        """An attempt's bill; its usage counts for the owner's quota and fair share at once."""
        bill = job.bill(began)
        seconds = now - began
        gpu, cpu = seconds * bill.use.gpus, seconds * bill.use.cpus
        self.quotas.charged(job.owner, gpu, cpu)
        self.fairshare.charge(job.owner, fairshare.billing(gpu, cpu), now)
        return bill

    def _cancelled(self, task: TaskRef) -> bool:
        job = self.jobs.get(task.job_id)
        return job is None or job.cancelling or task.key in job.cancel_keys

    def _unless_cancelled(self, ending: Ending) -> Ending:
        """Whatever a cancelled task's attempt did, the task ends cancelled."""
        if ending.state is State.CANCELLED or not self._cancelled(ending.task):
            return ending
        return Ending(ending.task, State.CANCELLED, ending.node, ending.error, "cancelled")

    def _after_unstart(self, job: ActiveJob, task: TaskRef) -> None:
        if self._cancelled(task):
            states.move(self.db, [task], State.CANCELLED, "cancelled")
        elif job.state is State.PAUSED:
            states.move(self.db, [task], State.PAUSED, "paused")
        else:
            job.requeue(task)

    def _failure(
        self,
        job: ActiveJob,
        task: TaskRef,
        reason: str,
        node: str,
        endings: list[Ending],
        then: list[Callable[[], None]],
    ) -> None:
        """Retry the task, or give it up once its retries are spent; count the node's failures.
        A cancelled task's attempt (its slot killed by the cancel) ends it cancelled."""
        if self._cancelled(task):
            endings.append(Ending(task, State.CANCELLED, node, reason, "cancelled"))
            return
        task.failures += 1
        if node:
            job.node_failures[node] += 1
            if job.node_failures[node] >= BLOCK_AFTER and node not in job.blocked:
                self._block(job, node)
        frames = task.payload.get("frames")
        frame = frames[0] if frames else None
        if task.failures <= job.retries:
            new = State.PAUSED if job.state is State.PAUSED else State.QUEUED
            endings.append(Ending(task, new, node, reason))
            if new is State.QUEUED:
                then.append(bind(job.requeue, task))
            self.emit(Event("retry", job.id, task.key, frame, message=reason))
            return
        endings.append(Ending(task, State.FAILED, node, reason))
        then.append(bind(job.failed_for_good, self, task, reason))
        self.emit(Event("failed", job.id, task.key, frame, message=reason))

    def _block(self, job: ActiveJob, node: str) -> None:
        """No more of the job's tasks on ``node``, while another node can take them."""
        able = {
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and all(n["Resources"].get(k, 0.0) >= v for k, v in job.needs.items())
        }
        if not able - job.blocked - {node}:
            return
        job.blocked.add(node)
        self.db.execute(
            update(Job).where(Job.id == job.id).values(blocked_nodes=sorted(job.blocked))
        )
        self.db.commit()

    def _drain_progress(self, now: bool = False) -> None:
        """Pass progress on and store output with its attempt, at most every PROGRESS_TICK
        seconds (each drain is a call) unless ``now``."""
        if self._progress is None:
            return
        if not now and time.monotonic() - self._drained < PROGRESS_TICK:
            return
        self._drained = time.monotonic()
        latest, lines, metrics = ray.get(self._progress.drain.remote())
        for key, fraction in latest.items():
            job_id, _, task_key = key.split("/", 2)
            self.emit(Event("progress", int(job_id), task_key, value=fraction))
        for key, chunk in lines.items():
            job_id, number, task_key = key.split("/", 2)
            job = self.jobs.get(int(job_id))
            task = job.tasks.get(task_key) if job else None
            if task is None:
                continue
            attempt = self.db.scalar(
                select(Attempt.id).where(Attempt.task_id == task.id, Attempt.number == int(number))
            )
            if attempt is not None:
                self.db.add(TaskLog(attempt_id=attempt, text="\n".join(chunk)))
        for key, rows in metrics.items():
            job = self.jobs.get(int(key.split("/", 1)[0]))
            if job is not None:
                job.metrics(self, rows)
        self.db.commit()

    def _enforce_time_limits(self) -> None:
        """Stop attempts that ran past their job's time limit (a training run's ``--max-hours``):
        they fail saying so."""
        if self._swept_limits > time.monotonic() - 1.0:
            return
        self._swept_limits = time.monotonic()
        now = time.time()
        for ref, flight in list(self.flights.items()):
            job, task = flight.start.job, flight.start.task
            limit = job.time_limit
            if limit is None or now - flight.sent <= limit or task.key in job.overtime:
                continue
            hours = limit / 3600
            job.overtime[task.key] = f"the run went past its --max-hours {hours:g} and was stopped"
            self._cancel(ref)
        for ref, asked in list(self._stopping.items()):  # what would not stop when asked
            if ref not in self.flights:
                del self._stopping[ref]
            elif now - asked > STOP_GRACE:
                ray.cancel(ref, force=True)
                del self._stopping[ref]

    def _cancel(self, ref: Any) -> None:
        """Stop a task that runs outside a slot. A training launcher is interrupted (Ray Train
        then aborts its run gracefully: its workers stop and their placement group is freed, which
        a killed controller would leave behind when the cluster has no dashboard); a task that
        does not stop within STOP_GRACE seconds is killed with its process."""
        ray.cancel(ref)
        self._stopping[ref] = time.time()
