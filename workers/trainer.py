"""The training launcher: runs a trainee's script with Ray Train's ``TorchTrainer`` as a Ray task.

It runs where the scheduler sends it and holds no CPU itself: Ray Train's workers hold what the
run asked for. Reported metrics go to the progress channel as they arrive (a Ray Train callback on
its controller), so the server shows curves live. The run's name and storage folder are the job's:
starting it again after a lost worker group, a server restart or a cancel finds the same run and
Ray Train resumes it from its latest checkpoint. The run's storage is the server's
(``workers/run_storage.py``): its checkpoints are found from any node, with no shared drive. An
uploaded dataset is laid out in each node's cache (fetched once a node) and its folder given to
the script as ``config["data"]``.
"""

from __future__ import annotations

import math
import os
import time
import traceback
import types
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.train.v2.api.callback import UserCallback

from workers.run_storage import filesystem
from workers.scene_cache import dataset_tree, node_cache

ENTRY = "train_loop_per_worker"

# What Ray Train starts beside a run that a lab farm has no use for, each a process of its own (a
# second of CPU or more to start): a watcher of cloud preemption (lab nodes are not preempted; a
# lost node is the farm's to handle, and Ray Train's restart on worker loss still runs) and the
# Prometheus metrics of runs (the farm records its own). Read by the run's controller.
QUIET_RAY_TRAIN = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0", "RAY_TRAIN_METRICS_ENABLED": "0"}


class TrainingFailed(RuntimeError):
    """The script could not run, or its run failed: the message is the traceback to show."""

    def __reduce__(self):  # Ray pickles the cause: keep the text
        return (TrainingFailed, (str(self),))


def load(script: str, source: str) -> Any:
    """The script's ``train_loop_per_worker``. The module is not registered in ``sys.modules``, so
    Ray pickles the function by value and its workers need no copy of the file."""
    module = types.ModuleType("farm_training_script")
    module.__file__ = script
    try:
        code = compile(source, script, "exec")
        exec(code, module.__dict__)
    except BaseException:
        raise TrainingFailed(traceback.format_exc(limit=-8)) from None
    entry = getattr(module, ENTRY, None)
    if not callable(entry):
        raise TrainingFailed(
            f"{script} defines no {ENTRY}(config): Ray Train runs that function on every worker"
        )
    return entry


def _plain(value: Any) -> Any:
    """A metric value as JSON can carry it (tensors and numpy scalars become floats)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


class Metrics(UserCallback):
    """Passes rank 0's reported metrics to the farm's progress channel as they arrive."""

    def __init__(self, channel: Any, key: str) -> None:
        self.channel = channel
        self.key = key

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        row = {k: _plain(v) for k, v in (metrics[0] if metrics else {}).items()}
        row["time"] = time.time()
        row["checkpoint"] = checkpoint is not None
        self.channel.metric.remote(self.key, row)


def with_dataset(entry: Any, dataset: dict[str, str], files: Any) -> Any:
    """``entry`` run with ``config["data"]``: the uploaded dataset's folder on the worker's node."""

    def train_loop_per_worker(config: dict[str, Any]) -> Any:
        def fetch(digest: str) -> bytes:
            return ray.get(files.dataset_file.remote(digest))

        return entry({**config, "data": str(dataset_tree(dataset, fetch, node_cache()))})

    return train_loop_per_worker


def run(
    spec: dict[str, Any],
    files: Any,
    name: str,
    channel: Any,
    key: str,
    dataset: dict[str, str] | None = None,
    placement: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Run the training script of ``spec`` (a :class:`pipelines.train.TrainSpec` as JSON) to its
    end, its storage the ``files`` actor's (a :class:`workers.run_storage.RunFiles`); returns the
    last metrics and the latest checkpoint's path. ``dataset`` (name → sha256) is an uploaded
    dataset; a ``data`` folder in ``spec`` is a path every node sees (a shared drive).
    ``placement``: custom resources each worker asks too (its lab's)."""
    entry = load(spec["script"], spec["source"])
    for variable, value in QUIET_RAY_TRAIN.items():
        os.environ.setdefault(variable, value)
    config = dict(spec["config"])
    if dataset is not None:
        entry = with_dataset(entry, dataset, files)
    elif spec.get("data"):
        config["data"] = spec["data"]
    gpus = float(spec["gpus_per_worker"])
    per_worker = {"CPU": float(spec["cpus_per_worker"])}
    if gpus:
        per_worker["GPU"] = gpus
    per_worker.update(placement or {})
    trainer = TorchTrainer(
        entry,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=int(spec["workers"]), use_gpu=gpus > 0, resources_per_worker=per_worker
        ),
        run_config=RunConfig(
            name=name,
            storage_path=".",
            storage_filesystem=filesystem(files),
            failure_config=FailureConfig(max_failures=int(spec["max_failures"])),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[Metrics(channel, key)],
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # Ray Train's TrainingFailedError carries the workers' tracebacks
        raise TrainingFailed(_story(error)) from None
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    metrics = {k: _plain(v) for k, v in (result.metrics or {}).items()}
    node = ray.get_runtime_context().get_node_id()
    return {"metrics": metrics, "checkpoint": checkpoint, "node": node}


def _story(error: BaseException) -> str:
    """The most telling text of a failed run: the workers' own tracebacks where Ray kept them."""
    text = str(error).strip()
    return text or "".join(traceback.format_exception(error)).strip()
