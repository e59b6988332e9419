"""One runner for every job the embedded farm runs (render, comp, train): this machine's store,
the server's own scheduler in this process on this machine's Ray (a local one, or the cluster it
joined), and the loop run until the job ends.

Jobs of earlier runs whose process is gone are ended first: nothing would ever run them. Ctrl-C or
an error ends the job (cancelled or failed) with nothing left running.
"""

from __future__ import annotations

import functools
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from farm.config import store_url
from farm.scheduler.connect import ensure_ray
from farm.scheduler.kinds.base import ActiveJob, Event
from farm.scheduler.loop import Scheduler
from farm.store import states
from farm.store.states import Ending, State, TaskRef
from farm.store.tables import Job, open_store


@functools.cache
def store_engine(url: str | None = None) -> Engine:
    """This machine's store (``$FARM_HOME``'s, or ``url``), opened and migrated once a process:
    a command that checks a job before it runs it opens it once."""
    return open_store(url or store_url())


class Here:
    """The embedded farm for one command: a scheduler on this machine's store (``store``: a URL,
    an engine already open, or None for the store in ``$FARM_HOME``)."""

    def __init__(self, store: str | Engine | None = None, **scheduler: Any) -> None:
        ensure_ray()
        engine = store if isinstance(store, Engine) else open_store(store or store_url())
        self.scheduler = Scheduler(engine, **scheduler)
        end_orphans(self.scheduler.db)

    @property
    def db(self) -> Session:
        return self.scheduler.db

    def run(self, job_id: int, on_event: Callable[[Event], None] | None = None) -> ActiveJob:
        """Run the stored job ``job_id`` to its end here, passing on its events."""
        if on_event is not None:
            self.scheduler.listeners.append(lambda event: event.job == job_id and on_event(event))
        return run_here(self.scheduler, job_id)


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
    tasks = [TaskRef.of(t) for t in job.tasks]
    lost = [t for t in tasks if t.state is State.RUNNING]
    states.end(db, [Ending(t, State.QUEUED, attempt_status="lost") for t in lost])
    waiting = [t for t in tasks if t.state in (State.QUEUED, State.PAUSED, State.HELD)]
    states.move(db, waiting, ended if ended is State.CANCELLED else State.FAILED, reason)
    if not State(job.state).finished:
        states.move_job(db, job, ended, reason)


_ACTIVE = (State.QUEUED, State.RUNNING)


def run_here(scheduler: Scheduler, job_id: int) -> ActiveJob:
    """Run the scheduler's loop in this process until ``job_id`` ends. Ctrl-C or an error ends the
    job (cancelled or failed) with nothing left running, and no waiting on busy slots.

    Ctrl-C is taken by a handler of its own and acted on between two turns of the loop: a
    KeyboardInterrupt raised wherever the signal lands (inside Ray's calls, a finaliser) can be
    swallowed there, and the render would go on to its end."""
    pressed = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.set()) if main else None
    try:
        job = scheduler.run_until_finished(job_id, pressed.is_set)
    except BaseException as error:
        scheduler.close(graceful=False)
        row = scheduler.db.get(Job, job_id)
        if row is not None:
            interrupted = isinstance(error, KeyboardInterrupt)
            reason = "interrupted" if interrupted else str(error) or type(error).__name__
            abandon(scheduler.db, row, reason, interrupted)
        raise
    finally:
        if main:  # None: a handler set outside Python, which Python cannot put back
            signal.signal(signal.SIGINT, previous or signal.default_int_handler)
    scheduler.close()
    return job
