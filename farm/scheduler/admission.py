"""Which jobs the scheduler holds, and which of them may run now.

Taking up stored jobs (at start, on submission, after a restart, with the attempts a stopped
scheduler left running recorded lost), and holding a job while a job it runs after is not done or
while its owner's account lets it run nothing, saying why, until neither holds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
import time
from typing import Any

from sqlalchemy import Text, cast, func, or_, select
from sqlalchemy.orm import Session

from farm.accounts.quota import Quotas
from farm.errors import FarmError
from farm.scheduler import fairshare
from farm.scheduler.fairshare import FairShare
from farm.scheduler.kinds.base import ActiveJob, Event
from farm.scheduler.kinds.registry import take_up
from farm.store import ledger, states
from farm.store.states import Ending, State, TaskRef
from farm.store.tables import Attempt, Job, Task
from farm.store.tables import Event as StoreEvent

RETRIED = "retried"  # the message of a task queued again by hand: its earlier failures are spent
ACCOUNTS_EVERY = 15.0  # seconds between reads of every account from the store

log = logging.getLogger(__name__)


class Admission:
    """The scheduler's part that takes jobs up and holds or releases them (a mixin of
    :class:`farm.scheduler.loop.Scheduler`, whose state it shares)."""

    db: Session
    jobs: dict[int, ActiveJob]
    quotas: Quotas
    fairshare: FairShare
    unstartable: dict[int, str]  # jobs that could not be taken up, and why
    _order: list[ActiveJob] | None
    _accounts_read: float

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
            job = take_up(self, row, tasks)
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

    def _fail_unstarted(self, row: Job, reason: str) -> None:
        """A stored job the farm cannot run fails saying why (and an embedded run says it too)."""
        self.unstartable[row.id] = reason
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
