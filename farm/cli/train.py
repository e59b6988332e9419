"""``farm train`` (here, or on the server when one is configured), ``farm submit train``,
``farm data put`` and ``farm metrics``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from farm.cli.client import Client, server_url
from farm.cli.curves import describe, plot
from farm.cli.lab import lab_options, submit, watch_job
from farm.cli.options import json_option
from farm.cli.views import connect, remote
from farm.errors import FarmError, RenderFailed
from farm.store.scenes import PREFIX
from pipelines import train as pipeline


def train_options(function: Any) -> Any:
    """What a training run asks: its workers and what each holds, a time limit, its config."""
    for option in reversed(
        [
            click.option(
                "--workers", type=int, default=1, show_default=True, help="Ray Train workers."
            ),
            click.option("--cpus-per-worker", type=float, default=1.0, show_default=True),
            click.option("--gpus-per-worker", type=float, default=0.0, show_default=True),
            click.option(
                "--max-hours", type=float, help="The run's longest time (also what a quota books)."
            ),
            click.option(
                "--config",
                "config",
                multiple=True,
                help="key=value for train_loop_per_worker(config); repeatable. Values are JSON where they parse.",
            ),
            click.option(
                "--data",
                help="The run's data, given to the script as config['data']: a folder (uploaded "
                "when the server is on another machine), or sha256:… from farm data put.",
            ),
            click.option(
                "--max-failures",
                type=int,
                default=2,
                show_default=True,
                help="Restarts from the latest checkpoint after a lost worker, before the run fails.",
            ),
        ]
    ):
        function = option(function)
    return function


def _data(data: str | None, client: Client | None) -> str | None:
    """What a run names as its data: an uploaded dataset's ``sha256:…``, or a folder's absolute
    path where the nodes see it (this machine's, or the server's when it runs here)."""
    if data and data.startswith(PREFIX) and client is None:
        raise FarmError(
            f"--data {data[:80]}: an uploaded dataset lives on a farm server (farm login); "
            "here, give its folder"
        )
    if not data or data.startswith(PREFIX):
        return data
    folder = Path(data)
    if not folder.is_dir():
        raise FarmError(f"--data {data}: no such folder (or give sha256:… from farm data put)")
    if client is not None and client.uploads(None):
        return client.upload_dataset(folder)["data"]
    return str(folder.absolute())


def _spec(script: Path, kwargs: dict[str, Any], client: Client | None = None) -> pipeline.TrainSpec:
    return pipeline.validate(
        pipeline.TrainSpec(
            script=script.name,
            source=pipeline.read_source(script),
            workers=kwargs["workers"],
            cpus_per_worker=kwargs["cpus_per_worker"],
            gpus_per_worker=kwargs["gpus_per_worker"],
            max_hours=kwargs["max_hours"],
            config=pipeline.parse_config(kwargs["config"]),
            max_failures=kwargs["max_failures"],
            data=_data(kwargs["data"], client),
        )
    )


def _submit(script: Path, kwargs: dict[str, Any]) -> int:
    client = remote("farm submit train").client
    spec = _spec(script, kwargs, client)
    body = {**spec.as_json(), "priority": kwargs["priority"], "after": list(kwargs["after"])}
    if kwargs.get("lab"):
        body["lab"] = kwargs["lab"]
    return client.post("/jobs/train", body)["id"]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what anything in this process writes to stdout (file descriptor 1) to stderr."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _summary(job: int, info: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": job, "state": info["state"], "message": info["message"], "metrics": rows}


@click.command()
@click.argument("script", required=False, type=click.Path(dir_okay=False, path_type=Path))
@train_options
@click.option(
    "--priority", type=int, default=50, show_default=True, help="0-100; higher runs first."
)
@click.option("--resume", type=int, help="Continue stopped job RESUME from its latest checkpoint.")
@json_option
def train(script: Path | None, resume: int | None, as_json: bool, **kwargs: Any) -> None:
    """Train with SCRIPT (defines train_loop_per_worker(config), Ray Train's way) on Ray Train.

    \b
    Examples:
      farm train examples/train_digits.py --workers 2 --config epochs=20
      farm train --resume 12
    With a farm server configured, the run is submitted there and followed here.
    """
    if (script is None) == (resume is None):
        raise FarmError("give SCRIPT, or --resume JOB to continue a stopped run")
    console = Console(stderr=True)
    if server_url():
        farm = connect()
        if resume is not None:
            farm.change("retry", resume, None)
            job = resume
        else:
            assert script is not None
            job = _submit(script, {**kwargs, "after": (), "lab": None})
            console.print(f"job {job} submitted to {server_url()}", highlight=False)
        info = watch_job(farm, job, as_json=False)
        summary = _summary(job, info, farm.metrics(job))
    else:
        from farm.embedded.train import train_here

        spec = _spec(script, kwargs) if script is not None else None
        with _stdout_to_stderr():  # Ray's own notices (a worker died…) must not break --json
            summary = train_here(
                spec,
                resume,
                lambda row: console.print(describe(row), highlight=False),
                kwargs["priority"],
            )
        console.print(f"job {summary['id']}: {summary['state']}", highlight=False)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    if summary["state"] != "done":
        raise RenderFailed(f"job {summary['id']} {summary['state']}: see farm logs {summary['id']}")


@submit.command("train")
@click.argument("script", type=click.Path(dir_okay=False, path_type=Path))
@train_options
@lab_options
@json_option
def submit_train(script: Path, as_json: bool, memory: int | None, **kwargs: Any) -> None:
    """Queue a training run with SCRIPT on the farm server; prints its id at once."""
    if memory:
        raise FarmError("--memory is not supported for training runs yet")
    job = _submit(script, kwargs)
    if as_json:
        click.echo(json.dumps({"id": job, "state": "queued"}))
    else:
        click.echo(f"job {job} queued; follow it with: farm watch {job}")


@click.command()
@click.argument("job", type=int)
@click.option(
    "--plot",
    "plot_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw the curves into this PNG.",
)
@json_option
def metrics(job: int, plot_to: Path | None, as_json: bool) -> None:
    """The metrics training job JOB reported, in order."""
    rows = connect().metrics(job)
    if plot_to is not None:
        drawn = plot(rows, plot_to, f"job {job}")
        if not as_json:
            click.echo(f"plot: {plot_to} ({', '.join(drawn)})")
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo(f"job {job} has reported no metrics yet")
    else:
        for row in rows:
            click.echo(describe(row))


@click.group()
def data() -> None:
    """Datasets on the farm server, for training runs on nodes that share no drive with you."""


@data.command("put")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@json_option
def data_put(folder: Path, as_json: bool) -> None:
    """Upload FOLDER (only the files the server lacks) and print the name a run gives as --data.

    \b
    Example:
      farm data put ./digits     # sha256:…
      farm submit train train.py --data sha256:…
    """
    put = remote("farm data put").client.upload_dataset(folder)
    if as_json:
        click.echo(json.dumps(put))
    else:
        sent = put["sent"]
        click.echo(
            f"{put['data']}  ({put['files']} files, {put['bytes']:,} bytes; "
            f"sent {sent['files']} files, {sent['bytes']:,} bytes)"
        )


COMMANDS = [train, metrics, data]
