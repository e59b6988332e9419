"""The server killed with SIGKILL mid-job and started again: the job goes on from the store.

The module's servers join one Ray cluster, which outlives each of them as a lab's ``ray start``
head outlives a restarted server (and spares every start a Ray of its own)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from ray.cluster_utils import Cluster
from sqlalchemy import select

from farm.store.tables import Attempt, Job, Task, open_store, session
from farm.store.tables import Event as StoreEvent
from tests.conftest import FarmServer


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """The address of the module's Ray: one node with this machine's two CPUs."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
    yield cluster.address
    cluster.shutdown()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def blenders_on(scene: Path) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if "blender" in (p.info["name"] or "") and str(scene) in " ".join(p.info["cmdline"] or [])
    ]


def test_a_server_killed_mid_job_goes_on_from_the_store(make_scene, ray_head, tmp_path) -> None:
    scene = make_scene(96, 54, samples=200, frames=6)  # ~0.5 s a frame on one thread
    data = tmp_path / "data"
    out = tmp_path / "out"
    # A token this machine holds, for a cluster that takes none: carried, it would make Ray's GCS
    # take the server for dead and destroy each slot it starts.
    (tmp_path / "auth_token").write_text("ab" * 32)
    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token")}
    server = FarmServer(data, ray_address=ray_head, env=env).start()
    try:
        api = f"{server.url}/api/v1"
        http = server.client()
        body = {"scene": str(scene), "output": str(out / "f_####.exr"), "tiles": "none"}
        job = http.post(f"{api}/jobs/render", json={**body, "threads": 1}).json()["id"]
        written = wait_for(
            lambda: [
                e for e in http.get(f"{api}/jobs/{job}/events").json() if e["kind"] == "written"
            ][2:],
            timeout=120,
            what="three frames written",
        )
        assert written
        server.kill()  # SIGKILL: no goodbye, attempts left running in the store
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        wait_for(lambda: not blenders_on(scene), 10, "the killed server's Blenders to die")

        db = session(open_store(f"sqlite:///{data / 'farm.db'}"))
        assert db.scalars(select(Task.state).where(Task.job_id == job)).all().count("running") >= 1

        server.start()
        wait_for(
            lambda: http.get(f"{api}/jobs/{job}").json()["state"] in ("done", "failed"),
            timeout=180,
            what="the job to finish after the restart",
        )
        status = http.get(f"{api}/jobs/{job}").json()
        assert status["state"] == "done", status
        assert sorted(p.name for p in out.iterdir()) == [f"f_{f:04d}.exr" for f in range(1, 7)]
        for name, mtime in before.items():  # frames on disk before the kill were not redone
            assert (out / name).stat().st_mtime_ns == mtime

        db.expire_all()
        frames = db.scalars(
            select(StoreEvent.frame).where(StoreEvent.job_id == job, StoreEvent.kind == "written")
        )
        assert Counter(frames) == Counter(range(1, 7))  # every frame written exactly once
        attempts = db.execute(
            select(Task.key, Attempt.status).join(Attempt).where(Task.job_id == job)
        ).all()
        assert "running" not in {status for _, status in attempts}
        assert "lost" in {status for _, status in attempts}  # the attempts the kill cut short
        assert db.get(Job, job).state == "done"
    finally:
        server.stop()


def test_a_server_on_postgresql_killed_mid_job_goes_on_from_the_store(
    postgres_url, ray_head, tmp_path
) -> None:
    """The same on the PostgreSQL store, with a probe job (no Blender): no task stays running, the
    cut-short attempts are lost and run again, and the job ends done."""
    server = FarmServer(tmp_path / "data", db=postgres_url, ray_address=ray_head).start()
    try:
        api = f"{server.url}/api/v1"
        http = server.client()
        job = http.post(f"{api}/jobs/probe", json={"tasks": 12, "seconds": 0.5}).json()["id"]
        wait_for(
            lambda: http.get(f"{api}/jobs/{job}").json()["tasks"]["done"] >= 2,
            timeout=60,
            what="two tasks done",
        )
        server.kill()
        server.start()
        wait_for(
            lambda: http.get(f"{api}/jobs/{job}").json()["state"] == "done",
            timeout=60,
            what="the job to finish after the restart",
        )
        attempts = http.get(f"{api}/jobs/{job}/logs").json()
        assert {a["status"] for a in attempts} == {"done", "lost"}
        assert sorted(a["task"] for a in attempts if a["status"] == "done") == sorted(
            f"p{i}" for i in range(12)
        )
    finally:
        server.stop()


def test_a_stored_job_the_farm_cannot_read_fails_alone(ray_head, tmp_path) -> None:
    """A job whose stored spec this farm cannot read (written by hand, or by another version)
    fails with the reason when the server takes it up; the server goes on serving."""
    db = session(open_store(f"sqlite:///{tmp_path / 'data' / 'farm.db'}"))
    db.add(Job(kind="render", name="odd.blend", owner="ana", state="queued", spec={"frames": [1]}))
    db.commit()
    server = FarmServer(tmp_path / "data", ray_address=ray_head).start()
    try:
        api = f"{server.url}/api/v1"
        http = server.client()
        wait_for(lambda: http.get(f"{api}/jobs/1").json()["state"] == "failed", 30, "a failure")
        assert "cannot run the stored job" in http.get(f"{api}/jobs/1").json()["message"]
        job = http.post(f"{api}/jobs/probe", json={"tasks": 2}).json()["id"]
        wait_for(lambda: http.get(f"{api}/jobs/{job}").json()["state"] == "done", 30, "done")
    finally:
        server.stop()
