"""A Ray node removed mid-job: its tasks run elsewhere and every frame is still written once."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import psutil
import pytest
import ray
from ray.cluster_utils import Cluster

from farm.embedded.render import RunOptions, render
from farm.scheduler.kinds.base import Event
from pipelines.render import RenderRequest, validate


def node_running_blender(cluster: Cluster, scene) -> object | None:
    """The cluster node whose raylet is the grandparent of a Blender rendering ``scene``."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    for process in psutil.process_iter(["name", "cmdline"]):
        if "blender" in (process.info["name"] or "") and str(scene) in " ".join(
            process.info["cmdline"] or []
        ):
            for ancestor in process.parents():
                if ancestor.pid in raylets:
                    return raylets[ancestor.pid]
    return None


@pytest.mark.parametrize("spare", [True, False], ids=["spare-node", "no-room-left"])
def test_a_node_removed_mid_job_loses_no_frame(blender, make_scene, tmp_path, spare) -> None:
    """With a spare node the dead slot is replaced there; without one, the remaining slot renders
    the rest (a replacement Ray cannot place gets no work)."""
    scene = make_scene(96, 54, samples=200, frames=6)
    ray.shutdown()  # this test needs a cluster of its own
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(3 if spare else 2):  # two one-CPU slots (and a spare node)
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level=logging.ERROR, log_to_driver=False)
        removed: list[object] = []
        events: list[Event] = []

        def remove_a_busy_node() -> None:
            time.sleep(0.5)
            node = node_running_blender(cluster, scene)
            if node is not None:
                removed.append(node)
                cluster.remove_node(node, allow_graceful=False)

        def record(event: Event) -> None:
            events.append(event)
            if event.kind == "started" and sum(e.kind == "started" for e in events) == 1:
                threading.Thread(target=remove_a_busy_node, daemon=True).start()

        spec = validate(
            RenderRequest(
                scene=str(scene), output=str(tmp_path / "f_####.exr"), frames="1-6", tiles="none"
            )
        )
        summary = render(spec, RunOptions(blender, slots=2, threads=1), record)
        assert removed, "no node with a Blender was found to remove"
        assert summary.ok and summary.retries >= 1
        written = Counter(e.frame for e in events if e.kind == "written")
        assert written == Counter({f: 1 for f in range(1, 7)})
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"f_{f:04d}.exr" for f in range(1, 7)]
    finally:
        ray.shutdown()
        cluster.shutdown()
