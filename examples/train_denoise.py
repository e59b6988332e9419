"""A denoiser for the Work 4.0 lab, trained on frames the Film Lab rendered: the example shot at a
few samples a pixel (noisy) and at many (clean), rendered by the farm itself. One farm, both labs.
A small residual CNN learns the noise to subtract, on random patches, data-parallel with Ray Train.

It follows Ray Train's own conventions like ``train_digits.py``: ``train_loop_per_worker(config)``,
``prepare_model`` for DDP, each worker training on its share of every epoch's patches, a checkpoint
with every report, and a resume from ``ray.train.get_checkpoint()`` that carries on the epoch and
step counters.

    .venv/bin/python examples/make_denoise_data.py data/denoise     # the frames, ~2 minutes
    farm train examples/train_denoise.py --workers 2 --config data=$PWD/data/denoise

config: data (required: the absolute path of a folder of ``noisy_####.exr`` and ``clean_####.exr``
of the same frames, which every worker reads), epochs (16), lr (0.001, Adam), batch_size (8),
patch (32 pixels square, at most the frame's size), patches_per_epoch (512, shared among the
workers), channels (32), layers (5), holdout_every (6: every 6th frame, or the last when there are
fewer, is never trained on; the PSNRs are measured on those frames), seed (0). The defaults learn
in about a minute on two CPU cores (160×90 frames: from ~19 dB to ~28 dB); lr 0.004 and up can
stall the net at its input.

Pixels are compared as a viewer sees them: linear RGB clipped to [0, 1] and raised to 1/2.2, so a
firefly costs what a white pixel does, not what its value of 30 would. Each epoch reports ``loss``
(the training MSE), ``psnr`` (the model's output against the clean frames, dB), ``psnr_noisy`` (the
noisy frames' own PSNR: the baseline the model must beat), ``epoch`` and ``step``.
"""

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import OpenImageIO as oiio
import ray.train
import ray.train.torch
import torch
from torch import nn

FRAME = re.compile(r"noisy_(\d+)\.exr")


def display(path: Path) -> torch.Tensor:
    """A frame's RGB as a viewer shows it, channels first."""
    image = oiio.ImageInput.open(str(path))
    if image is None:
        raise ValueError(f"cannot read {path}: {oiio.geterror()}")
    pixels = image.read_image(0, 0, 0, 3, oiio.FLOAT)
    image.close()
    return torch.from_numpy(np.clip(pixels, 0.0, 1.0) ** (1 / 2.2)).permute(2, 0, 1)


def frames(folder: Path, holdout_every: int) -> tuple[torch.Tensor, ...]:
    """The pairs of ``folder`` as (noisy, clean) for training, then (noisy, clean) held out; each
    a tensor of frames × RGB × height × width."""
    if holdout_every < 2:
        raise ValueError("holdout_every must be 2 or more (1 would hold every frame out)")
    if not folder.is_absolute():
        raise ValueError(
            f"config data must be an absolute path (workers do not run in yours): {folder}"
        )
    if not folder.is_dir():
        raise ValueError(
            f"config data {folder} is not a folder: render one with make_denoise_data.py"
        )
    numbers = sorted(m[1] for p in folder.iterdir() if (m := FRAME.fullmatch(p.name)))
    numbers = [n for n in numbers if (folder / f"clean_{n}.exr").is_file()]
    if len(numbers) < 2:
        raise ValueError(
            f"{folder} has {len(numbers)} pairs of noisy_####.exr and clean_####.exr; "
            "training needs 2 or more (one is held out)"
        )
    noisy = [display(folder / f"noisy_{n}.exr") for n in numbers]
    clean = [display(folder / f"clean_{n}.exr") for n in numbers]
    if len({frame.shape for frame in noisy + clean}) > 1:
        raise ValueError(f"the frames of {folder} differ in size: render every one alike")
    held = set(range(holdout_every - 1, len(numbers), holdout_every)) or {len(numbers) - 1}
    kept = [i for i in range(len(numbers)) if i not in held]
    parts = (kept, sorted(held))
    return tuple(
        torch.stack([pairs[i] for i in part]) for part in parts for pairs in (noisy, clean)
    )


class Denoiser(nn.Module):
    """Predicts the noise of a frame and subtracts it. The last layer starts at zero, so an
    untrained model returns its input: every decibel above the noisy frame's is learnt."""

    def __init__(self, channels: int, layers: int) -> None:
        super().__init__()
        conv = {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"}
        body: list[nn.Module] = [nn.Conv2d(3, channels, **conv), nn.ReLU()]
        for _ in range(layers - 2):
            body += [nn.Conv2d(channels, channels, **conv), nn.ReLU()]
        last = nn.Conv2d(channels, 3, **conv)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.noise = nn.Sequential(*body, last)

    def forward(self, noisy: torch.Tensor) -> torch.Tensor:
        return noisy - self.noise(noisy)


def crops(stack: torch.Tensor, at: torch.Tensor, size: int) -> torch.Tensor:
    """Square patches of ``size`` pixels; ``at`` holds the frame, top and left of each."""
    which, top, left = at
    offsets = torch.arange(size)
    rows = (top[:, None] + offsets)[:, None, :, None]
    cols = (left[:, None] + offsets)[:, None, None, :]
    return stack[which[:, None, None, None], torch.arange(3)[:, None, None], rows, cols]


def psnr(image: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB, over every pixel of every frame, for a peak of 1."""
    return 10 * torch.log10(1 / torch.mean((image.clamp(0, 1) - reference) ** 2)).item()


def train_loop_per_worker(config: dict) -> None:
    epochs = int(config.get("epochs", 16))
    batch = int(config.get("batch_size", 8))
    per_epoch = int(config.get("patches_per_epoch", 512))
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    if "data" not in config:
        raise ValueError(
            "give the frames' folder: --config data=/absolute/path (make_denoise_data.py)"
        )
    noisy, clean, noisy_test, clean_test = frames(
        Path(config["data"]), int(config.get("holdout_every", 6))
    )
    height, width = noisy.shape[2:]
    size = min(int(config.get("patch", 32)), height, width)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    mine = torch.arange(rank, per_epoch // world * world, world)  # equal shards for DDP

    model = Denoiser(int(config.get("channels", 32)), int(config.get("layers", 5)))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(config.get("lr", 0.001)))
    first_epoch, step = 0, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # a resumed run: go on from where the last checkpoint was
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, "state.pt"))
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, step = state["epoch"] + 1, state["step"]
    model = ray.train.torch.prepare_model(model)
    psnr_noisy = psnr(noisy_test, clean_test)

    for epoch in range(first_epoch, epochs):
        # Every worker draws the same patches for an epoch and trains on its own share of them.
        draw = torch.Generator().manual_seed(seed * 10_000 + epoch)
        ends = (len(noisy), height - size + 1, width - size + 1)  # frame, top, left
        patches = torch.stack([torch.randint(n, (per_epoch,), generator=draw) for n in ends], 1)
        patches = patches[mine]
        model.train()
        total = 0.0
        for start in range(0, len(patches), batch):
            at = patches[start : start + batch].T
            optimizer.zero_grad()
            loss = torch.mean((model(crops(noisy, at, size)) - crops(clean, at, size)) ** 2)
            loss.backward()
            optimizer.step()
            total += loss.item() * at.shape[1]
            step += 1
        model.eval()
        with torch.no_grad():
            metrics = {"epoch": epoch, "step": step, "loss": total / len(patches)}
            metrics |= {"psnr": psnr(model(noisy_test), clean_test), "psnr_noisy": psnr_noisy}
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
