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
from typing import Any

import ray

from farm.embedded.runner import Here
from farm.errors import FarmError
from farm.scheduler.connect import ensure_ray, local_resources
from farm.scheduler.kinds.base import Event
from farm.scheduler.kinds.render import RenderJob
from farm.store import submit
from farm.store.states import State
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
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    check_layout(slots, threads, gpu, device, nodes, ray.cluster_resources().get("GPU", 0))


def check_layout(
    slots: int, threads: int, gpu: bool, device: str, nodes: list[float], gpus: float
) -> None:
    """Refuse a layout a cluster of ``nodes`` (their CPUs) and ``gpus`` could never place."""
    if gpu and gpus < slots:
        raise FarmError(
            f"--device {device} needs one GPU per slot: the Ray cluster has {gpus:g} GPUs "
            f"for {slots} slots (use --slots)"
        )
    if sum(nodes) < slots * threads or max(nodes, default=0) < threads:
        raise FarmError(
            f"{slots} slots × {threads} threads need {slots * threads} CPUs "
            f"(at least {threads} on one node); the Ray cluster has {sum(nodes):g} "
            f"on {len(nodes)} node(s)"
        )


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
    device = spec.overrides.get("device", "CPU")
    if (here := local_resources()) is not None:  # refused before a local Ray starts, not after
        check_layout(options.slots, options.threads, device != "CPU", device, [here[0]], here[1])
    ensure_ray()
    check_cluster(options.slots, options.threads, device != "CPU", device)
    here = Here(store or "sqlite://", blender=options.blender)
    run = {
        "threads": options.threads,
        "slots": options.slots,
        "stall_timeout": options.stall_timeout,
        "host": socket.gethostname(),
        "pid": os.getpid(),  # who runs it: a later farm render ends it if this process is gone
    }
    job_id = submit.render(here.db, spec, run, owner or getpass.getuser())
    summary.job = job_id

    def listen(event: Event) -> None:
        if event.kind == "started" and not summary.startup_seconds:
            summary.startup_seconds = time.monotonic() - started
        if on_event is not None:
            on_event(event)

    job = here.run(job_id, listen)
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
