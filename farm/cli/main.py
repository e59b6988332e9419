"""The ``farm`` command. Bad input gets one line on stderr and exit code 2; nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm import __version__
from farm.cli.admin import COMMANDS as ADMIN_COMMANDS
from farm.cli.client import server_url
from farm.cli.comp import COMMANDS as COMP_COMMANDS
from farm.cli.comp import check_spec, finish, run_comp, submit_comp
from farm.cli.lab import COMMANDS, FINISHED, POLL, submit_render, watch_job
from farm.cli.node import node
from farm.cli.options import render_options
from farm.cli.train import COMMANDS as TRAIN_COMMANDS
from farm.cli.views import Farm, RemoteFarm, connect
from farm.config import SlotLayout, farm_home, find_blender, store_url
from farm.errors import FarmError, RenderFailed
from farm.frames import OutputPattern
from pipelines.render import RenderRequest, validate

if TYPE_CHECKING:
    from farm.embedded import render as embedded

EXAMPLE_BUILDER = Path(__file__).resolve().parents[2] / "examples" / "build_shot.py"


def _render(scene: str, kwargs: dict[str, Any]) -> None:
    comp = check_spec(kwargs.pop("comp", None), kwargs.get("upload"))
    as_json = kwargs.pop("as_json")
    if server_url():  # lab mode: the server renders; follow it here as if it ran here
        job, _ = submit_render({"scene": scene, **kwargs, "after": ()})
        comp_job = submit_comp(comp, [job], 50, None) if comp is not None else None
        info = watch_job(RemoteFarm(server_url() or ""), job, as_json and comp is None)
        if info["state"] != "done":
            raise RenderFailed(f"job {job} is {info['state']}")
        if comp_job is not None:
            done = watch_job(RemoteFarm(server_url() or ""), comp_job, False)
            finish({"render": info, "comp": done} if as_json else done, as_json)
        return
    if kwargs.pop("upload"):
        raise FarmError("--upload sends the scene to a farm server, and none is configured")
    slots, threads = kwargs.pop("slots"), kwargs.pop("threads")
    stall_timeout = kwargs.pop("stall_timeout")
    if stall_timeout <= 0:
        raise FarmError(f"--stall-timeout must be more than 0 seconds, got {stall_timeout:g}")
    kwargs["format"] = kwargs.pop("fmt")
    spec = validate(RenderRequest(scene=scene, **kwargs))
    # Stored absolute: a comp run later from another folder finds the frames (--after).
    spec = replace(spec, output=OutputPattern(os.path.abspath(spec.output.pattern)))
    layout = SlotLayout.resolve(slots, threads)
    from farm.cli.display import JobDisplay
    from farm.embedded import (
        render as embedded,  # Ray and the scheduler load only where a render runs here
    )

    options = embedded.RunOptions(find_blender(), layout.slots, layout.threads, stall_timeout)
    display = JobDisplay()
    with display:
        summary = embedded.render(spec, options, display, store_url())
    display.summary(summary)
    if comp is None or not summary.ok:
        _finish(summary, as_json)
        return
    composited = run_comp(comp, [summary.job], 50) if summary.job else {}
    if as_json:
        click.echo(json.dumps({"render": summary.as_json(), "comp": composited}, indent=2))
    finish(composited, False)


def _finish(summary: embedded.RunSummary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2))
    if not summary.ok:
        raise RenderFailed(f"{len(summary.failed)} of {len(summary.frames)} frames failed")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="farm")
def cli() -> None:
    """CREIC lab farm: render Blender shots in tiles across the lab's nodes.

    Without a server configured, `farm render` runs an embedded farm on this machine (a local Ray,
    nothing to start by hand) and `farm jobs`, `status` and `logs` read its store. With FARM_URL set
    (or after `farm login URL`) every command talks to the lab's farm server.
    """


@cli.command()
@click.argument("scene")
@render_options
@click.option(
    "--comp",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Then composite the frames with this comp spec (TOML; inputs with after = true).",
)
def render(scene: str, **kwargs: Any) -> None:
    """Render SCENE (a .blend) and return when every frame is written.

    \b
    Examples:
      farm render shot.blend --frames 1-24 --tiles 2x2 --overscan 16 -o renders/shot_####.exr
      farm render still.blend --frames 1 --tiles 4x4 -o still.png
      farm render shot.blend -o renders/shot_####.exr --comp comp.toml   # then comp and review
    """
    _render(scene, kwargs)


@cli.command()
@click.option(
    "--scene-out",
    help="Where to build the example scene (default: $FARM_HOME/examples/shot.blend).",
)
@render_options
def demo(scene_out: str | None, **kwargs: Any) -> None:
    """Build the example shot with Blender, then render it in 2x2 tiles on the embedded farm.

    The frames land in renders/demo/ as PNG, ready to open in any viewer.
    """
    scene = Path(scene_out) if scene_out else farm_home() / "examples" / "shot.blend"
    if not scene.exists():
        blender = find_blender()
        scene.parent.mkdir(parents=True, exist_ok=True)
        click.echo(f"building the example shot into {scene} …", err=True)
        built = subprocess.run(
            [
                blender,
                "-b",
                "--factory-startup",
                "--python",
                str(EXAMPLE_BUILDER),
                "--",
                str(scene),
            ],
            capture_output=True,
            text=True,
        )
        if built.returncode != 0 or not scene.exists():
            tail = (built.stdout + built.stderr).strip().splitlines()[-1:] or ["no output"]
            raise FarmError(f"building the example shot failed: {tail[0]}")
    context = click.get_current_context()
    if context.get_parameter_source("tiles") is click.core.ParameterSource.DEFAULT:
        kwargs["tiles"] = "2x2"  # the demo shows the tiling core at work
    if kwargs["output"] is None:
        kwargs["output"] = "renders/demo/shot_####.png"
    as_json = kwargs["as_json"]
    _render(str(scene), kwargs)
    if not as_json:
        folder = Path(kwargs["output"]).parent
        click.echo(
            f"look at the frames in {folder}/, then try: farm jobs; farm render --help", err=True
        )


@cli.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
def jobs(limit: int, as_json: bool) -> None:
    """List the newest jobs, with their tasks by state."""
    rows = connect().jobs(limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("id", "kind", "name", "owner", "state", "tasks done", "submitted")
    colours = {"done": "green", "failed": "red", "running": "cyan", "cancelled": "yellow"}
    for row in rows:
        total = sum(row["tasks"].values())
        state = f"[{colours.get(row['state'], 'white')}]{row['state']}[/]"
        table.add_row(
            str(row["id"]),
            row["kind"],
            row["name"],
            row["owner"],
            state,
            f"{row['tasks']['done']}/{total}",
            (row["submitted_at"] or "")[:19].replace("T", " "),
        )
    Console().print(table if rows else "no jobs yet")


@cli.command()
@click.argument("job", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print the status as a JSON object.")
def status(job: int, as_json: bool) -> None:
    """Show JOB's state and its tasks by state."""
    info = connect().status(job)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    counts = ", ".join(f"{n} {state}" for state, n in info["tasks"].items() if n)
    Console().print(
        f"job {info['id']} ({info['kind']} {info['name']}, {info['owner']}): "
        f"[bold]{info['state']}[/]; tasks: {counts or 'none'}"
        + (f"\n{escape(info['message'])}" if info["message"] else ""),
        highlight=False,
    )


@cli.command()
@click.argument("job", type=int)
@click.option("--task", "task_key", help="Only this task, e.g. f12 or f12.t3.")
@click.option(
    "--follow", "-f", is_flag=True, help="Then print what happens to the job until it ends."
)
@click.option("--json", "as_json", is_flag=True, help="Print the attempts as a JSON list.")
def logs(job: int, task_key: str | None, follow: bool, as_json: bool) -> None:
    """Show every attempt of JOB's tasks: where it ran, how it ended, and Blender's last lines."""
    farm = connect()
    attempts = farm.logs(job, task_key)
    if as_json and not follow:
        click.echo(json.dumps(attempts, indent=2))
        return
    console = Console()
    for attempt in attempts:
        colour = {"done": "green", "failed": "red"}.get(attempt["status"], "white")
        console.print(
            f"[bold]{attempt['task']}[/] attempt {attempt['attempt']} on node "
            f"{attempt['node'][:12] or '?'}: [{colour}]{attempt['status']}[/]"
        )
        if attempt["log"]:
            console.print(attempt["log"], markup=False, highlight=False)
    if follow:
        shown = {(a["task"], a["attempt"]): len(a["log"]) for a in attempts}
        follow_job(farm, job, task_key, as_json, shown)


def follow_job(
    farm: Farm, job: int, task_key: str | None, as_json: bool, shown: dict[tuple[str, int], int]
) -> None:
    """Print the job's events and its tasks' new output as they come (one JSON object a line with
    --json) until the job ends."""
    seen = 0
    while True:
        finished = farm.status(job)["state"] in FINISHED
        for event in farm.events(job, seen):
            seen = event["id"]
            if task_key is None or event["task"] in (None, task_key):
                _print_event(job, event, as_json)
        for attempt in farm.logs(job, task_key):
            where = (attempt["task"], attempt["attempt"])
            new = attempt["log"][shown.get(where, 0) :]
            shown[where] = len(attempt["log"])
            if new.strip():
                _print_output(attempt, new.strip("\n"), as_json)
        if finished:
            return
        time.sleep(POLL)


def _print_event(job: int, event: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(event))
        return
    what = event["task"] or (f"frame {event['frame']}" if event["frame"] else f"job {job}")
    message = f": {event['message']}" if event["message"] else ""
    click.echo(f"{event['at'][11:19]} {what} {event['kind']}{message}")


def _print_output(attempt: dict[str, Any], text: str, as_json: bool) -> None:
    if as_json:
        click.echo(
            json.dumps({"task": attempt["task"], "attempt": attempt["attempt"], "output": text})
        )
        return
    prefix = f"{attempt['task']}#{attempt['attempt']} | "
    click.echo("\n".join(prefix + line for line in text.splitlines()))


for command in [*COMMANDS, node, *ADMIN_COMMANDS, *TRAIN_COMMANDS, *COMP_COMMANDS]:
    cli.add_command(command)


def main() -> None:
    """Entry point: one-line errors, exit 2 for bad input, 1 for a failed render."""
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        click.echo(f"error: {error.format_message()}", err=True)
        sys.exit(2)
    except (FarmError, RenderFailed) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
