"""The probe job type: N small tasks that each hold a slot for a while and report where they ran.

Admins use it to check a cluster (which nodes take work, whether a lab's nodes are reachable, how
fast the farm turns tasks over); it is also how the farm measures its own scheduling overhead
without Blender in the way. ``fail_first`` makes every task fail its first attempts, to watch
retries and node blocking at work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farm.errors import FarmError

MAX_TASKS = 1_000_000


@dataclass(frozen=True)
class ProbeSpec:
    tasks: int = 1
    seconds: float = 0.0
    cpus: float = 1.0
    gpus: float = 0.0
    memory: int = 0  # bytes
    fail_first: int = 0
    retries: int = 2

    def as_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "seconds": self.seconds,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "memory": self.memory,
            "fail_first": self.fail_first,
            "retries": self.retries,
        }


def validate(spec: ProbeSpec) -> ProbeSpec:
    """Refuse what no cluster could run, with one line naming the problem."""
    if not 1 <= spec.tasks <= MAX_TASKS:
        raise FarmError(f"--tasks must be between 1 and {MAX_TASKS:,}, got {spec.tasks}")
    if not 0 <= spec.seconds <= 86_400:
        raise FarmError(f"--seconds must be between 0 and 86400, got {spec.seconds:g}")
    if not 0 < spec.cpus <= 1024:
        raise FarmError(f"--cpus must be more than 0 and at most 1024, got {spec.cpus:g}")
    if not 0 <= spec.gpus <= 64:
        raise FarmError(f"--gpus must be between 0 and 64, got {spec.gpus:g}")
    if not 0 <= spec.memory <= 2**50:
        raise FarmError(f"--memory must be between 0 and 1 PiB, got {spec.memory} bytes")
    if spec.fail_first < 0 or spec.retries < 0:
        raise FarmError("--fail-first and --retries must be at least 0")
    return spec


def expand(spec: ProbeSpec) -> list[tuple[str, dict[str, Any]]]:
    """The job's tasks as (key, payload): ``p0`` … ``pN-1``."""
    return [(f"p{i}", {}) for i in range(spec.tasks)]


def resources(spec: ProbeSpec) -> dict[str, float]:
    held = {"CPU": spec.cpus, "GPU": spec.gpus, "memory": float(spec.memory)}
    return {k: v for k, v in held.items() if v or k == "CPU"}
