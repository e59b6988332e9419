"""The scheduler: one loop that admits, orders and dispatches every job's tasks onto Ray.

Each turn of the loop runs the commands that arrived (new jobs, cancel, pause, resume, retry),
walks the active jobs in the farm's one order (:meth:`ActiveJob.order_key`) and lets each place
tasks where there is room, commits every start in one transaction, then sends the tasks to Ray and
waits on all of them at once with ``ray.wait`` (no thread per task). Results are committed before
they are acted on. Both the server and the embedded ``farm render`` run this same loop; the
scheduler's thread is the only writer of states.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy.engine import Engine

from farm.accounts.quota import Quotas
from farm.config import farm_home
from farm.errors import FarmError
from farm.scheduler import fairshare
from farm.scheduler.admission import Admission
from farm.scheduler.capacity import Capacity
from farm.scheduler.commands import Commands
from farm.scheduler.fairshare import FairShare
from farm.scheduler.kinds.base import ActiveJob, Event, Flight, Start
from farm.scheduler.outcomes import Outcomes
from farm.scheduler.slots import Slot, SlotPool, SlotProfile
from farm.store import states
from farm.store.states import State
from farm.store.tables import session
from farm.tiling.assemble import BufferPool
from workers.blender_session import BlenderError
from workers.progress import ProgressChannel

TICK = 0.05  # longest wait on Ray before the loop looks at new commands
WAKE_SHARE = 4  # with N tasks in flight, the loop wakes once N / WAKE_SHARE are done (or at TICK)
ORDER_EVERY = 1.0  # seconds between re-orderings by fair share (and reviews of accounts)

log = logging.getLogger(__name__)


class Scheduler(Admission, Outcomes, Commands):
    """Runs every unfinished job of a store on the Ray cluster this process is connected to.

    Its parts live beside this module: :mod:`.admission` (taking jobs up, holds),
    :mod:`.outcomes` (what comes back), :mod:`.commands` (what users ask); the job kinds behind
    the :class:`~farm.scheduler.kinds.base.Loop` interface that this class gives them."""

    def __init__(
        self,
        engine: Engine,
        blender: str | None = None,  # None: each node's own Blender
        idle_seconds: float = 60.0,
        half_life: float = fairshare.HALF_LIFE,
        storage: Path | None = None,  # training runs' results and checkpoints, one folder a job
        uploads: Path | None = None,  # the files uploaded scenes use (a server's data folder)
    ) -> None:
        self.engine = engine
        self.storage = (storage or farm_home() / "train").absolute()
        self.uploads = uploads
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
        self.unstartable: dict[int, str] = {}
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

    def run_until_finished(
        self, job_id: int, interrupted: Callable[[], bool] = lambda: False
    ) -> ActiveJob:
        """Embedded mode: run the loop on this thread until ``job_id`` leaves it, or raise
        KeyboardInterrupt between two turns once ``interrupted()``."""
        job = self.load(job_id)
        if job is None:  # the reason it could not be taken up, not merely that it was not
            raise FarmError(self.unstartable.get(job_id) or f"no unfinished job {job_id}")
        while job.id in self.jobs:
            if interrupted():
                raise KeyboardInterrupt
            self.step()
        return job

    # The store → the scheduler.

    @property
    def pool(self) -> SlotPool:
        if self._pool is None:
            self._pool = SlotPool(self.blender or "", self.progress, self.uploads)
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
            if job.busy:
                job.settle(self)
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
        """The slot profiles of jobs with work for slots, up to and including ``job`` in order."""
        wanted: set[SlotProfile] = set()
        for other in self._ordered():
            if other.wants_slots:
                wanted.add(other.profile)  # type: ignore[arg-type]  # wants_slots: it has one
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
        """The active jobs in the farm's one order (:func:`farm.scheduler.fairshare.order`): by their owners'
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
        With a thousand jobs queued this walk is the cost of a decision: a job whose task's
        share does not fit (:attr:`ActiveJob.share`) would place nothing, so it is passed over
        before anything else of it is read (its state lives in its store row)."""
        starts: list[Start] = []
        quotas, now = self.quotas, time.time()
        full: set[int] = set()  # the quota keys of owners with no room this turn
        fits = self.capacity.fits  # asked of every job on the walk: no more than this
        idle = self._pool is not None and any(s.ready and not s.load for s in self._pool.slots)
        for job in self._ordered():
            share = job.share
            if share is not None and not (
                job.queued and (fits(share) or (idle and self.make_room(job, share)))
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
            [job.row for job in {s.job for s in starts} if job.state is State.QUEUED],
        )
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
        """A slot opened its scene, or could not: the jobs that run on its profile are told."""
        waiting = [j for j in self.jobs.values() if j.profile == slot.profile]
        try:
            info = ray.get(ref)
        except (RayActorError, RayTaskError) as error:
            self._remove_slot(slot)
            refused = None
            if isinstance(error, RayTaskError) and isinstance(error.cause, BlenderError):
                refused = _blender_refusal(slot.profile.scene, error.cause)
            for job in waiting:
                job.slot_failed(self, refused)
            return
        self.pool.opened(slot, info)
        for job in waiting:
            job.slot_opened(self, info)

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
        self.emit(Event("finished", job.id, message=job.state.value))
        for other in list(self.jobs.values()):
            if other.state is State.HELD and job.id in (other.row.depends_on or []):
                self._review(other)

    # What users ask of jobs (through the API or the CLI); each runs on the scheduler's thread.

    def _sweep_idle_slots(self) -> None:
        """End slots idle for ``idle_seconds`` that no job with work wants."""
        if self._pool is None or time.monotonic() - self._swept < 1.0:
            return
        self._swept = time.monotonic()
        wanted = {j.profile for j in self.jobs.values() if j.profile is not None}
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


def _blender_refusal(scene: str, error: BlenderError) -> str:
    """Blender's own reason a scene would not open, in one line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    detail = next((line for line in reversed(lines) if "rror" in line), lines[-1] if lines else "")
    return f"Blender could not open {scene}: {detail.strip()}"
