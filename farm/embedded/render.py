"""The embedded farm: what ``farm render`` runs when no server is configured.

The same store, scheduler and workers as the server, in this process: a local Ray (or the cluster
this machine joined), the job stored in ``$FARM_HOME/farm.db``, and the loop run until the job is
done. The slots it starts end with it.
"""

from __future__ import annotations

import getpass
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.errors import FarmError
from farm.scheduler.kinds.base import ActiveJob, Event
from farm.scheduler.kinds.render import RenderJob
from farm.scheduler.loop import Scheduler, ensure_ray
from farm.store import states, submit
from farm.store.states import Ending, State
from farm.store.tables import Job, open_store
from pipelines.render import RenderSpec


@dataclass(frozen=True)
class RunOptions:
    """How this run uses the cluster (not part of the job: the same job may run anywhere)."""

    blender: str
    slots: int
    threads: int
    stall_timeout: float = 600.0


@dataclass
class RunSummary:
    """Everything ``farm render --json`` prints."""

    job: int | None = None
    state: str = ""
    frames: list[int] = field(default_factory=list)
    written: dict[int, str] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    tasks: int = 0
    attempts: int = 0
    retries: int = 0
    tiled_frames: int = 0
    slots: int = 0
    threads: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0  # from the start to the first task sent: Ray, slots, Blender
    render_seconds: float = 0.0
    width: int = 0
    height: int = 0

    @property
    def ok(self) -> bool:
        return self.state == State.DONE

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.job,
            "state": self.state,
            "frames": len(self.frames),
            "written": len(self.written),
            "paths": [self.written[f] for f in sorted(self.written)],
            "failed": {str(f): reason for f, reason in sorted(self.failed.items())},
            "resolution": [self.width, self.height],
            "tasks": self.tasks,
            "attempts": self.attempts,
            "retries": self.retries,
            "tiled_frames": self.tiled_frames,
            "slots": self.slots,
            "threads_per_slot": self.threads,
            "seconds": round(self.seconds, 3),
            "seconds_per_frame": round(self.seconds / max(1, len(self.written)), 4),
            "startup_seconds": round(self.startup_seconds, 3),
            "render_seconds": round(self.render_seconds, 3),
        }


def check_cluster(slots: int, threads: int, gpu: bool, device: str) -> None:
    """Refuse a layout Ray could never place (its slots would wait forever)."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpu and gpus < slots:
        raise FarmError(
            f"--device {device} needs one GPU per slot: the Ray cluster has {gpus:g} GPUs "
            f"for {slots} slots (use --slots)"
        )
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    if sum(nodes) < slots * threads or max(nodes, default=0) < threads:
        raise FarmError(
            f"{slots} slots × {threads} threads need {slots * threads} CPUs "
            f"(at least {threads} on one node); the Ray cluster has {sum(nodes):g} "
            f"on {len(nodes)} node(s)"
        )


def _running(pid: int) -> bool:
    """Whether ``pid`` is still a farm process on this machine."""
    try:
        return b"farm" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def end_orphans(db: Session) -> None:
    """Jobs of earlier embedded renders on this machine whose process is gone (killed, the machine
    restarted) end failed, their attempts lost: nothing would ever run them, and a job must not
    look running for ever."""
    host = socket.gethostname()
    unfinished = [s.value for s in State if not s.finished]
    for job in db.scalars(select(Job).where(Job.state.in_(unfinished))).all():
        run = job.spec.get("run", {})
        if run.get("host") != host or not run.get("pid") or _running(run["pid"]):
            continue
        abandon(db, job, f"the farm render that ran it (pid {run['pid']}) stopped")


def abandon(db: Session, job: Job, reason: str, interrupted: bool = False) -> None:
    """End a job nobody will run any more: attempts left running are lost, waiting tasks end with
    the job (cancelled when the user interrupted it, else failed)."""
    db.rollback()
    db.expire_all()
    ended = State.CANCELLED if interrupted or job.state not in _ACTIVE else State.FAILED
    tasks = [Scheduler.ref(t) for t in job.tasks]
    lost = [t for t in tasks if t.state is State.RUNNING]
    states.end(db, [Ending(t, State.QUEUED, attempt_status="lost") for t in lost])
    waiting = [t for t in tasks if t.state in (State.QUEUED, State.PAUSED, State.HELD)]
    states.move(db, waiting, ended if ended is State.CANCELLED else State.FAILED, reason)
    if not State(job.state).finished:
        states.move_job(db, job, ended, reason)


_ACTIVE = (State.QUEUED, State.RUNNING)


def run_here(scheduler: Scheduler, job_id: int) -> ActiveJob:
    """Run the scheduler's loop in this process until ``job_id`` ends. Ctrl-C or an error ends the
    job (cancelled or failed) with nothing left running, and no waiting on busy slots."""
    try:
        job = scheduler.run_until_finished(job_id)
    except BaseException as error:
        scheduler.close(graceful=False)
        row = scheduler.db.get(Job, job_id)
        if row is not None:
            interrupted = isinstance(error, KeyboardInterrupt)
            reason = "interrupted" if interrupted else str(error) or type(error).__name__
            abandon(scheduler.db, row, reason, interrupted)
        raise
    scheduler.close()
    return job


def render(
    spec: RenderSpec,
    options: RunOptions,
    on_event: Callable[[Event], None] | None = None,
    store: str | None = None,  # the store's URL; None: an in-memory store for this run
    owner: str | None = None,
) -> RunSummary:
    """Run one render job to its end on this process's Ray; returns what ``--json`` prints."""
    started = time.monotonic()
    summary = RunSummary(slots=options.slots, threads=options.threads)
    ensure_ray()
    device = spec.overrides.get("device", "CPU")
    check_cluster(options.slots, options.threads, device != "CPU", device)
    engine = open_store(store or "sqlite://")
    scheduler = Scheduler(engine, options.blender)
    end_orphans(scheduler.db)
    run = {
        "threads": options.threads,
        "slots": options.slots,
        "stall_timeout": options.stall_timeout,
        "host": socket.gethostname(),
        "pid": os.getpid(),  # who runs it: a later farm render ends it if this process is gone
    }
    job_id = submit.render(scheduler.db, spec, run, owner or getpass.getuser())
    summary.job = job_id

    def listen(event: Event) -> None:
        if event.job != job_id:
            return
        if event.kind == "started" and not summary.startup_seconds:
            summary.startup_seconds = time.monotonic() - started
        if on_event is not None:
            on_event(event)

    scheduler.listeners.append(listen)
    job = run_here(scheduler, job_id)
    assert isinstance(job, RenderJob)
    if job.plan is None:  # refused once Blender had the scene: bad input, not a failed render
        raise FarmError(job.reason)
    summary.state = job.state.value
    summary.frames = list(job.plan.frames)
    summary.width, summary.height = job.plan.width, job.plan.height
    summary.written, summary.failed = dict(job.written), dict(job.failed)
    summary.tiled_frames = job.tiled_frames
    summary.tasks = len(job.tasks)
    summary.attempts = sum(t.attempts for t in job.tasks.values())
    summary.retries = summary.attempts - summary.tasks
    summary.render_seconds = job.render_seconds
    summary.seconds = time.monotonic() - started
    return summary
