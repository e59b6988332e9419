"""The digits example through the farm against the same loop in plain PyTorch, on this machine.

One worker, one CPU: ``examples/train_digits.py`` with a wider model (hidden 2,048, batches of 16,
``EPOCHS`` epochs, a report and a checkpoint every ``EVERY`` epochs, about a minute of training),
three ways, alternating, ``ROUNDS`` each:

* plain PyTorch: the same data, model, batches, epochs and checkpoints in a loop in this process
  with one thread (what Ray gives a one-CPU worker): the baseline;
* plain Ray Train: the same script through ``TorchTrainer.fit()`` in this process, what a trainee
  would run by hand on a Ray cluster (its worker group's start included);
* the farm: ``farm.training.train_here`` (the store, the scheduler, the launcher task, Ray Train's
  controller and worker, the metrics channel, TensorBoard files), submission to the job's end.

Ray's own start is left out of every row and reported apart. For the farm, the time from
submission to the run's first step (a report's ``time`` less its ``run_seconds``) is reported
apart too, and the rest, from the first step to the job's end, against plain PyTorch: the farm's
overhead with the start excluded. Goal: ≤ 1.15 × plain.

Run: ``.venv/bin/python benchmarks/train.py`` (about eight minutes on two cores).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from train_digits import data  # noqa: E402

from farm.embedded.train import train_here  # noqa: E402
from farm.scheduler.connect import ensure_ray  # noqa: E402
from pipelines.train import TrainSpec  # noqa: E402

EPOCHS, EVERY, HIDDEN, BATCH = 900, 100, 2048, 16
ROUNDS = 2
CONFIG = {"epochs": EPOCHS, "report_every": EVERY, "hidden": HIDDEN, "batch_size": BATCH}


def plain_seconds(folder: Path) -> float:
    """The example's loop, one process, one thread, no Ray: the same checkpoints saved."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    torch.manual_seed(0)
    x, y, x_test, y_test = data()
    model = nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_of = nn.CrossEntropyLoss()
    mine = torch.arange(len(x))
    step = 0
    for epoch in range(EPOCHS):
        order = mine[torch.randperm(len(mine), generator=torch.Generator().manual_seed(epoch))]
        model.train()
        for start in range(0, len(order), BATCH):
            index = order[start : start + BATCH]
            optimizer.zero_grad()
            loss_of(model(x[index]), y[index]).backward()
            optimizer.step()
            step += 1
        if (epoch + 1) % EVERY and epoch + 1 < EPOCHS:
            continue
        model.eval()
        with torch.no_grad():
            (model(x_test).argmax(1) == y_test).float().mean().item()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
        torch.save(state, folder / f"state-{epoch}.pt")
    return time.perf_counter() - started


def ray_train_seconds(folder: Path, name: str) -> float:
    """The same script through Ray Train by hand: ``TorchTrainer.fit()`` from this process."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from workers.trainer import load

    entry = load("train_digits.py", (ROOT / "examples" / "train_digits.py").read_text())
    started = time.perf_counter()
    TorchTrainer(
        entry,
        train_loop_config=CONFIG,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=name, storage_path=str(folder), checkpoint_config=CheckpointConfig(num_to_keep=2)
        ),
    ).fit()
    return time.perf_counter() - started


def farm_seconds(home: Path) -> tuple[float, float, float]:
    """The example through the farm: (submit to the job's end, submit to first step, accuracy)."""
    os.environ["FARM_HOME"] = str(home)
    spec = TrainSpec(
        script="train_digits.py",
        source=(ROOT / "examples" / "train_digits.py").read_text(),
        workers=1,
        config=CONFIG,
    )
    started = time.time()
    summary = train_here(spec)
    ended = time.time()
    assert summary["state"] == "done", summary
    first = summary["metrics"][0]
    return (
        ended - started,
        first["time"] - first["run_seconds"] - started,
        summary["metrics"][-1]["accuracy"],
    )


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="farm-train-bench-"))
    began = time.perf_counter()
    ensure_ray("local")
    ray_start = time.perf_counter() - began
    plain, by_hand, farm, first_steps, accuracy = [], [], [], [], 0.0
    for round_ in range(ROUNDS):
        plain.append(plain_seconds(folder))
        by_hand.append(ray_train_seconds(folder, f"by-hand-{round_}"))
        seconds, first_step, accuracy = farm_seconds(folder / f"home-{round_}")
        farm.append(seconds)
        first_steps.append(first_step)
    best_plain, best_hand, best_farm = min(plain), min(by_hand), min(farm)
    start = first_steps[farm.index(best_farm)]
    print(
        f"\nThe digits example, 1 worker × 1 CPU, hidden {HIDDEN}, batches of {BATCH}, {EPOCHS} "
        f"epochs, a report and checkpoint every {EVERY}; best of {ROUNDS} alternating runs "
        f"(final accuracy {accuracy:.3f})\n"
    )
    print("| run | wall (s) | vs plain PyTorch |")
    print("|---|---:|---:|")
    print(f"| plain PyTorch loop, one thread | {best_plain:.1f} | 1.00 |")
    print(
        f"| plain Ray Train (`TorchTrainer.fit()` by hand) | {best_hand:.1f} | "
        f"{best_hand / best_plain:.2f} |"
    )
    print(
        f"| farm train, submission to the job's end | {best_farm:.1f} | "
        f"{best_farm / best_plain:.2f} |"
    )
    print(
        f"| … of which submission to the run's first step | {start:.1f} | "
        f"{start / best_plain:.2f} |"
    )
    print(
        f"| … and the run's first step to the job's end | {best_farm - start:.1f} | "
        f"**{(best_farm - start) / best_plain:.2f}** |"
    )
    print(
        f"\nRay's start, left out above: {ray_start:.1f} s. Submission to first step, every "
        f"farm run: {', '.join(f'{s:.1f}' for s in first_steps)} s. Goal: ≤ 1.15 × plain, "
        "the start excluded."
    )


if __name__ == "__main__":
    main()
