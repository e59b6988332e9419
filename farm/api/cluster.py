"""What the Ray cluster offers, so that a submission no node could ever run is refused at once
rather than queued for ever."""

import time
from typing import Any

import ray

from farm.errors import FarmError
from farm.labs import lab_resource


class Cluster:
    """What the Ray cluster offers, read at most every couple of seconds for submissions."""

    def __init__(self) -> None:
        self._nodes: list[dict[str, Any]] = []
        self._read = 0.0

    def nodes(self) -> list[dict[str, Any]]:
        if time.monotonic() - self._read > 2.0:
            self._nodes = [n for n in ray.nodes() if n.get("Alive")]
            self._read = time.monotonic()
        return self._nodes

    def check(self, cpus: float, gpus: float, lab: str | None, memory: int = 0) -> None:
        """Refuse work no node of the cluster could ever run."""
        nodes = self.nodes()
        if lab is not None:
            nodes = [n for n in nodes if n["Resources"].get(lab_resource(lab), 0) > 0]
            if not nodes:
                raise FarmError(f"no node of the {lab} lab has joined the cluster")
        if not any(
            n["Resources"].get("CPU", 0) >= cpus and n["Resources"].get("GPU", 0) >= gpus
            for n in nodes
        ):
            most = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
            gpu = max((n["Resources"].get("GPU", 0) for n in nodes), default=0)
            raise FarmError(
                f"no node has {cpus:g} CPUs and {gpus:g} GPUs (the largest has {most:g} CPUs, "
                f"and the most GPUs on one node is {gpu:g})"
            )
        if memory and not any(n["Resources"].get("memory", 0) >= memory for n in nodes):
            most = max((n["Resources"].get("memory", 0) for n in nodes), default=0)
            raise FarmError(
                f"no node has {memory / 2**30:.3g} GiB of memory for Ray (the most is "
                f"{most / 2**30:.3g} GiB)"
            )
