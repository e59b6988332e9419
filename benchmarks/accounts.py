"""What accounts cost the farm: admission and fair-share ordering with 200 users and 100,000 queued
tasks, against the same queue with no accounts (the embedded farm).

Two SQLite stores (temp files, WAL) hold the same queue: 200 users × 5 probe jobs × 100 tasks of
0.05 s (``submit.probe_job``), priorities spread over 0–100, and one finished 20-task job a user.
The *accounts* store adds what a lab's farm holds: every user a trainee enrolled today in one of 4
cohorts of the programmes culturepreneurs and work40, weekly programme policies (GPU- and CPU-hour
quotas, a GPU cap) large enough that nothing is held, cohort and per-user policies on some, a
ledger of 20 charges a user over the last 30 days (what fair share decays), and every queued job
charged to its owner's enrolment. The *no accounts* store has no users, enrolments, policies or
ledger.

1. **Admission.** ``ADMISSIONS`` submissions of a 100-task probe job, each in a session of its own
   as the API opens one a request: with accounts, what the API does under its admission lock
   (``accounts.standing_of``, ``accounts.booked_gpu_seconds``, ``accounts.admit``, then
   ``submit.probe_job``); without, the ``submit.probe_job`` alone. The two alternate, so both see
   the same machine load.
2. **Ordering and decisions.** In a fresh process per store: ``Scheduler.recover()`` (every
   account, the fair-share history and 1,000 jobs taken up); one full fair-share re-ordering
   (``Scheduler._ordered`` with its cache cleared), averaged over ``ORDERINGS``, once the cluster
   is full; and ``Scheduler._decide`` (the walk over every job in order, asking the owner's quota
   room of each job that fits) after one placed task's end freed its share, so exactly one
   decision a walk, ``DECISIONS`` times, on a private local Ray. With accounts, also the worst
   case of that walk: every job fits but only the last owner in order has room in their account
   (as when the others are at their GPU cap), so the walk asks ``Quotas.room`` of every job
   before it (``NO_ROOM_DECISIONS`` times). And what the loop does to accounts on its own:
   reviewing every job against its owner's account (every ``ORDER_EVERY`` s), and reading every
   account from the store first (every ``ACCOUNTS_EVERY`` s).

Goal: ≤ 1 ms a dispatch decision.

Run: ``.venv/bin/python benchmarks/accounts.py`` (about a minute on two cores).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from farm.accounts import standing as accounts
from farm.accounts.auth import add_user
from farm.accounts.standing import Ask
from farm.api.admin import NewEnrolment, PolicyChange, change_policy, enrol
from farm.scheduler.admission import ACCOUNTS_EVERY
from farm.scheduler.connect import ensure_ray
from farm.scheduler.kinds.base import Start
from farm.scheduler.loop import ORDER_EVERY, Scheduler
from farm.store import submit
from farm.store.states import State
from farm.store.tables import Charge, Job, Task, open_store, session
from pipelines.probe import ProbeSpec

USERS, JOBS_PER_USER, TASKS_PER_JOB = 200, 5, 100
TASK_SECONDS = 0.05
COHORTS = [
    ("culturepreneurs", "cp-2026-spring"),
    ("culturepreneurs", "cp-2026-autumn"),
    ("work40", "w40-2026-a"),
    ("work40", "w40-2026-b"),
]
CHARGES_PER_USER = 20
LEDGER_DAYS = 30
ADMISSIONS = 500
ORDERINGS = 20
REVIEWS = 20
DECISIONS = 3_000
NO_ROOM_DECISIONS = 300


def user_name(index: int) -> str:
    return f"trainee{index:03d}"


def cohort_of(index: int) -> tuple[str, str]:
    return COHORTS[index % len(COHORTS)]


# The stores.


def add_accounts(engine: Engine) -> None:
    """Users, enrolments covering today, and policies: programme, cohort, and some users'."""
    today = accounts.today()
    with session(engine) as db:
        for index in range(USERS):
            name = user_name(index)
            programme, cohort = cohort_of(index)
            add_user(db, name, "trainee")
            entry = NewEnrolment(
                user=name,
                programme=programme,
                cohort=cohort,
                starts=today - dt.timedelta(days=60),
                ends=today + dt.timedelta(days=120),
                status="active",
            )
            assert enrol(db, entry) == "added"
        for programme in ("culturepreneurs", "work40"):
            change = PolicyChange(
                programme=programme, gpu_hours=50_000, cpu_hours=500_000, max_gpus=4, period="week"
            )
            change_policy(db, change)
        change_policy(db, PolicyChange(programme="work40", cohort="w40-2026-b", max_gpus=2))
        for index in range(0, USERS, 10):  # every tenth user: a policy of their own
            change = PolicyChange(
                user=user_name(index), cpu_hours=1_000_000, max_priority=100, period="month"
            )
            change_policy(db, change)
        db.commit()


def add_history(engine: Engine, with_ledger: bool) -> None:
    """One finished job a user, its tasks done; with the ledger, each task's attempt charged at
    a moment of the last LEDGER_DAYS days (CPU work, some of it on a GPU)."""
    rng = random.Random(11)
    now = dt.datetime.now(dt.UTC)
    with session(engine) as db:
        for index in range(USERS):
            name = user_name(index)
            programme, cohort = cohort_of(index) if with_ledger else ("", "")
            spec = ProbeSpec(tasks=CHARGES_PER_USER, seconds=600)
            job_id = submit.probe_job(db, spec, name, 50, enrolment=(programme, cohort))
            db.execute(update(Job).where(Job.id == job_id).values(state=State.DONE.value))
            db.execute(
                update(Task).where(Task.job_id == job_id).values(state=State.DONE.value, attempts=1)
            )
            if not with_ledger:
                db.commit()
                continue
            task_ids = list(db.scalars(select(Task.id).where(Task.job_id == job_id)))
            rows = []
            for task_id in task_ids:
                ended = now - dt.timedelta(seconds=rng.uniform(0, LEDGER_DAYS * 86_400))
                seconds = rng.uniform(60, 3_600)
                rows.append(
                    {
                        "task_id": task_id,
                        "attempt": 1,
                        "job_id": job_id,
                        "owner": name,
                        "programme": programme,
                        "cohort": cohort,
                        "started_at": ended - dt.timedelta(seconds=seconds),
                        "ended_at": ended,
                        "seconds": seconds,
                        "gpus": 1.0 if rng.random() < 0.3 else 0.0,
                        "cpus": float(rng.randint(1, 8)),
                        "status": "done",
                    }
                )
            db.execute(insert(Charge.__table__), rows)
            db.commit()


def build_store(path: Path, with_accounts: bool) -> float:
    """The queue (and, ``with_accounts``, the accounts and ledger); returns the seconds it took."""
    engine = open_store(f"sqlite:///{path}")
    started = time.perf_counter()
    if with_accounts:
        add_accounts(engine)
    add_history(engine, with_accounts)
    rng = random.Random(7)  # the same priorities in both stores
    with session(engine) as db:
        for index in range(USERS):
            enrolment = cohort_of(index) if with_accounts else ("", "")
            for _ in range(JOBS_PER_USER):
                spec = ProbeSpec(tasks=TASKS_PER_JOB, seconds=TASK_SECONDS)
                priority = rng.randint(0, 100)
                submit.probe_job(db, spec, user_name(index), priority, enrolment=enrolment)
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


# 1. Admission.


def admissions(plain: Engine, accounted: Engine) -> dict[str, list[float]]:
    """Seconds per submission: the insert alone (no accounts), and with accounts the check and
    the insert, alternating."""
    rng = random.Random(3)
    spec = ProbeSpec(tasks=TASKS_PER_JOB, seconds=TASK_SECONDS)
    spent: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(ADMISSIONS):
        name, priority = user_name(rng.randrange(USERS)), rng.randint(0, 100)
        started = time.perf_counter()
        with session(plain) as db:
            submit.probe_job(db, spec, name, priority)
        spent["plain"].append(time.perf_counter() - started)

        started = time.perf_counter()
        with session(accounted) as db:
            standing = accounts.standing_of(db, name)
            ask = Ask(priority, None, spec.gpus, spec.seconds, spec.tasks)
            accounts.admit(standing, ask, accounts.booked_gpu_seconds(db, name))
            checked = time.perf_counter()
            enrolment = (standing.programme, standing.cohort)
            submit.probe_job(db, spec, name, priority, enrolment=enrolment)
        ended = time.perf_counter()
        spent["check"].append(checked - started)
        spent["admitted"].append(ended - started)
    return spent


# 2. Ordering and decisions (in a fresh process per store).


Placed = collections.deque[tuple[Start, float]]  # starts in flight, and when they were sent


def fill(scheduler: Scheduler, history: list[Start]) -> Placed:
    """Fill the cluster with starts."""
    scheduler.capacity.refresh(force=True)
    first = scheduler._decide()
    assert first, "nothing fits the local Ray"
    history += first
    return collections.deque((start, scheduler._sent) for start in first)


def decisions(scheduler: Scheduler, placed: Placed, history: list[Start], count: int) -> float:
    """Seconds a decision: ``count`` times, one placed task ends (its share of the cluster and its
    in-flight usage freed, as ``Scheduler._completed`` frees them) and ``_decide`` runs, making
    exactly one decision a walk."""
    spent = 0.0
    for _ in range(count):
        ended, sent = placed.popleft()
        assert ended.held is not None
        scheduler.capacity.release(ended.held)
        scheduler.quotas.ended(ended.job.owner, *ended.job.size, sent)
        started = time.perf_counter()
        starts = scheduler._decide()
        spent += time.perf_counter() - started
        assert len(starts) == 1, f"{len(starts)} decisions in one walk"
        placed.extend((start, scheduler._sent) for start in starts)
        history += starts
    return spent / count


def release_all(scheduler: Scheduler, placed: Placed, history: list[Start]) -> None:
    """End every start still placed, and put every started task back in its queue."""
    for start, sent in placed:
        assert start.held is not None
        scheduler.capacity.release(start.held)
        scheduler.quotas.ended(start.job.owner, *start.job.size, sent)
    for flight in scheduler.quotas.flight.values():  # every start's usage ended again
        assert abs(flight.cpu_all.rate) < 1e-6 and abs(flight.cpu_booked) < 1e-6, flight
    for start in reversed(history):
        start.job.requeue(start.task)


def decision_cost(scheduler: Scheduler) -> tuple[float, float]:
    """Seconds a full fair-share re-ordering, with the cluster full; and seconds a decision."""
    history: list[Start] = []
    placed = fill(scheduler, history)
    orderings = []
    for _ in range(ORDERINGS):
        scheduler._order = None
        started = time.perf_counter()
        scheduler._ordered()
        orderings.append(time.perf_counter() - started)
    decide_s = decisions(scheduler, placed, history, DECISIONS)
    release_all(scheduler, placed, history)
    return statistics.mean(orderings), decide_s


def no_room_cost(scheduler: Scheduler) -> tuple[float, int]:
    """Seconds a decision when every job fits the cluster but only the last owner in order has
    room in their account, as when the others are at their GPU cap (``max_gpus``): the walk asks
    ``Quotas.room`` of every job before it. Here the others' CPU-hours are marked spent (and their
    jobs not reviewed, so not held), which takes ``room`` down the same path to 0. Returns the
    seconds and how many jobs were asked before the one that places."""
    order = scheduler._ordered()
    free = order[-1].owner
    walked = next(i for i, job in enumerate(order) if job.owner == free)
    saved = {}
    for name, standing in scheduler.quotas.standings.items():
        if name != free:
            assert standing.limits.cpu_hours is not None
            saved[name] = standing.cpu_seconds
            standing.cpu_seconds = standing.limits.cpu_hours * 3600
    history: list[Start] = []
    placed = fill(scheduler, history)
    assert {start.job.owner for start in history} == {free}
    decide_s = decisions(scheduler, placed, history, NO_ROOM_DECISIONS)
    release_all(scheduler, placed, history)
    for name, seconds in saved.items():
        scheduler.quotas.standings[name].cpu_seconds = seconds
    return decide_s, walked


def child(path: Path, with_accounts: bool) -> None:
    """Take up the store, then measure; prints one JSON line."""
    engine = open_store(f"sqlite:///{path}")
    scheduler = Scheduler(engine)
    started = time.perf_counter()
    scheduler.recover()
    load = time.perf_counter() - started
    held = [job.id for job in scheduler.jobs.values() if job.held_for]
    assert not held, f"{len(held)} jobs held, first: {scheduler.jobs[held[0]].held_for}"
    standings = len(scheduler.quotas.standings)
    assert standings == (USERS if with_accounts else 0), standings
    tasks = sum(len(job.queued) for job in scheduler.jobs.values())
    reviews = []
    for _ in range(REVIEWS):  # what every turn does once ORDER_EVERY has passed
        started = time.perf_counter()
        scheduler._review_accounts()
        reviews.append(time.perf_counter() - started)
    rereads = []
    for _ in range(REVIEWS // 4):  # ... and every ACCOUNTS_EVERY, reading every account first
        started = time.perf_counter()
        scheduler._review_accounts(read=True)
        rereads.append(time.perf_counter() - started)
    assert len(scheduler.quotas.standings) == standings
    ensure_ray("local")
    try:
        ordering_s, decide_s = decision_cost(scheduler)
        no_room_s, walked = no_room_cost(scheduler) if with_accounts else (0.0, 0)
    finally:
        scheduler.close()
        ray.shutdown()
    result = {
        "tasks": tasks,
        "jobs": len(scheduler.jobs),
        "standings": standings,
        "load_s": load,
        "review_s": statistics.mean(reviews),
        "reread_s": statistics.mean(rereads),
        "ordering_s": ordering_s,
        "decide_s": decide_s,
        "no_room_s": no_room_s,
        "walked": walked,
    }
    print(json.dumps(result))


def measure(path: Path, with_accounts: bool) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "accounts" if with_accounts else "none"],
        capture_output=True,
        text=True,
        env={**os.environ, "RAY_ADDRESS": "local"},  # never join a cluster started by hand
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"the run on {path.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(Path(sys.argv[2]), sys.argv[3] == "accounts")
        return
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    plain_path, accounted_path = folder / "plain.db", folder / "accounts.db"
    try:
        built = {False: build_store(plain_path, False), True: build_store(accounted_path, True)}
        runs = {False: measure(plain_path, False), True: measure(accounted_path, True)}
        plain = open_store(f"sqlite:///{plain_path}")
        accounted = open_store(f"sqlite:///{accounted_path}")
        spent = admissions(plain, accounted)
        plain.dispose()
        accounted.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    no, yes = runs[False], runs[True]
    assert no["tasks"] == yes["tasks"] and no["jobs"] == yes["jobs"]
    print(
        f"{yes['tasks']:,} queued tasks: {USERS} users × {JOBS_PER_USER} probe jobs × "
        f"{TASKS_PER_JOB} tasks of {TASK_SECONDS} s, priorities 0–100; SQLite stores; "
        f"{os.cpu_count()} cores. With accounts: {yes['standings']} trainees in {len(COHORTS)} "
        f"cohorts, {USERS * CHARGES_PER_USER:,} ledger rows over {LEDGER_DAYS} days\n"
    )

    def ms(seconds: float) -> str:
        return f"{seconds * 1e3:.2f} ms"

    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.0f} µs"

    def ratio(without: float, with_: float) -> str:
        return f"{with_ / without:.2f}"

    insert_s = statistics.mean(spent["plain"])
    admitted_s = statistics.mean(spent["admitted"])
    check_s = statistics.mean(spent["check"])
    rows = [
        (
            f"building the store ({USERS * JOBS_PER_USER:,} `submit.probe_job` calls and more)",
            f"{built[False]:.1f} s",
            f"{built[True]:.1f} s",
            ratio(built[False], built[True]),
        ),
        (
            f"a submission of {TASKS_PER_JOB} tasks: admission check and insert (mean of "
            f"{ADMISSIONS})",
            ms(insert_s),
            ms(admitted_s),
            ratio(insert_s, admitted_s),
        ),
        (
            "… of which the check: `standing_of`, `booked_gpu_seconds`, `admit`",
            "—",
            ms(check_s),
            "—",
        ),
        (
            f"`Scheduler.recover()`: {yes['jobs']:,} jobs taken up",
            f"{no['load_s']:.2f} s",
            f"{yes['load_s']:.2f} s",
            ratio(no["load_s"], yes["load_s"]),
        ),
        (
            f"reviewing every job against its owner's account: `_review_accounts()` (every "
            f"{ORDER_EVERY:g} s)",
            ms(no["review_s"]),
            ms(yes["review_s"]),
            ratio(no["review_s"], yes["review_s"]),
        ),
        (
            f"… reading every account first: `_review_accounts(read=True)` (every "
            f"{ACCOUNTS_EVERY:g} s)",
            ms(no["reread_s"]),
            ms(yes["reread_s"]),
            ratio(no["reread_s"], yes["reread_s"]),
        ),
        (
            f"a full fair-share re-ordering of {yes['jobs']:,} jobs (mean of {ORDERINGS})",
            ms(no["ordering_s"]),
            ms(yes["ordering_s"]),
            ratio(no["ordering_s"], yes["ordering_s"]),
        ),
        (
            f"a decision: `_decide` after one task ended, one decision a walk (mean of "
            f"{DECISIONS:,})",
            us(no["decide_s"]),
            us(yes["decide_s"]),
            ratio(no["decide_s"], yes["decide_s"]),
        ),
    ]
    rows.append(
        (
            f"a decision when only the last owner's account has room: `room()` asked of "
            f"{yes['walked']:,} jobs first (mean of {NO_ROOM_DECISIONS})",
            "—",
            us(yes["no_room_s"]),
            "—",
        )
    )
    print("| measure | no accounts | with accounts | ratio |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nGoal: ≤ 1 ms a decision.")


if __name__ == "__main__":
    main()
