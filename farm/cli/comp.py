"""``farm comp`` (here, or on the server when one is configured) and ``farm submit comp``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from farm.cli import options
from farm.cli.client import Client, server_url
from farm.cli.lab import submit, watch_job
from farm.cli.options import json_option
from farm.cli.views import connect, remote
from farm.errors import FarmError, RenderFailed
from pipelines import comp as pipeline

spec_argument = click.argument("spec_file", type=click.Path(dir_okay=False, path_type=Path))
priority_option = click.option(
    "--priority", type=int, default=50, show_default=True, help="0-100; higher runs first."
)
after_option = click.option(
    "--after", type=int, multiple=True, help="Start once this job is done (repeatable)."
)


upload_option = options.upload_option("the inputs found here (the other paths are the server's)")


def read_spec(path: Path, upload: bool | None = None) -> dict[str, Any]:
    """The spec file's tables, for this machine or the server. Here, or without uploading,
    relative paths are made absolute from here. Uploading (by default when the server is on
    another machine), an input found here is uploaded (:func:`upload_inputs`), and the other
    paths are the server's: relative ones in your folder there."""
    data = pipeline.read_toml(path)
    client = remote("farm comp").client if server_url() else None
    if client is None and upload:
        raise FarmError("--upload sends the inputs to a farm server, and none is configured")
    if client is None or not client.uploads(upload):
        return pipeline.absolute_paths(data, Path.cwd())
    return upload_inputs(data, client)


def upload_inputs(data: dict[str, Any], client: Client) -> dict[str, Any]:
    """The spec with each input whose files are here (a still, or a ``####`` sequence's frames)
    uploaded once by content, its path then ``sha256:<dataset>/<its file name>``."""
    inputs = data.get("inputs")
    if not isinstance(inputs, dict):
        return data  # the server names what is wrong
    moved = dict(inputs)
    for name, table in inputs.items():
        if not isinstance(table, dict) or not isinstance(table.get("path"), str):
            continue
        here = Path(table["path"]).expanduser()
        found = pipeline.files_of(str(here if here.is_absolute() else Path.cwd() / here))
        if found:
            dataset = client.upload_named({p.name: str(p) for p in found})
            moved[name] = {**table, "path": f"{dataset['data']}/{here.name}"}
    return {**data, "inputs": moved}


def submit_comp(data: dict[str, Any], after: list[int], priority: int, lab: str | None) -> int:
    body: dict[str, Any] = {"spec": data, "after": after, "priority": priority}
    if lab:
        body["lab"] = lab
    return remote("farm submit comp").client.post("/jobs/comp", body)["id"]


def run_comp(data: dict[str, Any], after: list[int], priority: int) -> dict[str, Any]:
    """Run a comp to its end, on the server when one is configured, else here; its summary."""
    console = Console(stderr=True)
    if server_url():
        job = submit_comp(data, after, priority, None)
        console.print(f"comp job {job} submitted to {server_url()}", highlight=False)
        info = watch_job(connect(), job, as_json=False)
        return {k: info.get(k) for k in ("id", "state", "message", "outputs")}
    from farm.embedded.comp import check_here, comp_here  # Ray loads only to comp here

    spec = check_here(data, after)
    progress = Progress(
        TextColumn("[bold]comp"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("tasks"),
        TimeElapsedColumn(),
        console=console,
    )
    bar = progress.add_task("comp", total=None)

    def show(event: Any) -> None:
        if event.kind == "planned":
            progress.update(bar, total=len(pipeline.expand(event.plan)))
        elif event.kind == "done":
            progress.advance(bar)
        elif event.kind in ("retry", "failed"):
            console.print(f"[yellow]{event.kind} {event.key}[/]: {event.message}", highlight=False)

    with progress:
        summary = comp_here(spec, after, priority, show)
    colour = "green" if summary["state"] == "done" else "red"
    message = f": {summary['message']}" if summary["message"] else ""
    console.print(f"comp job {summary['id']}: [{colour}]{summary['state']}[/]{message}")
    return summary


def finish(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    if summary["state"] != "done":
        raise RenderFailed(f"job {summary['id']} {summary['state']}: see farm logs {summary['id']}")


@click.command()
@spec_argument
@after_option
@priority_option
@upload_option
@json_option
def comp(
    spec_file: Path, after: tuple[int, ...], priority: int, upload: bool | None, as_json: bool
) -> None:
    """Composite with SPEC_FILE (TOML): each frame a task, then a contact sheet and a movie.

    \b
    Examples:
      farm comp examples/comp_shot.toml --after 12   # once render job 12 is done
      farm comp plates_over_stills.toml               # inputs all on disk already
    With a farm server configured, the comp is submitted there and followed here.
    """
    finish(run_comp(read_spec(spec_file, upload), list(after), priority), as_json)


@submit.command("comp")
@spec_argument
@after_option
@priority_option
@click.option("--lab", help="Run only on this lab's nodes, e.g. film.")
@upload_option
@json_option
def submit_comp_command(
    spec_file: Path,
    after: tuple[int, ...],
    priority: int,
    lab: str | None,
    upload: bool | None,
    as_json: bool,
) -> None:
    """Queue a comp with SPEC_FILE on the farm server; prints its id at once."""
    job = submit_comp(read_spec(spec_file, upload), list(after), priority, lab)
    if as_json:
        click.echo(json.dumps({"id": job, "state": "queued"}))
    else:
        click.echo(f"job {job} queued; follow it with: farm watch {job}")


def check_spec(path: Path | None, upload: bool | None = None) -> dict[str, Any] | None:
    """A ``--comp`` spec read before the render starts, so a typo costs no render."""
    if path is None:
        return None
    data = read_spec(path, upload)
    if not server_url():
        pipeline.parse(data)  # the server checks it on submission
    return data


COMMANDS = [comp]
