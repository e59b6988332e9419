"""The train job type: a PyTorch training script run by Ray Train's ``TorchTrainer``.

The script follows Ray Train's own conventions, so trainees learn the real API: it defines
``train_loop_per_worker(config)``, calls ``ray.train.report(metrics, checkpoint=...)`` and resumes
from ``ray.train.get_checkpoint()``. The farm sends the script's text with the job (nodes need no
copy of the file), runs it on ``workers`` Ray Train workers (DDP: gloo on CPUs, NCCL on GPUs), and
keeps its results and checkpoints in a storage folder of the job's own on the server. Its data is
an uploaded dataset (``farm data put``) or a folder on a drive every node shares; the script finds
it as ``config["data"]``. A job is one task: the run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import FarmError

MAX_SCRIPT = 1_000_000  # characters


@dataclass(frozen=True)
class TrainSpec:
    script: str  # the script's file name, for tracebacks and the job's name
    source: str  # its text
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_hours: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    max_failures: int = 2  # worker-group restarts from the latest checkpoint before the run fails
    data: str | None = None  # an uploaded dataset (sha256:…) or a folder every node sees

    def as_json(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "source": self.source,
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
            "max_hours": self.max_hours,
            "config": self.config,
            "max_failures": self.max_failures,
            "data": self.data,
        }

    @property
    def resources(self) -> dict[str, float]:
        """What the whole run holds: every worker's CPUs and GPUs."""
        held = {"CPU": self.workers * self.cpus_per_worker}
        if self.gpus_per_worker:
            held["GPU"] = self.workers * self.gpus_per_worker
        return held


def read_source(path: Path) -> str:
    """The training script's text, or one line saying why it cannot be read."""
    if not path.is_file():
        raise FarmError(f"training script {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FarmError(f"cannot read the training script {path}: {error}") from None


def parse_config(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs from the command line; values are JSON where they parse (numbers,
    booleans, lists), else strings."""
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FarmError(f"--config {pair!r}: give key=value, e.g. --config lr=0.01")
        try:
            config[key.strip()] = json.loads(value)
        except ValueError:
            config[key.strip()] = value
    return config


def validate(spec: TrainSpec) -> TrainSpec:
    """Refuse, in one line, what no cluster could run. A script that does not compile or lacks
    ``train_loop_per_worker`` is accepted: its run fails with Python's own traceback in the log."""
    if not spec.source.strip():
        raise FarmError(f"the training script {spec.script} is empty")
    if len(spec.source) > MAX_SCRIPT:
        raise FarmError(f"the training script {spec.script} is over {MAX_SCRIPT:,} characters")
    if not 1 <= spec.workers <= 1024:
        raise FarmError(f"--workers must be between 1 and 1024, got {spec.workers}")
    if not 0 < spec.cpus_per_worker <= 1024:
        raise FarmError(f"--cpus-per-worker must be more than 0, got {spec.cpus_per_worker:g}")
    if not 0 <= spec.gpus_per_worker <= 64:
        raise FarmError(f"--gpus-per-worker must be between 0 and 64, got {spec.gpus_per_worker:g}")
    if spec.max_hours is not None and not 0 < spec.max_hours <= 24 * 365:
        raise FarmError(f"--max-hours must be more than 0, got {spec.max_hours:g}")
    if spec.max_failures < 0:
        raise FarmError("--max-failures must be at least 0")
    if spec.data is not None and not (
        re.fullmatch(r"sha256:[0-9a-f]{64}", spec.data) or spec.data.startswith("/")
    ):
        raise FarmError(
            f"--data {spec.data[:100]!r}: give an uploaded dataset (sha256:…, from farm data put) "
            "or an absolute folder every node sees"
        )
    try:
        json.dumps(spec.config)
    except (TypeError, ValueError) as error:
        raise FarmError(f"--config cannot be sent as JSON: {error}") from None
    return spec
