"""The farm's scheduler against plain Ray, on a warm server, and with a million tasks queued.

1. **Throughput.** 10,000 no-op tasks as one persisted ``probe`` job (``seconds=0``), submitted
   with :func:`farm.submit.probe_job` and run by ``Scheduler.run_until_finished`` in this process,
   against the same 10,000 tasks as plain Ray tasks (``ray.remote(num_cpus=1)``, returning their
   argument, all submitted, then one ``ray.get``) on the same private local Ray. The farm's time
   runs from the submission to the job's end. Runs alternate, best of ``ROUNDS`` each; the store is
   SQLite (a temp file, WAL) and, when Debian's PostgreSQL is installed, a throwaway PostgreSQL
   server on a Unix socket (its default settings, fsync on), started the way the tests start one.
   Goals: the farm ≥ 0.7 of plain Ray's rate and ≥ 1,000 tasks/s.
2. **Latency.** A real ``farm server`` (its own local Ray and SQLite store), warmed by one probe
   job; then ``LATENCY_RUNS`` times ``POST /api/v1/jobs/probe`` (one 0.2 s task) and a poll of the
   job every 5 ms until its task runs. The same for a one-frame render job on a small scene whose
   slot is warm (the first render opened it). Goal: median < 300 ms.
3. **Scale.** 1,000,000 queued tasks (200 users × 5 probe jobs × 1,000 tasks of 0.05 s, priorities
   spread over 0–100) in a SQLite store, taken up by ``Scheduler.recover()`` in a fresh process:
   the load time, the process's resident memory after it, and the cost of a scheduling decision:
   ``Scheduler._decide`` (the walk of ``_dispatch`` over every job in order) after one task's end
   freed room, so one decision a walk (the worst case); the same in the running loop on a local
   Ray, per task started; and the whole ``_dispatch`` there (decide, commit the starts, send them
   to Ray). Goal: ≤ 1 ms a decision.

Run: ``.venv/bin/python benchmarks/scheduler.py`` (about three minutes on two cores).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray
from sqlalchemy.engine import Engine

import workers.probe
from farm.config import find_blender
from farm.scheduler.connect import ensure_ray
from farm.scheduler.kinds.base import Event
from farm.scheduler.kinds.probe import ProbeJob
from farm.scheduler.loop import Scheduler
from farm.store import submit
from farm.store.states import State
from farm.store.tables import open_store, session
from pipelines.probe import ProbeSpec

ROOT = Path(__file__).resolve().parent.parent
TASKS = 10_000
ROUNDS = 3
LATENCY_RUNS = 30
RENDER_RUNS = 10
POLL = 0.005
USERS, JOBS_PER_USER, TASKS_PER_JOB = 200, 5, 1_000
SCALE_TASK_SECONDS = 0.05
DECISIONS = 2_000
LOOP_SECONDS = 10.0


def _echo(value: int) -> int:
    return value


echo = ray.remote(num_cpus=1)(_echo)
probe = ray.remote(num_cpus=1)(workers.probe.probe)


# 1. Throughput.


def plain_ray_seconds(tasks: int = TASKS) -> float:
    started = time.perf_counter()
    assert ray.get([echo.remote(i) for i in range(tasks)]) == list(range(tasks))
    return time.perf_counter() - started


def plain_probe_seconds(tasks: int = TASKS) -> float:
    """The farm's probe function (0 s) as plain Ray tasks: what the task itself costs."""
    started = time.perf_counter()
    ray.get([probe.remote(0.0, 1, 0) for _ in range(tasks)])
    return time.perf_counter() - started


def farm_seconds(engine: Engine, tasks: int = TASKS) -> float:
    """Submit a probe job of no-op tasks into the store and run it to its end."""
    started = time.perf_counter()
    with session(engine) as db:
        job_id = submit.probe_job(db, ProbeSpec(tasks=tasks, seconds=0), "bench")
    scheduler = Scheduler(engine)
    try:
        job = scheduler.run_until_finished(job_id)
    finally:
        scheduler.close()
    seconds = time.perf_counter() - started
    assert isinstance(job, ProbeJob) and job.state is State.DONE, job.reason
    assert sum(1 for t in job.tasks.values() if t.state is State.DONE) == tasks
    return seconds


@contextlib.contextmanager
def postgres() -> Iterator[str | None]:
    """A throwaway PostgreSQL server on a Unix socket in a temp folder (as tests/conftest.py starts
    one), or None where Debian's postgresql is not installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        yield None
        return
    tools = found[-1].parent
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own account
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(tool: str, *args: str, check: bool = True) -> None:
        subprocess.run([*as_user, str(tools / tool), *args], check=check, capture_output=True)

    pg("initdb", "-D", str(data), "-A", "trust", "-U", "farm")
    options = f"-k {folder} -c listen_addresses=''"
    pg("pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start")
    try:
        pg("createdb", "-h", str(folder), "-U", "farm", "farm")
        yield f"postgresql+psycopg://farm@/farm?host={folder}"
    finally:
        gc.collect()  # close pooled connections while the server still answers
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


def throughput() -> None:
    ensure_ray("local")  # a private Ray: never a cluster someone else is using
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    try:
        with postgres() as postgres_url:
            stores = {"SQLite store (WAL)": open_store(f"sqlite:///{folder / 'farm.db'}")}
            if postgres_url:
                stores["PostgreSQL store"] = open_store(postgres_url)
            plain_ray_seconds(1_000)  # start Ray's workers, and import the probe in them
            plain_probe_seconds(1_000)
            for engine in stores.values():
                farm_seconds(engine, 1_000)
            runs: dict[str, list[float]] = collections.defaultdict(list)
            for _ in range(ROUNDS):  # alternate, so that every row sees the same machine load
                runs["plain Ray tasks (`ray.remote`, returning their argument)"].append(
                    plain_ray_seconds()
                )
                runs["plain Ray tasks of the farm's probe function"].append(plain_probe_seconds())
                for name, engine in stores.items():
                    runs[f"farm probe job, {name}"].append(farm_seconds(engine))
            for engine in stores.values():
                engine.dispose()
    finally:
        ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)

    base = min(next(iter(runs.values())))
    print(f"{TASKS:,} no-op tasks, {os.cpu_count()} cores; best of {ROUNDS} alternating runs\n")
    print("| run | wall (s) | tasks/s | vs plain Ray | overhead per task (µs) |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in runs.items():
        wall = min(seconds)
        overhead = (wall - base) / TASKS * 1e6
        print(f"| {name} | {wall:.2f} | {TASKS / wall:,.0f} | {base / wall:.2f} | {overhead:.0f} |")
    print("\nGoals: ≥ 0.70 of plain Ray and ≥ 1,000 tasks/s.")


# 2. Latency.


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


class Server:
    """A real ``farm server`` on a loopback port with a store and a local Ray of its own (as
    tests/conftest.py starts one)."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "server.log"
        init = [sys.executable, "-m", "farm", "admin", "init", "--data-dir", str(folder / "data")]
        init += ["--name", "admin", "--json"]
        made = subprocess.run(init, capture_output=True, text=True, check=False)
        if made.returncode != 0:
            sys.exit(f"farm admin init failed:\n{made.stderr}")
        token = json.loads(made.stdout)["token"]
        command = [sys.executable, "-m", "farm", "server", "--port", str(self.port)]
        command += ["--data-dir", str(folder / "data"), "--ray-address", "local"]
        env = {**os.environ, "RAY_ADDRESS": "local"}  # never join a cluster started by hand
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}/api/v1",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the farm server exited:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.client.get("/health").status_code == 200:
                    return
            time.sleep(0.2)
        self.stop()
        sys.exit(f"the farm server did not answer:\n{self.log.read_text()}")

    def submit(self, kind: str, body: dict[str, Any]) -> tuple[int, float]:
        """Submit a job; returns its id and the moment the POST was sent."""
        sent = time.perf_counter()
        response = self.client.post(f"/jobs/{kind}", json=body)
        assert response.status_code == 201, response.text
        return response.json()["id"], sent

    def until(self, job_id: int, done: bool, timeout: float = 120.0) -> float:
        """Poll the job until a task of it runs (or, with ``done``, until it ends)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            status = self.client.get(f"/jobs/{job_id}").json()
            if done and State(status["state"]).finished:
                assert status["state"] == State.DONE, status
                return time.perf_counter()
            if not done and (status["tasks"]["running"] or status["tasks"]["done"]):
                return time.perf_counter()
            time.sleep(POLL)
        raise AssertionError(f"job {job_id} took over {timeout} s:\n{self.log.read_text()}")

    def latency(self, kind: str, body: dict[str, Any]) -> float:
        """Seconds from the POST to its first task running; then wait for the job's end."""
        job_id, sent = self.submit(kind, body)
        running = self.until(job_id, done=False)
        self.until(job_id, done=True)
        return running - sent

    def stop(self) -> None:
        self.client.close()
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # its Ray and Blenders, if any outlived it
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


def build_scene(path: Path) -> None:
    builder = ROOT / "examples" / "build_shot.py"
    command = [find_blender(), "-b", "--factory-startup", "--python", str(builder), "--"]
    command += [str(path), "--resolution", "96x54", "--samples", "4", "--frames", "4"]
    subprocess.run(command, check=True, capture_output=True)


def latency() -> None:
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    scene = folder / "shot.blend"
    build_scene(scene)
    server = Server(folder)
    try:
        one = {"tasks": 1, "seconds": 0.2}
        server.latency("probe", one)  # warm: Ray's first worker, the API's first requests
        probes = [server.latency("probe", one) for _ in range(LATENCY_RUNS)]
        render = {"scene": str(scene), "output": str(folder / "out" / "f_####.exr"), "frames": "1"}
        cold = server.latency("render", render)
        renders = [server.latency("render", render) for _ in range(RENDER_RUNS)]
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    def row(name: str, seconds: list[float]) -> str:
        ms = sorted(s * 1e3 for s in seconds)
        p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
        return f"| {name} | {len(ms)} | {statistics.median(ms):.0f} | {p90:.0f} | {ms[-1]:.0f} |"

    print("\nSubmission to first task running, on a warm `farm server` (poll every 5 ms)\n")
    print("| job | runs | median (ms) | p90 (ms) | max (ms) |")
    print("|---|---:|---:|---:|---:|")
    print(row("probe, 1 task of 0.2 s", probes))
    print(row("render, 1 frame, its scene already open in a warm slot", renders))
    print(row("render, 1 frame, first on its scene (the slot opens Blender)", [cold]))
    print("\nGoal: median < 300 ms.")


# 3. Scale.


def build_queue(path: Path) -> float:
    """USERS users × JOBS_PER_USER probe jobs of TASKS_PER_JOB tasks; returns the seconds it took."""
    engine = open_store(f"sqlite:///{path}")
    rng = random.Random(7)
    started = time.perf_counter()
    with session(engine) as db:
        for user in range(USERS):
            for _ in range(JOBS_PER_USER):
                spec = ProbeSpec(tasks=TASKS_PER_JOB, seconds=SCALE_TASK_SECONDS)
                submit.probe_job(db, spec, f"user{user:03d}", rng.randint(0, 100))
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds


def decision_cost(scheduler: Scheduler) -> float:
    """Seconds a decision: ``Scheduler._decide`` (every job in order places what fits), each time
    after one placed task's end freed its share of the cluster, so one decision a walk."""
    scheduler.capacity.refresh(force=True)
    first = scheduler._decide()  # fill the cluster
    placed = collections.deque(first)
    history = list(first)
    spent = 0.0
    for _ in range(DECISIONS):
        ended = placed.popleft()
        assert ended.held is not None
        scheduler.capacity.release(ended.held)
        started = time.perf_counter()
        starts = scheduler._decide()
        spent += time.perf_counter() - started
        placed.extend(starts)
        history.extend(starts)
    for start in placed:
        assert start.held is not None
        scheduler.capacity.release(start.held)
    for start in reversed(history):  # every task back in its queue, for the running loop
        start.job.requeue(start.task)
    decisions = len(history) - len(first)
    assert decisions >= DECISIONS
    return spent / decisions


def loop_cost(scheduler: Scheduler) -> tuple[float, float, int]:
    """The running loop for LOOP_SECONDS: seconds in ``_decide`` and in the whole ``_dispatch``
    (decide, commit the starts, send them to Ray) per task started, and the tasks started."""
    spent: collections.Counter[str] = collections.Counter()

    def timed(name: str) -> None:
        method = getattr(scheduler, name)

        def run() -> Any:
            started = time.perf_counter()
            try:
                return method()
            finally:
                spent[name] += time.perf_counter() - started

        setattr(scheduler, name, run)  # the loop's own calls to it, timed

    timed("_decide")
    timed("_dispatch")
    starts = 0

    def count(event: Event) -> None:
        nonlocal starts
        starts += event.kind == "started"

    scheduler.listeners.append(count)
    deadline = time.perf_counter() + LOOP_SECONDS
    while time.perf_counter() < deadline:
        scheduler.step()
    return spent["_decide"] / starts, spent["_dispatch"] / starts, starts


def scale_child(path: Path) -> None:
    """In a fresh process: load the queue, then measure; prints one JSON line."""
    process = psutil.Process()
    engine = open_store(f"sqlite:///{path}")
    gc.collect()
    before = process.memory_info().rss
    scheduler = Scheduler(engine)
    started = time.perf_counter()
    scheduler.recover()
    load = time.perf_counter() - started
    gc.collect()
    rss = process.memory_info().rss
    tasks = sum(len(job.queued) for job in scheduler.jobs.values())
    ensure_ray("local")
    try:
        decide_s = decision_cost(scheduler)
        loop_decide_s, loop_dispatch_s, loop_starts = loop_cost(scheduler)
    finally:
        scheduler.close()
        ray.shutdown()
    result = {
        "tasks": tasks,
        "jobs": len(scheduler.jobs),
        "load_s": load,
        "rss_mib": rss / 2**20,
        "grown_mib": (rss - before) / 2**20,
        "decide_s": decide_s,
        "loop_decide_s": loop_decide_s,
        "loop_dispatch_s": loop_dispatch_s,
        "loop_starts": loop_starts,
    }
    print(json.dumps(result))


def scale() -> None:
    folder = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    path = folder / "queue.db"
    try:
        built = build_queue(path)
        done = subprocess.run(
            [sys.executable, __file__, "--scale", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "RAY_ADDRESS": "local"},
            check=False,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if done.returncode != 0:
        sys.exit(f"the scale run failed:\n{done.stderr[-3000:]}")
    got = json.loads(done.stdout.strip().splitlines()[-1])
    jobs = USERS * JOBS_PER_USER
    print(
        f"\n{got['tasks']:,} queued tasks: {USERS} users × {JOBS_PER_USER} probe jobs × "
        f"{TASKS_PER_JOB:,} tasks of {SCALE_TASK_SECONDS} s, priorities 0–100; SQLite store\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| submitting them ({jobs:,} `submit.probe_job` calls) | {built:.1f} s |")
    print(f"| `Scheduler.recover()`: {got['jobs']:,} jobs taken up | {got['load_s']:.1f} s |")
    print(
        f"| resident memory after loading (growth from loading) | {got['rss_mib']:.0f} MiB "
        f"(+{got['grown_mib']:.0f} MiB) |"
    )
    walk = f"`_decide` (a walk of {got['jobs']:,} jobs in order)"
    loop = f"in the running loop, per task started ({got['loop_starts']:,} in {LOOP_SECONDS:.0f} s)"
    rows = [
        (f"a decision: {walk} after one task ended, one decision a walk", got["decide_s"]),
        (f"a decision: {walk} {loop}", got["loop_decide_s"]),
        (
            f"decide, commit the starts, send them to Ray: `_dispatch` {loop}",
            got["loop_dispatch_s"],
        ),
    ]
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1e6:.0f} µs |")
    print("\nGoal: ≤ 1 ms a decision.")


def main() -> None:
    if sys.argv[1:2] == ["--scale"]:
        scale_child(Path(sys.argv[2]))
        return
    throughput()
    latency()
    scale()


if __name__ == "__main__":
    main()
