"""A Ray cluster of lab nodes (ray.cluster_utils.Cluster): lab resources route work, a node that
keeps failing a job's tasks is blocked for that job."""

from __future__ import annotations

import logging

import pytest
import ray
from ray.cluster_utils import Cluster
from sqlalchemy import select

from farm.scheduler.loop import Scheduler
from farm.store import submit
from farm.store.tables import Attempt, Job, Task, open_store, session
from pipelines.probe import ProbeSpec
from pipelines.render import RenderRequest, validate


@pytest.fixture(scope="module")
def lab_cluster():
    """A head with no CPUs, a film-lab node and a node of no lab, one CPU each."""
    ray.shutdown()  # these tests need a cluster of their own
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    film = cluster.add_node(num_cpus=1, resources={"film_lab": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
    yield cluster, film.node_id
    ray.shutdown()
    cluster.shutdown()


def attempts_of(db, job_id: int) -> list[Attempt]:
    return list(
        db.scalars(select(Attempt).join(Task).where(Task.job_id == job_id).order_by(Attempt.id))
    )


def test_a_render_for_the_film_lab_runs_only_on_film_nodes(
    lab_cluster, blender, make_scene, tmp_path
) -> None:
    _, film = lab_cluster
    scene = make_scene(64, 36, samples=2, frames=4)
    engine = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    scheduler = Scheduler(engine, blender)
    spec = validate(RenderRequest(scene=str(scene), output=str(tmp_path / "f_####.exr")))
    run = {"threads": 1, "slots": None, "stall_timeout": 60.0, "lab": "film"}
    job = submit.render(scheduler.db, spec, run, "ana")
    try:
        scheduler.run_until_finished(job)
    finally:
        scheduler.close()
    db = session(engine)
    assert db.get(Job, job).state == "done"
    assert {a.node for a in attempts_of(db, job)} == {film}
    assert sorted(p.name for p in tmp_path.glob("f_*.exr")) == [
        f"f_{f:04d}.exr" for f in range(1, 5)
    ]


def test_a_node_failing_three_tasks_of_a_job_is_blocked_for_it(lab_cluster, tmp_path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'farm.db'}")
    scheduler = Scheduler(engine)
    # Every task fails its first attempt: six failures over two nodes, so one node reaches three.
    job = submit.probe_job(
        scheduler.db, ProbeSpec(tasks=6, seconds=0.3, fail_first=1, retries=4), "ana"
    )
    try:
        scheduler.run_until_finished(job)
    finally:
        scheduler.close()
    db = session(engine)
    row = db.get(Job, job)
    assert row.state == "done"
    assert len(row.blocked_nodes) == 1  # the other node must stay: it is all the job has left
    blocked = row.blocked_nodes[0]
    tries = attempts_of(db, job)
    on_blocked = [a for a in tries if a.node == blocked]
    third = sorted(a.ended_at for a in on_blocked if a.status == "failed")[2]
    assert all(a.started_at <= third for a in on_blocked)  # nothing started there after the block
