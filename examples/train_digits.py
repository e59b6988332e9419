"""A digits classifier for the Work 4.0 lab: scikit-learn's 8×8 handwritten digits (shipped inside
scikit-learn, no download), a small MLP, trained data-parallel with Ray Train.

It is written the way Ray Train's own guides write training functions, so what a trainee learns
here works on any Ray cluster: ``train_loop_per_worker(config)``, ``prepare_model`` for DDP, a
checkpoint every epoch reported with ``ray.train.report``, and a resume from
``ray.train.get_checkpoint()`` that carries on the epoch and step counters.

    farm train examples/train_digits.py --workers 2 --config epochs=30 --config lr=0.05
    python examples/train_digits.py digits/ && farm data put digits/   # the data, uploaded

config: data (a folder with digits.npz, which ``--data`` gives: a folder, or ``sha256:…`` from
``farm data put``; without it, scikit-learn's copy), epochs (20), lr (0.05), batch_size (32),
hidden (128), seed (0), report_every (1 epoch), seconds_per_epoch (0: as fast as it goes; more
slows each epoch, to watch a run live).
Each report carries ``run_seconds``: the time since this worker group took its first step.
"""

import os
import tempfile
import time

import numpy as np
import ray.train
import ray.train.torch
import torch
from sklearn.datasets import load_digits
from torch import nn


def data(folder: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 1,797 digits, scaled to [0, 1]; the same 1,500 for training and 297 for testing on
    every worker and every run. From ``folder``'s digits.npz (arrays ``data``, 8×8 pixels 0-16 a
    row, and ``target``) when the run has data, else scikit-learn's own copy."""
    if folder:
        with np.load(os.path.join(folder, "digits.npz")) as saved:
            pixels, target = saved["data"], saved["target"]
    else:
        digits = load_digits()
        pixels, target = digits.data, digits.target
    x = torch.tensor(pixels / 16.0, dtype=torch.float32)
    y = torch.tensor(target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[order[:1500]], y[order[:1500]], x[order[1500:]], y[order[1500:]]


def train_loop_per_worker(config: dict) -> None:
    epochs = int(config.get("epochs", 20))
    batch = int(config.get("batch_size", 32))
    seed = int(config.get("seed", 0))
    pause = float(config.get("seconds_per_epoch", 0))
    every = int(config.get("report_every", 1))
    torch.manual_seed(seed)
    x, y, x_test, y_test = data(config.get("data"))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    usable = len(x) // world * world  # equal shards: DDP needs every worker to take as many steps
    mine = torch.arange(rank, usable, world)

    model = nn.Sequential(nn.Linear(64, int(config.get("hidden", 128))), nn.ReLU())
    model.append(nn.Linear(int(config.get("hidden", 128)), 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=float(config.get("lr", 0.05)), momentum=0.9)
    first_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a resumed run: go on from where the last checkpoint was
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, step = state["epoch"] + 1, state["step"]
    model = ray.train.torch.prepare_model(model)
    loss_of = nn.CrossEntropyLoss()

    began = time.time()
    for epoch in range(first_epoch, epochs):
        started = time.monotonic()
        shuffle = torch.Generator().manual_seed(seed * 10_000 + epoch)
        order = mine[torch.randperm(len(mine), generator=shuffle)]
        model.train()
        total, seen = 0.0, 0
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            optimizer.zero_grad()
            loss = loss_of(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
            seen += len(index)
            step += 1
        time.sleep(max(0.0, pause - (time.monotonic() - started)))
        if (epoch + 1) % every and epoch + 1 < epochs:
            continue  # report (and checkpoint) every `every` epochs, and at the end
        model.eval()
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        metrics = {"epoch": epoch, "step": step, "loss": total / seen, "accuracy": accuracy}
        metrics["run_seconds"] = time.time() - began
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:  # one copy of the weights: DDP keeps every worker's the same
                plain = model.module if hasattr(model, "module") else model
                state = {
                    "model": plain.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "step": step,
                }
                torch.save(state, os.path.join(folder, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)


if __name__ == "__main__":  # write scikit-learn's digits as a dataset folder: digits.npz
    import sys

    os.makedirs(sys.argv[1], exist_ok=True)
    digits = load_digits()
    np.savez(os.path.join(sys.argv[1], "digits.npz"), data=digits.data, target=digits.target)
