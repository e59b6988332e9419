"""The scheduler: one loop that admits, orders and dispatches every job's tasks onto Ray.

Each turn of the loop runs the commands that arrived (new jobs, cancel, pause, resume, retry),
walks the active jobs in the farm's one order (:meth:`ActiveJob.order_key`) and lets each place
tasks where there is room, commits every start in one transaction, then sends the tasks to Ray and
waits on all of them at once with ``ray.wait`` (no thread per task). Results are committed before
they are acted on. Both the server and the embedded ``farm render`` run this same loop; the
scheduler's thread is the only writer of states.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import itertools
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import Text, cast, func, or_, select, update
from sqlalchemy.engine import Engine

from farm.accounts.quota import Quotas
from farm.config import farm_home
from farm.errors import FarmError, NotFound
from farm.scheduler import fairshare
from farm.scheduler.fairshare import FairShare
from farm.scheduler.kinds.base import BLOCK_AFTER, ActiveJob, Event, Start
from farm.scheduler.kinds.comp import CompJob
from farm.scheduler.kinds.probe import ProbeJob
from farm.scheduler.kinds.render import RenderJob, written_frames
from farm.scheduler.kinds.train import TrainJob, metrics_json
from farm.scheduler.slots import Slot, SlotPool, SlotProfile
from farm.store import ledger, states
from farm.store.states import Ending, State, TaskRef
from farm.store.tables import Attempt, Job, Task, TaskLog, session
from farm.store.tables import Event as StoreEvent
from farm.tiling.assemble import BufferPool
from workers.blender_session import BlenderError
from workers.progress import ProgressChannel

TICK = 0.05  # longest wait on Ray before the loop looks at new commands
WAKE_SHARE = 4  # with N tasks in flight, the loop wakes once N / WAKE_SHARE are done (or at TICK)
PROGRESS_TICK = 0.5  # seconds between drains of the progress channel
REFRESH = 2.0  # seconds between reads of the cluster's resources
RETRIED = "retried"  # the message of a task queued again by hand: its earlier failures are spent
SLOT_START_FAILURES = 3  # slots of a job that fail to start in a row before its tasks fail
ORDER_EVERY = 1.0  # seconds between re-orderings by fair share (and reviews of accounts)
STOP_GRACE = 30.0  # seconds a cancelled task may take to stop before its process is killed
ACCOUNTS_EVERY = 15.0  # seconds between reads of every account from the store

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a quiet local one (embedded mode)."""
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


def one_line(error: BaseException) -> str:
    """The cause of a failed attempt, without Ray's wrapping."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        error = error.cause
    return str(error).strip() or type(error).__name__


class Capacity:
    """The cluster's resources, and what the scheduler's slots and tasks hold of them."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {}
        self.held: collections.Counter[str] = collections.Counter()
        self._read = -REFRESH

    def refresh(self, force: bool = False) -> None:
        if force or time.monotonic() - self._read >= REFRESH:
            self.total = dict(ray.cluster_resources())
            self._read = time.monotonic()

    def fits(self, need: dict[str, float]) -> bool:
        # A plain loop: the scheduler asks this of every job with work on every turn.
        total, held = self.total, self.held
        for name, amount in need.items():
            if total.get(name, 0.0) - held[name] < amount - 1e-9:
                return False
        return True

    def hold(self, need: dict[str, float]) -> None:
        self.held.update(need)

    def release(self, need: dict[str, float]) -> None:
        self.held.subtract(need)


@dataclass(slots=True)
class Flight:
    start: Start
    seq: int  # dispatch order: a slot runs its tasks in this order
    sent: float  # when (epoch seconds) it was sent to Ray


class Scheduler:
    """Runs every unfinished job of a store on the Ray cluster this process is connected to."""

    def __init__(
        self,
        engine: Engine,
        blender: str | None = None,  # None: each node's own Blender
        idle_seconds: float = 60.0,
        half_life: float = fairshare.HALF_LIFE,
        storage: Path | None = None,  # training runs' results and checkpoints, one folder a job
    ) -> None:
        self.engine = engine
        self.storage = (storage or farm_home() / "train").absolute()
        self.db = session(engine)
        self.blender = blender
        self.idle_seconds = idle_seconds
        self.jobs: dict[int, ActiveJob] = {}
        self.flights: dict[Any, Flight] = {}
        self.opening: dict[Any, Slot] = {}
        self.capacity = Capacity()
        self.writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="farm-write")
        self.buffers = BufferPool()
        self.listeners: list[Callable[[Event], None]] = []
        self.quotas = Quotas()
        self.fairshare = FairShare(half_life)
        self._order: list[ActiveJob] | None = None  # None: jobs came or went
        self._reorder = False  # usage moved on since the last ordering
        self._ranks: list[str] = []  # owners by fair share, as last ordered
        self._ordered_at = 0.0
        self._accounts_read = 0.0
        self._sent = 0.0
        self._pool: SlotPool | None = None
        self._progress: Any = None
        self._drained = 0.0
        self._swept = 0.0
        self._swept_limits = 0.0
        self._stopping: dict[Any, float] = {}  # tasks asked to stop, and when
        self._commands: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]]] = (
            queue.Queue()
        )
        self._sequence = itertools.count()
        self._died_running: dict[Slot, int] = {}
        self._start_failures: collections.Counter[int] = collections.Counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Entry points for other threads: everything else runs on the scheduler's own thread.

    def call(self, function: Callable[..., Any], *args: Any, timeout: float = 60.0) -> Any:
        """Run ``function(*args)`` on the scheduler's thread and return what it returns."""
        if self._thread is None or threading.current_thread() is self._thread:
            return function(*args)
        future: Future[Any] = Future()
        self._commands.put((function, args, future))
        return future.result(timeout)

    def notify(self, job_id: int) -> None:
        """A job was added to the store: load it on the next turn (returns at once)."""
        self._commands.put((self.load, (job_id,), Future()))

    def accounts_changed(self) -> None:
        """Users, enrolments or policies changed: read them again on the next turn."""
        self._commands.put((self._review_accounts, (True,), Future()))

    def start(self) -> None:
        """Recover what the store holds and run the loop on a thread of its own."""
        self._thread = threading.Thread(target=self._serve, name="farm-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.close()

    def _serve(self) -> None:
        self.recover()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the loop must outlive any one job's bug; the store keeps state
                log.exception("scheduler step failed")
                self.db.rollback()
                time.sleep(TICK)

    def run_until_finished(self, job_id: int) -> ActiveJob:
        """Embedded mode: run the loop on this thread until ``job_id`` leaves it."""
        job = self.load(job_id)
        if job is None:
            raise FarmError(f"no unfinished job {job_id}")
        while job.id in self.jobs:
            self.step()
        return job

    # The store → the scheduler.

    @property
    def pool(self) -> SlotPool:
        if self._pool is None:
            self._pool = SlotPool(self.blender or "", self.progress)
        return self._pool

    @property
    def progress(self) -> Any:
        if self._progress is None:  # on the scheduler's own node: it lives as long as we do
            here = NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            )
            channel = ray.remote(ProgressChannel).options(num_cpus=0, scheduling_strategy=here)
            self._progress = channel.remote()
        return self._progress

    @staticmethod
    def ref(row: Task) -> TaskRef:
        return TaskRef(row.id, row.job_id, row.key, State(row.state), row.attempts, row.payload)

    def recover(self) -> None:
        """Take up every unfinished job of the store (after a restart, or a first start), with
        every account and the usage that fair share still remembers."""
        self.quotas.refresh(self.db)
        self._accounts_read = time.monotonic()
        at = time.time()
        since = dt.datetime.fromtimestamp(at - 10 * self.fairshare.half_life, dt.UTC)
        for owner, ended, gpu, cpu in sorted(ledger.history(self.db, since), key=lambda r: r[1]):
            self.fairshare.charge(owner, fairshare.billing(gpu, cpu), ended)
        ids = self.db.scalars(
            select(Job.id).where(Job.state.not_in([s.value for s in State if s.finished]))
        )
        for job_id in list(ids):
            self.load(job_id)

    def load(self, job_id: int) -> ActiveJob | None:
        """Make a stored job active; attempts a stopped scheduler left running are lost."""
        if job_id in self.jobs:
            return self.jobs[job_id]
        row = self.db.get(Job, job_id)
        if row is None or State(row.state).finished:
            return None
        rows = self.db.execute(
            select(Task.id, Task.key, Task.state, Task.attempts, cast(Task.payload, Text))
            .where(Task.job_id == job_id)
            .order_by(Task.id)
        )
        # A store may hold a million queued tasks: they share their states, their keys (p0, f12.t3
        # recur in every job) and one decoded payload per distinct text (payloads are read-only).
        state_of = {s.value: s for s in State}
        payloads: dict[str, dict[str, Any]] = {}
        tasks: list[TaskRef] = []
        for task_id, key, state, attempts, text in rows:
            payload = payloads.get(text)
            if payload is None:
                payload = payloads[text] = json.loads(text)
            tasks.append(
                TaskRef(task_id, job_id, sys.intern(key), state_of[state], attempts, payload)
            )
        failures = self._failures_since_retry(job_id)
        if failures:
            for task in tasks:
                task.failures = failures.get(task.id, 0)
        lost = [t for t in tasks if t.state is State.RUNNING]
        states.end(
            self.db,
            [Ending(t, State.QUEUED, attempt_status="lost") for t in lost],
        )
        try:
            job = self._activate(row, tasks)
        except (FarmError, OSError) as error:
            self._fail_unstarted(row, str(error))
            return None
        except Exception as error:  # a stored job this farm cannot read must not stop the rest
            log.exception("job %s cannot be taken up", job_id)
            self._fail_unstarted(row, f"this farm cannot run the stored job: {error!r}")
            return None
        self.quotas.know(self.db, job.owner)  # a user new since the accounts were read
        self.jobs[job_id] = job
        self._order = None
        self._review(job)
        return job

    def _failures_since_retry(self, job_id: int) -> dict[int, int]:
        """Failed attempts per task since its last retry by hand: those spend its retries."""
        retried = (
            select(StoreEvent.task_id, func.max(StoreEvent.at).label("at"))
            .where(
                StoreEvent.job_id == job_id,
                StoreEvent.kind == State.QUEUED.value,
                StoreEvent.message == RETRIED,
            )
            .group_by(StoreEvent.task_id)
            .subquery()
        )
        rows = self.db.execute(
            select(Attempt.task_id, func.count())
            .join(Task, Task.id == Attempt.task_id)
            .outerjoin(retried, retried.c.task_id == Attempt.task_id)
            .where(
                Task.job_id == job_id,
                Attempt.status == "failed",
                or_(retried.c.at.is_(None), Attempt.started_at > retried.c.at),
            )
            .group_by(Attempt.task_id)
        )
        return dict(rows.all())

    def _activate(self, row: Job, tasks: list[TaskRef]) -> ActiveJob:
        if row.kind == "probe":
            return ProbeJob(row, tasks)
        if row.kind == "comp":
            return CompJob(row, tasks)
        if row.kind == "train":
            return TrainJob(row, tasks, self.storage)
        if row.kind == "render":
            job = RenderJob(row, tasks, written_frames(self.db, row.id))
            if row.plan is not None:
                job.planned(self, row.plan)
                job.recover(self)
            return job
        raise FarmError(f"job {row.id} is of an unknown kind {row.kind!r}")

    def _fail_unstarted(self, row: Job, reason: str) -> None:
        if row.state == State.RUNNING or row.state == State.QUEUED:
            states.move_job(self.db, row, State.FAILED, message=reason)
        self.emit(Event("finished", row.id, message=reason))

    def _review(self, job: ActiveJob, dependencies: bool = True) -> None:
        """Hold a job while a job it runs after is not done, or while its owner's account lets it
        run nothing (the enrolment, a spent quota), saying why; release it once neither holds.
        Without ``dependencies``, what the job waits for is as last read (that changes only when
        a job ends)."""
        if dependencies:
            job.waiting = self._waits_for(job)
        why = job.waiting or self.quotas.hold_reason(job.owner, *job.size, time.time())
        if why == job.held_for and (job.state is State.HELD) == bool(why):
            return
        job.held_for = why
        if not why:
            if job.state is State.HELD:
                states.move_job(self.db, job.row, State.QUEUED, "released")
                self._order = None
            return
        if job.state in (State.QUEUED, State.RUNNING):
            states.move_job(self.db, job.row, State.HELD, why)
        elif job.state is State.HELD:  # still held, for a new reason
            self.db.add(StoreEvent(job_id=job.id, kind=State.HELD.value, message=why))
            self.db.commit()

    def _waits_for(self, job: ActiveJob) -> str:
        """Why a job waits for the jobs it runs after ('' once they are all done)."""
        after = list(job.row.depends_on or [])
        if not after:
            return ""
        unmet = self.db.execute(
            select(Job.id, Job.state).where(Job.id.in_(after), Job.state != State.DONE)
        ).all()
        ended = [(j, state) for j, state in unmet if State(state).finished]
        # Held, as Slurm's "dependency never satisfied": it runs if that job is retried and done.
        if ended:
            return f"job {ended[0][0]} ended {ended[0][1]}: this job waits until it is retried and done"
        return f"waiting for job {unmet[0][0]}" if unmet else ""

    def _review_accounts(self, read: bool = False) -> None:
        """Hold or release jobs as their owners' accounts change (read again from the store every
        ACCOUNTS_EVERY seconds, or now when ``read``)."""
        if read or time.monotonic() - self._accounts_read > ACCOUNTS_EVERY:
            self.quotas.refresh(self.db)
            self._accounts_read = time.monotonic()
        for job in list(self.jobs.values()):
            if job.state in (State.QUEUED, State.RUNNING, State.HELD):
                self._review(job, dependencies=False)

    # One turn of the loop.

    def step(self, wait: float = TICK) -> None:
        self._run_commands()
        if time.monotonic() - self._ordered_at > ORDER_EVERY:
            self._review_accounts()
            self._reorder = True  # usage moved on: order by fair share again
        self._dispatch()
        self._drain_progress()
        self._wait(wait)
        for job in list(self.jobs.values()):
            if isinstance(job, RenderJob) and job.writes:
                job.finish_writes(self)
        self._finish_jobs()
        self._sweep_idle_slots()
        self._enforce_time_limits()

    def _run_commands(self) -> None:
        while True:
            try:
                function, args, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(function(*args))
            except Exception as error:
                self.db.rollback()
                future.set_exception(error)

    def emit(self, event: Event) -> None:
        for listener in self.listeners:
            listener(event)

    def plan_job(self, job: RenderJob, info: dict[str, Any]) -> None:
        """Plan a render job from scene info; a job the scene refuses fails before it runs."""
        try:
            job.planned(self, info)
        except FarmError as error:
            self.refuse(job, str(error))

    def refuse(self, job: ActiveJob, reason: str) -> None:
        """A job its inputs refuse at planning fails before any of its tasks runs."""
        self._end_job(job, State.FAILED, reason)

    def make_room(self, job: ActiveJob, need: dict[str, float]) -> bool:
        """Whether ``need`` fits the cluster now, once idle slots that no job ahead of ``job``
        wants are ended: a warm Blender must not keep another job's work waiting for its idle
        timeout."""
        if self.capacity.fits(need):
            return True
        idle = [s for s in self._pool.slots if s.ready and s.load == 0] if self._pool else []
        if not idle:
            return False
        wanted = self._wanted_until(job)  # a walk along the order: only when there is choice
        for slot in sorted(idle, key=lambda s: s.idle_since):
            if slot.profile not in wanted:
                self._remove_slot(slot, graceful=True)
                if self.capacity.fits(need):
                    return True
        return False

    def grow(self, job: ActiveJob, profile: SlotProfile) -> Slot | None:
        """Start another slot of ``profile`` for ``job`` if the cluster has room (see
        :meth:`make_room`)."""
        need = profile.resources
        if not self.make_room(job, need):
            return None
        slot = self.pool.create(profile, job.blocked)
        self.capacity.hold(need)
        self.opening[slot.opening] = slot
        return slot

    def _wanted_until(self, job: ActiveJob) -> set[SlotProfile]:
        """The slot profiles of render jobs with work, up to and including ``job`` in order."""
        wanted: set[SlotProfile] = set()
        for other in self._ordered():
            if isinstance(other, RenderJob) and (other.queued or other.plan is None):
                wanted.add(other.profile)
            if other is job:
                break
        return wanted

    def _remove_slot(self, slot: Slot, graceful: bool = False) -> None:
        if slot in self.pool.slots:
            self.capacity.release(slot.profile.resources)
            self.pool.remove(slot, graceful)
        if slot.opening is not None:
            self.opening.pop(slot.opening, None)

    def _ordered(self) -> list[ActiveJob]:
        """The active jobs in the farm's one order (:func:`farm.fairshare.order`): by their owners'
        fair share, then their own key. Sorted again when jobs come or go, and every ORDER_EVERY
        seconds as usage moves on: not on every turn of the loop."""
        if self._order is None or self._reorder:
            at = time.time()
            owners = {j.owner for j in self.jobs.values() if j.dispatchable and j.queued}
            running = {
                owner: fairshare.billing(flight.gpu_all.at(at), flight.cpu_all.at(at))
                for owner, flight in self.quotas.flight.items()
                if owner in owners
            }
            factors = self.fairshare.factors(owners, at, running)
            ranks = sorted(factors, key=lambda o: (-factors[o], o))
            if self._order is None or ranks != self._ranks:  # else the same order again
                self._order = fairshare.order(self.jobs.values(), lambda o: factors.get(o, 0.0))
            self._ranks, self._reorder = ranks, False
            self._ordered_at = time.monotonic()
        return self._order

    def _decide(self) -> list[Start]:
        """The turn's decisions: every job that may run, in the farm's order, places what fits.
        With a thousand jobs queued this walk is the cost of a decision: a probe job whose task's
        share does not fit would place nothing, so it is passed over before anything else of it
        is read (its state lives in its store row)."""
        starts: list[Start] = []
        quotas, now = self.quotas, time.time()
        full: set[int] = set()  # the quota keys of owners with no room this turn
        fits = self.capacity.fits  # asked of every job on the walk: no more than this
        idle = self._pool is not None and any(s.ready and not s.load for s in self._pool.slots)
        for job in self._ordered():
            if isinstance(job, ProbeJob) and not (
                job.queued and (fits(job.share) or (idle and self.make_room(job, job.share)))
            ):
                continue
            key = job.quota_key
            if key in full or not job.dispatchable:
                continue
            gpus, cpus, seconds = job.size
            room = quotas.room(job.owner, gpus, cpus, seconds, now)
            if room <= 0:
                full.add(key)
                continue
            before = len(starts)
            job.place(self, starts, room)
            for _ in range(len(starts) - before):
                quotas.started(job.owner, gpus, cpus, seconds, now)
        self._sent = now
        return starts

    def _dispatch(self) -> None:
        self.capacity.refresh()
        starts = self._decide()
        if not starts:
            return
        states.start(
            self.db,
            [(s.task, s.slot.node if s.slot else "", s.resources) for s in starts],
        )
        for job in {s.job for s in starts}:
            if job.state is State.QUEUED:
                states.move_job(self.db, job.row, State.RUNNING)
        for start in starts:
            ref = start.job.launch(self, start)
            self.flights[ref] = Flight(start, next(self._sequence), self._sent)
            start.job.in_flight += 1
            if self.listeners:  # the server has none: build no Event per task for nobody
                frames = start.task.payload.get("frames")
                event = Event(
                    "started", start.job.id, start.task.key, frames[0] if frames else None
                )
                self.emit(event)

    def _wait(self, timeout: float) -> None:
        """Wait for results. With many tasks in flight, wake for a share of them rather than for
        each one (or at ``timeout``): each turn costs a transaction and a ``ray.wait`` over every
        ref, while the rest of the flights keep Ray busy. A few in flight: wake for the first."""
        refs = [*self.flights, *self.opening]
        if not refs:
            self._idle(timeout)
            return
        batch = max(1, len(self.flights) // WAKE_SHARE)
        ready, _ = ray.wait(refs, num_returns=batch, timeout=timeout)
        if ready and len(refs) > len(ready):
            more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        for ref in [r for r in ready if r in self.opening]:
            self._opened(self.opening.pop(ref), ref)
        finished = sorted(
            (r for r in ready if r in self.flights), key=lambda r: self.flights[r].seq
        )
        if finished:
            self._completed(finished)

    def _idle(self, timeout: float) -> None:
        """Nothing in flight: sleep until a command arrives (or the timeout)."""
        try:
            function, args, future = self._commands.get(timeout=timeout)
        except queue.Empty:
            return
        self._commands.put((function, args, future))

    def _opened(self, slot: Slot, ref: Any) -> None:
        waiting = [
            j for j in self.jobs.values() if isinstance(j, RenderJob) and j.profile == slot.profile
        ]
        try:
            info = ray.get(ref)
        except (RayActorError, RayTaskError) as error:
            self._remove_slot(slot)
            if isinstance(error, RayTaskError) and isinstance(error.cause, BlenderError):
                reason = _blender_refusal(slot.profile.scene, error.cause)
                for job in waiting:
                    if job.plan is None:
                        self._end_job(job, State.FAILED, reason)
                        continue
                    self._slot_failed_to_start(job, reason)
            else:
                for job in waiting:
                    job.planning = False
            return
        self.pool.opened(slot, info)
        for job in waiting:
            self._start_failures.pop(job.id, None)
            if job.plan is None:
                self.plan_job(job, info)
            job.planning = False

    def _slot_failed_to_start(self, job: RenderJob, reason: str) -> None:
        """Slots that keep failing to start (Blender missing on a node, say) fail the job's rest."""
        self._start_failures[job.id] += 1
        if self._start_failures[job.id] < SLOT_START_FAILURES:
            return
        reason = f"no render slot could start: {reason}"
        stuck = list(job.queued)
        job.queued.clear()
        states.move(self.db, stuck, State.FAILED, reason)
        for task in stuck:
            job.failed_for_good(self, task, reason)
            self.emit(Event("failed", job.id, task.key, task.payload["frames"][0], message=reason))

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
                        then.append(_bind(self._after_unstart, job, task))
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
                then.append(_bind(job.succeeded, self, task, result))
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
                then.append(_bind(job.requeue, task))
            self.emit(Event("retry", job.id, task.key, frame, message=reason))
            return
        endings.append(Ending(task, State.FAILED, node, reason))
        then.append(_bind(job.failed_for_good, self, task, reason))
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
            if not isinstance(job, TrainJob):
                continue
            for row in rows:
                job.metric(row, job.reported)
                job.reported += 1
                text = metrics_json(row)
                self.db.add(StoreEvent(job_id=job.id, kind="metric", message=text))
                self.emit(Event("metric", job.id, message=text))
        self.db.commit()

    def _finish_jobs(self) -> None:
        for job in list(self.jobs.values()):
            if job.in_flight or job.busy:
                continue
            if job.queued and job.row.state != State.CANCELLED:  # most jobs, at little cost
                continue
            if job.state is State.CANCELLED:
                self._leave(job)
            elif (
                (job.dispatchable or job.state is State.HELD) and not job.queued and job.has_plan
            ):  # a job held while its last tasks ran ends when they have
                self._end_job(job, *job.outcome())

    def _end_job(self, job: ActiveJob, state: State, message: str) -> None:
        job.reason = message
        if job.in_flight:  # a job refused mid-way: its running tasks end first
            job.queued.clear()
            return
        if job.state is State.HELD:
            states.move_job(self.db, job.row, State.QUEUED, "nothing is left to hold")
        if job.state is State.QUEUED and state is State.DONE:
            states.move_job(self.db, job.row, State.RUNNING)
        states.move_job(self.db, job.row, state, message)
        self._leave(job)

    def _leave(self, job: ActiveJob) -> None:
        self._drain_progress(now=True)  # the job's last output lines
        job.close(self)
        self.jobs.pop(job.id, None)
        self._order = None
        self._start_failures.pop(job.id, None)
        self.emit(Event("finished", job.id, message=job.state.value))
        for other in list(self.jobs.values()):
            if other.state is State.HELD and job.id in (other.row.depends_on or []):
                self._review(other)

    # What users ask of jobs (through the API or the CLI); each runs on the scheduler's thread.

    def _job(self, job_id: int) -> ActiveJob:
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        row = self.db.get(Job, job_id)
        if row is None:
            raise NotFound(f"no job {job_id}")
        raise FarmError(f"job {job_id} is {row.state}: nothing to change")

    @staticmethod
    def _task(job: ActiveJob, key: str) -> TaskRef:
        task = job.tasks.get(key)
        if task is None:
            raise FarmError(f"job {job.id} has no task {key!r}")
        return task

    def cancel(self, job_id: int, key: str | None = None) -> str:
        """Cancel a job (or one task): queued work never starts, running work is stopped."""
        job = self._job(job_id)
        if key is None:
            if job.state is State.CANCELLED:  # its last attempts are still ending
                raise FarmError(f"job {job_id} is cancelled: nothing to change")
            states.move_job(self.db, job.row, State.CANCELLED, "cancelled")
            job.cancelling = True
            waiting = [t for t in job.tasks.values() if t.state in _WAITING]
        else:
            task = self._task(job, key)
            if task.state.finished:
                raise FarmError(f"task {key} of job {job_id} is already {task.state}")
            job.cancel_keys.add(key)
            waiting = [task] if task.state in _WAITING else []
        states.move(self.db, waiting, State.CANCELLED, "cancelled")
        _drop(job, waiting)
        self._stop_running(job, None if key is None else {key})
        return State.CANCELLED.value if key is None else f"task {key} cancelled"

    def _stop_running(self, job: ActiveJob, keys: set[str] | None) -> None:
        """Stop the job's running attempts. A slot is ended only when it is running the job's own
        task; a task merely queued behind another job's is cancelled when its turn comes."""
        for ref, flight in list(self.flights.items()):
            start = flight.start
            if start.job is not job or (keys is not None and start.task.key not in keys):
                continue
            if start.slot is None:
                self._cancel(ref)
                continue
            on_slot = [f.seq for f in self.flights.values() if f.start.slot is start.slot]
            if flight.seq == min(on_slot):
                self._remove_slot(start.slot)  # Blender dies with the slot's worker

    def pause(self, job_id: int, key: str | None = None) -> str:
        """Queued work waits until resumed; running work finishes."""
        job = self._job(job_id)
        if key is None:
            if job.state is State.PAUSED:
                raise FarmError(f"job {job_id} is already paused")
            states.move_job(self.db, job.row, State.PAUSED, "paused")
            waiting = [t for t in job.tasks.values() if t.state is State.QUEUED]
        else:
            task = self._task(job, key)
            if task.state is not State.QUEUED:
                raise FarmError(
                    f"task {key} of job {job_id} is {task.state}: only queued tasks pause"
                )
            waiting = [task]
        states.move(self.db, waiting, State.PAUSED, "paused")
        _drop(job, waiting)
        return State.PAUSED.value if key is None else f"task {key} paused"

    def resume(self, job_id: int, key: str | None = None) -> str:
        job = self._job(job_id)
        if key is None:
            if job.state is not State.PAUSED:
                raise FarmError(f"job {job_id} is {job.state}, not paused")
            states.move_job(self.db, job.row, State.QUEUED, "resumed")
            paused = [t for t in job.tasks.values() if t.state is State.PAUSED]
        else:
            task = self._task(job, key)
            if task.state is not State.PAUSED:
                raise FarmError(f"task {key} of job {job_id} is {task.state}, not paused")
            paused = [task]
        states.move(self.db, paused, State.QUEUED, "resumed")
        for task in sorted(paused, key=lambda t: t.id, reverse=True):
            job.requeue(task)
        job.held_for = ""
        self._review(job)
        return job.state.value if key is None else f"task {key} resumed"

    def retry(self, job_id: int, key: str | None = None) -> str:
        """Queue failed and cancelled tasks again (or one task, even a done one)."""
        job = self.jobs.get(job_id)
        if job is None:
            row = self.db.get(Job, job_id)
            if row is None:
                raise NotFound(f"no job {job_id}")
            tasks = self.db.scalars(select(Task).where(Task.job_id == job_id))
            refs = {t.key: self.ref(t) for t in tasks}
        else:
            row, refs = job.row, job.tasks
        if key is not None:
            chosen = [refs[key]] if key in refs else []
            if not chosen:
                raise FarmError(f"job {job_id} has no task {key!r}")
            if not chosen[0].state.finished:
                raise FarmError(
                    f"task {key} of job {job_id} is {chosen[0].state}: nothing to retry"
                )
        else:
            chosen = [t for t in refs.values() if t.state in (State.FAILED, State.CANCELLED)]
            unwritten = (
                row.kind == "render" and State(row.state).finished and row.state != State.DONE
            )
            if not chosen and not unwritten:
                raise FarmError(f"job {job_id} has no failed or cancelled tasks to retry")
        if State(row.state).finished:
            states.move_job(self.db, row, State.QUEUED, "retried")
        states.move(self.db, chosen, State.QUEUED, RETRIED)
        if job is None:
            self.load(job_id)
        else:
            job.cancel_keys.difference_update(t.key for t in chosen)
            for task in sorted(chosen, key=lambda t: t.id, reverse=True):
                job.forget(task)
                job.requeue(task)
        return f"{len(chosen)} task(s) queued again"

    def node_work(self) -> dict[str, dict[str, Any]]:
        """Per Ray node: tasks running in its slots, and the scenes its slots hold open."""
        work: dict[str, dict[str, Any]] = {}
        for slot in self.pool.slots if self._pool is not None else []:
            if slot.node:
                entry = work.setdefault(slot.node, {"running": 0, "slots": []})
                entry["running"] += min(slot.load, 1)
                entry["slots"].append(Path(slot.profile.scene).name)
        return work

    def _enforce_time_limits(self) -> None:
        """Stop training runs that ran past their ``--max-hours``: they fail saying so."""
        if self._swept_limits > time.monotonic() - 1.0:
            return
        self._swept_limits = time.monotonic()
        now = time.time()
        for ref, flight in list(self.flights.items()):
            job, task = flight.start.job, flight.start.task
            limit = job.size[2] if isinstance(job, TrainJob) else None
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

    def _sweep_idle_slots(self) -> None:
        """End slots idle for ``idle_seconds`` that no job with work wants."""
        if self._pool is None or time.monotonic() - self._swept < 1.0:
            return
        self._swept = time.monotonic()
        wanted = {j.profile for j in self.jobs.values() if isinstance(j, RenderJob)}
        for slot in list(self.pool.slots):
            idle = slot.ready and slot.load == 0
            if (
                idle
                and slot.profile not in wanted
                and self._swept - slot.idle_since > self.idle_seconds
            ):
                self._remove_slot(slot, graceful=True)

    def close(self, graceful: bool = True) -> None:
        """End every slot and the progress channel; the store keeps the jobs. Gracefully, idle
        Blenders quit and tidy up first; otherwise (Ctrl-C, an error) nothing waits."""
        if self._pool is not None:
            for slot in list(self._pool.slots):
                self.capacity.release(slot.profile.resources)
            with contextlib.suppress(Exception):
                self._pool.close_all(graceful)
        if self._progress is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._progress)
            self._progress = None
        self.writer.shutdown(wait=True)


_WAITING = (State.QUEUED, State.PAUSED, State.HELD)


def _drop(job: ActiveJob, tasks: list[TaskRef]) -> None:
    """Take tasks out of the job's queue."""
    gone = {t.id for t in tasks}
    if gone:
        job.queued = collections.deque(t for t in job.queued if t.id not in gone)


def _bind(function: Callable[..., None], *args: Any) -> Callable[[], None]:
    return lambda: function(*args)


def _blender_refusal(scene: str, error: BlenderError) -> str:
    """Blender's own reason a scene would not open, in one line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "rror" in line), lines[-1] if lines else "")
    return f"Blender could not open {scene}: {detail.strip()}"
