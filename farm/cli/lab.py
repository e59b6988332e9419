"""The ``farm`` commands of lab mode: the server, and the client side of it (submit, watch, control
jobs, nodes, login). Registered on the ``farm`` group by :mod:`farm.cli.main`."""

from __future__ import annotations

import json
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm.cli.client import Client, config_file
from farm.cli.client import login as save_login
from farm.cli.curves import describe
from farm.cli.options import echo_json, json_option, render_options
from farm.cli.views import Farm, connect, remote
from farm.config import parse_memory
from farm.errors import FarmError, RenderFailed
from pipelines.render import user_path

POLL = 0.5  # seconds between reads of a watched job
FINISHED = ("done", "failed", "cancelled")


def submission(client: Client, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """The API body for the render options as the CLI parsed them. Paths are made absolute here so
    the server reads and writes what the user named (on storage both can see); with ``--upload``
    (the default for a server on another machine) the scene and every file it uses travel to the
    server and a relative output lands in the server's outputs folder. Returns the body and what
    was sent (only what the server lacked)."""
    body = {k: v for k, v in kwargs.items() if v is not None}
    body["format"] = body.pop("fmt", None)
    scene = user_path("scene", body["scene"])
    upload = body.pop("upload", None)
    sent: dict[str, int] = {}
    if client.uploads(upload):
        body.update(client.upload_shot(scene))
        sent = body.pop("sent")
    else:
        body["scene"] = str(scene.absolute())
        if body.get("output"):
            body["output"] = str(user_path("output", body["output"]).absolute())
    body["after"] = list(body.get("after", ()))
    return {k: v for k, v in body.items() if v is not None}, sent


def submit_render(kwargs: dict[str, Any]) -> tuple[int, dict[str, int]]:
    """The job's id, and what was uploaded for it."""
    client = remote("farm submit render").client
    body, sent = submission(client, kwargs)
    return client.post("/jobs/render", body)["id"], sent


def lab_options(function: Any) -> Any:
    """What a job asks of the farm besides its own spec."""
    for option in reversed(
        [
            click.option(
                "--priority",
                type=int,
                default=50,
                show_default=True,
                help="0-100; higher runs first.",
            ),
            click.option(
                "--after",
                type=int,
                multiple=True,
                help="Start only once this job is done (repeatable).",
            ),
            click.option("--lab", help="Run only on this lab's nodes, e.g. film or ml."),
            click.option(
                "--memory",
                callback=lambda _, __, value: parse_memory(value) if value else None,
                help="Memory each slot (render) or task (probe) reserves, e.g. 8G.",
            ),
        ]
    ):
        function = option(function)
    return function


@click.group()
def submit() -> None:
    """Send a job to the farm server and print its id at once."""


@submit.command("render")
@click.argument("scene")
@render_options
@lab_options
def submit_render_command(scene: str, **kwargs: Any) -> None:
    """Queue a render of SCENE on the server (the options of `farm render`)."""
    as_json = kwargs.pop("as_json")
    job, sent = submit_render({"scene": scene, **kwargs})
    if as_json:
        echo_json({"id": job, "state": "queued", **({"sent": sent} if sent else {})})
        return
    if sent:
        click.echo(
            f"sent {sent['files']} of the shot's {sent['of']} files "
            f"({sent['bytes'] / 1e6:.1f} MB); the server had the rest"
        )
    click.echo(f"job {job} queued; follow it with: farm watch {job}")


@submit.command("probe")
@click.option("--tasks", type=int, default=1, show_default=True, help="How many tasks.")
@click.option("--seconds", type=float, default=0.0, show_default=True, help="Each task's length.")
@click.option("--cpus", type=float, default=1.0, show_default=True, help="CPUs each task holds.")
@click.option("--gpus", type=float, default=0.0, show_default=True, help="GPUs each task holds.")
@click.option(
    "--fail-first", type=int, default=0, show_default=True, help="Attempts of each task that fail."
)
@click.option("--retries", type=int, default=2, show_default=True, help="Retries of a task.")
@lab_options
@json_option
def submit_probe(as_json: bool, lab: str | None, **kwargs: Any) -> None:
    """Queue a probe: tasks that hold a slot for a while and report the node that ran them."""
    if lab is not None:
        raise FarmError("--lab is for render and training jobs; a probe runs anywhere")
    kwargs["after"] = list(kwargs["after"])
    body = {k: v for k, v in kwargs.items() if v is not None}
    job = remote("farm submit probe").client.post("/jobs/probe", body)["id"]
    if as_json:
        echo_json({"id": job, "state": "queued"})
    else:
        click.echo(f"job {job} queued; follow it with: farm watch {job}")


def watch_job(farm: Farm, job: int, as_json: bool) -> dict[str, Any]:
    """Show a job live until it finishes; returns its last status."""
    console = Console(stderr=True)
    seen = 0
    info = farm.status(job)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks  {task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with progress:
        bar = progress.add_task(f"job {job} {info['name']}", total=None, detail="")
        while True:
            for event in farm.events(job, seen):
                seen = event["id"]
                if event["kind"] in ("failed", "retry") and event["task"]:
                    word = "retrying" if event["kind"] == "retry" else "failed"
                    console.print(
                        f"[yellow]{word} {event['task']}[/]: {escape(event['message'])}",
                        highlight=False,
                    )
                elif event["kind"] == "metric":  # a training run's report
                    console.print(describe(json.loads(event["message"])), highlight=False)
                elif event["kind"] == "held" and not event["task"]:  # a dependency, a quota
                    console.print(f"[yellow]held[/]: {escape(event['message'])}", highlight=False)
                elif event["kind"] == "written" and not console.is_terminal:
                    console.print(f"wrote {event['message']}", highlight=False)
            counts = info["tasks"]
            total = sum(counts.values())
            detail = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s != "done")
            progress.update(
                bar,
                total=total or None,
                completed=counts["done"],
                detail=f"{info['state']}; {detail}" if detail else info["state"],
            )
            if info["state"] in FINISHED:
                break
            time.sleep(POLL)
            info = farm.status(job)
    message = f": {info['message']}" if info["message"] else ""
    colour = "green" if info["state"] == "done" else "red"
    console.print(f"job {job}: [{colour}]{info['state']}[/]{escape(message)}", highlight=False)
    if as_json:
        echo_json(info)
    return info


@click.command()
@click.argument("job", type=int)
@json_option
def watch(job: int, as_json: bool) -> None:
    """Follow JOB live until it finishes; exit 0 if it is done, 1 if not."""
    info = watch_job(connect(), job, as_json)
    if info["state"] != "done":
        raise RenderFailed(f"job {job} is {info['state']}")


def _control(verb: str, doc: str) -> click.Command:
    @click.argument("job", type=int)
    @click.option("--task", "task", help="Only this task, e.g. f12 or f12.t3.")
    @json_option
    def command(job: int, task: str | None, as_json: bool) -> None:
        result = connect().change(verb, job, task)
        if as_json:
            echo_json({"id": job, "result": result})
        else:
            click.echo(f"job {job}: {result}")

    command.__doc__ = doc
    return click.command(verb)(command)


CONTROLS = [
    _control("cancel", "Cancel JOB (or one --task): queued work never starts, running work stops."),
    _control(
        "pause", "Pause JOB (or one queued --task): queued work waits; running work finishes."
    ),
    _control("resume", "Resume a paused JOB (or one --task)."),
    _control(
        "retry",
        "Queue JOB's failed and cancelled tasks again (or one --task, even a done one).",
    ),
]


@click.command()
@json_option
def nodes(as_json: bool) -> None:
    """The Ray nodes of the lab: CPUs, GPUs, labs, and what runs on them."""
    rows = remote("farm nodes").client.get("/nodes")
    if as_json:
        echo_json(rows)
        return
    table = Table("node", "host", "state", "CPUs", "GPUs", "labs", "running", "warm slots")
    for row in rows:
        table.add_row(
            row["id"][:12],
            row["host"],
            "[green]alive[/]" if row["alive"] else "[red]gone[/]",
            f"{row['cpus']:g}",
            f"{row['gpus']:g}",
            ", ".join(row["labs"]) or "-",
            str(row["running"]),
            ", ".join(row["slots"]) or "-",
        )
    Console().print(table)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("farm-data"),
    show_default=True,
    help="Where the store (farm.db) lives.",
)
@click.option("--db", help="Store URL instead, e.g. postgresql+psycopg://farm@db-host/farm.")
@click.option(
    "--ray-address",
    default="auto",
    show_default=True,
    help="The Ray cluster to join: auto (this machine's, else a local one), an address, or local.",
)
@click.option(
    "--ray-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cluster's Ray token (default: $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token).",
)
@click.option(
    "--half-life",
    type=click.FloatRange(min=0.001),
    default=7.0,
    show_default=True,
    help="Fair share: days after which a user's past usage counts half.",
)
def server(
    host: str,
    port: int,
    data_dir: Path,
    db: str | None,
    ray_address: str,
    ray_token_file: Path | None,
    half_life: float,
) -> None:
    """Run the farm server: the queue, the scheduler and the API, on the head node."""
    from farm.api.server import serve  # the server's imports are the client's business only here

    serve(host, port, data_dir, db, ray_address, half_life * 86_400, ray_token_file)


@click.command()
@click.argument("url")
@click.option("--token", help="Your API token (default: $FARM_TOKEN); saved for later commands.")
@json_option
def login(url: str, token: str | None, as_json: bool) -> None:
    """Use the farm server at URL for every later command (saved in ~/.config/farm)."""
    answer = save_login(url, token)
    if as_json:
        echo_json(answer)
    else:
        click.echo(
            f"using the farm server at {answer['url']} (farm {answer['version']}) as "
            f"{answer['user']} ({answer['role']})"
        )


@click.command()
@json_option
def logout(as_json: bool) -> None:
    """Forget the saved server: commands run the embedded farm again (unless FARM_URL is set)."""
    config_file().unlink(missing_ok=True)
    if as_json:
        echo_json({"url": None})
    else:
        click.echo("no farm server saved; commands run the embedded farm")


@click.command()
@click.argument("job", type=int)
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path), default=".")
@json_option
def fetch(job: int, dest: Path, as_json: bool) -> None:
    """Download what JOB has written on the server into DEST (default: here): a render's frames;
    a comp's frames, previews, contact sheet and movie; a training run's checkpoints and
    TensorBoard files."""
    client = remote("farm fetch").client
    dest.mkdir(parents=True, exist_ok=True)
    fetched = []
    for output in client.get(f"/jobs/{job}/outputs"):
        name = PurePosixPath(output["name"])
        if name.is_absolute() or ".." in name.parts:  # the server's word, kept inside DEST
            raise FarmError(f"the server named an output {output['name'][:200]!r} outside {dest}")
        target = dest.joinpath(*name.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download(f"/jobs/{job}/outputs/{quote(output['name'])}", target)
        fetched.append(str(target))
    if as_json:
        echo_json({"id": job, "files": fetched})
    else:
        click.echo(f"job {job}: {len(fetched)} file(s) in {dest}/")


COMMANDS = [submit, watch, *CONTROLS, fetch, nodes, server, login, logout]
