"""Fair share: the decayed-usage factor, a simulation of a busy farm through the farm's one ordering
function, and the real scheduler putting a user who used the farm least lately first."""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from farm.scheduler import fairshare
from farm.scheduler.fairshare import DAY, FairShare
from farm.scheduler.loop import Scheduler
from farm.store import submit
from farm.store.tables import Attempt, Charge, Job, Task, now, open_store, session
from pipelines.probe import ProbeSpec


def test_usage_halves_every_half_life_and_the_factor_follows_slurms_formula():
    share = FairShare(half_life=7 * DAY)
    share.charge("ana", 1000.0, at=0.0)
    assert share.usage("ana", 7 * DAY) == pytest.approx(500.0)
    assert share.usage("ana", 21 * DAY) == pytest.approx(125.0)
    share.charge("bob", 375.0, at=21 * DAY)
    factors = share.factors(["ana", "bob", "cem"], at=21 * DAY)
    # U: 125/500 and 375/500 of the usage; S = 1/3 each; F = 2^(-U/S).
    assert factors["ana"] == pytest.approx(2 ** (-0.25 * 3))
    assert factors["bob"] == pytest.approx(2 ** (-0.75 * 3))
    assert factors["cem"] == 1.0  # used nothing
    assert share.factors(["dan"], at=0.0) == {"dan": 1.0}


@dataclass
class SimJob:
    owner: str
    priority: int
    id: int

    def order_key(self) -> tuple[int, int, int]:
        return (-self.priority, 0, self.id)


def simulate(
    history: dict[str, float], days: float, slots: int = 12, task: float = 3600.0
) -> list[tuple[float, str]]:
    """A farm of ``slots`` always full: each user has endless one-hour tasks queued. Each time a
    slot frees, the farm's ordering (:func:`fairshare.order`, factors counting running tasks)
    picks whose task runs next. ``history``: GPU-hours each user used just before. Returns
    (start time, owner) of every task."""
    share = FairShare()
    for owner, hours in history.items():
        share.charge(owner, fairshare.billing(hours * 3600, 0.0), at=0.0)
    jobs = [SimJob(owner, 90 - 40 * i, i) for i, owner in enumerate(history)]
    running: list[tuple[float, float, str]] = []  # (end, start, owner)
    started: list[tuple[float, str]] = []
    clock = 0.0
    free = slots
    while clock < days * DAY:
        while free:
            usage = {
                owner: sum(fairshare.billing(clock - s, 0.0) for _, s, o in running if o == owner)
                for owner in history
            }
            factors = share.factors(history, clock, usage)
            first = fairshare.order(jobs, factors.__getitem__)[0]
            heapq.heappush(running, (clock + task, clock, first.owner))
            started.append((clock, first.owner))
            free -= 1
        end, start, owner = heapq.heappop(running)
        clock = end
        share.charge(owner, fairshare.billing(end - start, 0.0), at=end)
        free += 1
    return started


def shares(started: list[tuple[float, str]], since: float, owners: list[str]) -> dict[str, float]:
    window = [owner for at, owner in started if at >= since]
    return {owner: window.count(owner) / len(window) for owner in owners}


def test_three_users_of_unequal_history_converge_to_equal_shares_within_5_percent():
    # The heaviest past user also asks the highest priority: fair share still comes first.
    history = {"heavy": 800.0, "some": 100.0, "none": 0.0}
    started = simulate(history, days=60)
    first_day = shares(started, 0, list(history))
    assert first_day["none"] > first_day["some"] > first_day["heavy"], first_day
    last_week = shares(started, 53 * DAY, list(history))
    for owner, value in last_week.items():
        assert abs(value - 1 / 3) <= 0.05 / 3, (owner, last_week)


@settings(max_examples=8, deadline=None)
@given(
    history=st.lists(st.floats(0, 2000), min_size=3, max_size=3),
)
def test_any_unequal_history_converges_to_equal_shares_within_5_percent(history):
    owners = ["a", "b", "c"]
    started = simulate(dict(zip(owners, history, strict=True)), days=70)
    last_week = shares(started, 63 * DAY, owners)
    assert all(abs(v - 1 / 3) <= 0.05 / 3 for v in last_week.values()), last_week


def test_the_scheduler_runs_the_user_who_used_least_lately_first(ray_local, tmp_path: Path):
    engine = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    with session(engine) as db:
        # Yesterday "heavy" ran 100 CPU-hours: a ledger row on a finished job of theirs.
        past = submit.probe_job(db, ProbeSpec(tasks=1), "heavy")
        task = db.scalar(select(Task.id).where(Task.job_id == past))
        db.get(Job, past).state = "done"
        moment = now()
        db.add(
            Charge(
                task_id=task,
                attempt=1,
                job_id=past,
                owner="heavy",
                programme="",
                cohort="",
                started_at=moment,
                ended_at=moment,
                seconds=360_000.0,
                gpus=0.0,
                cpus=1.0,
                status="done",
            )
        )
        db.commit()
        # Heavy submits first and asks a higher priority; light comes later.
        spec = ProbeSpec(tasks=4, seconds=0.3, cpus=1)
        heavy = submit.probe_job(db, spec, "heavy", priority=90)
        time.sleep(0.01)
        light = submit.probe_job(db, spec, "light", priority=10)
    scheduler = Scheduler(engine)
    try:
        scheduler.recover()
        deadline = time.monotonic() + 60
        while scheduler.jobs:
            scheduler.step()
            assert time.monotonic() < deadline
    finally:
        scheduler.close()
    with session(engine) as db:
        starts = {
            job: sorted(db.scalars(select(Attempt.started_at).join(Task).where(Task.job_id == job)))
            for job in (heavy, light)
        }
        assert db.get(Job, heavy).state == db.get(Job, light).state == "done"
    assert len(starts[light]) == len(starts[heavy]) == 4
    assert max(starts[light]) <= min(starts[heavy]), starts
    assert math.isfinite(scheduler.fairshare.usage("light", time.time()))
    assert scheduler.fairshare.usage("light", time.time()) > 0  # its tasks were charged
