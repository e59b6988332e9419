"""The ``farm`` command. Bad input gets one line on stderr and exit code 2; nothing is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from farm import __version__, embedded
from farm.config import SlotLayout, farm_home, find_blender
from farm.display import JobDisplay
from farm.embedded import RunOptions, RunSummary
from farm.errors import FarmError, RenderFailed
from farm.jobs import job_logs, job_status, list_jobs
from farm.store import open_store, session
from pipelines.render import RenderRequest, validate

EXAMPLE_BUILDER = Path(__file__).resolve().parent.parent / "examples" / "build_shot.py"


def render_options(function: Any) -> Any:
    """The options shared by ``farm render`` and ``farm demo``."""
    options = [
        click.option(
            "--frames",
            "-f",
            help="Frames: 1-24, 1-100x5 (every 5th), 1,5,10-12. Default: the scene's range.",
        ),
        click.option("--chunk", type=int, default=1, show_default=True, help="Frames per task."),
        click.option(
            "--tiles",
            default="auto",
            show_default=True,
            help="auto (tile only when fewer frames than free slots remain), none, a grid 4x3, or 256px.",
        ),
        click.option(
            "--overscan",
            type=int,
            default=0,
            show_default=True,
            help="Pixels rendered around each tile and cropped away.",
        ),
        click.option(
            "--output",
            "-o",
            help="Output pattern, # = frame digits. Default: renders/SCENE_####.exr",
        ),
        click.option(
            "--format",
            "fmt",
            type=click.Choice(["exr", "png", "jpeg"]),
            help="Output type (else from -o).",
        ),
        click.option("--samples", type=int, help="Cycles samples (default: the scene's)."),
        click.option("--seed", type=int, help="Cycles seed (default: the scene's)."),
        click.option("--resolution", help="WIDTHxHEIGHT (default: the scene's)."),
        click.option("--engine", help="Render engine (default: the scene's), e.g. CYCLES."),
        click.option(
            "--device",
            default="CPU",
            show_default=True,
            help="CPU, or CUDA/OPTIX/HIP/ONEAPI/METAL on GPU nodes.",
        ),
        click.option(
            "--compression", help="EXR codec, e.g. ZIP, PIZ, DWAA (default: the scene's)."
        ),
        click.option(
            "--allow-scripts", is_flag=True, help="Let Python scripts embedded in the .blend run."
        ),
        click.option(
            "--retries", type=int, default=2, show_default=True, help="Retries of a failed task."
        ),
        click.option(
            "--slots",
            type=int,
            help="Blenders running at once (default: one per 2 cores; $FARM_SLOTS).",
        ),
        click.option(
            "--threads",
            type=int,
            help="Render threads per Blender (default: cores / slots; $FARM_THREADS).",
        ),
        click.option(
            "--stall-timeout",
            type=float,
            default=600.0,
            show_default=True,
            help="Seconds Blender may print nothing before the attempt fails.",
        ),
        click.option(
            "--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout."
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _render(scene: str, kwargs: dict[str, Any]) -> None:
    as_json = kwargs.pop("as_json")
    slots, threads = kwargs.pop("slots"), kwargs.pop("threads")
    stall_timeout = kwargs.pop("stall_timeout")
    if stall_timeout <= 0:
        raise FarmError(f"--stall-timeout must be more than 0 seconds, got {stall_timeout:g}")
    kwargs["format"] = kwargs.pop("fmt")
    spec = validate(RenderRequest(scene=scene, **kwargs))
    layout = SlotLayout.resolve(slots, threads)
    options = RunOptions(find_blender(), layout.slots, layout.threads, stall_timeout)
    store = f"sqlite:///{(farm_home() / 'farm.db').absolute()}"
    display = JobDisplay()
    with display:
        summary = embedded.render(spec, options, display, store)
    display.summary(summary)
    _finish(summary, as_json)


def _finish(summary: RunSummary, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.as_json(), indent=2))
    if not summary.ok:
        raise RenderFailed(f"{len(summary.failed)} of {len(summary.frames)} frames failed")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="farm")
def cli() -> None:
    """CREIC lab farm: render Blender shots in tiles across the lab's nodes.

    Without a server configured, every command runs an embedded farm on this machine (a local Ray,
    nothing to start by hand).
    """


@cli.command()
@click.argument("scene")
@render_options
def render(scene: str, **kwargs: Any) -> None:
    """Render SCENE (a .blend) and return when every frame is written.

    \b
    Examples:
      farm render shot.blend --frames 1-24 --tiles 2x2 --overscan 16 -o renders/shot_####.exr
      farm render still.blend --frames 1 --tiles 4x4 -o still.png
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


def _local_store() -> Session | None:
    """The embedded farm's store; None where no job has run yet (nothing is created to read)."""
    path = farm_home() / "farm.db"
    return session(open_store(f"sqlite:///{path.absolute()}")) if path.exists() else None


@cli.command()
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as a JSON list.")
def jobs(limit: int, as_json: bool) -> None:
    """List the newest jobs, with their tasks by state."""
    db = _local_store()
    rows = list_jobs(db, limit) if db else []
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
    db = _local_store()
    if db is None:
        raise FarmError(f"no job {job}")
    info = job_status(db, job)
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
@click.option("--json", "as_json", is_flag=True, help="Print the attempts as a JSON list.")
def logs(job: int, task_key: str | None, as_json: bool) -> None:
    """Show every attempt of JOB's tasks: where it ran, how it ended, and Blender's last lines."""
    db = _local_store()
    if db is None:
        raise FarmError(f"no job {job}")
    attempts = job_logs(db, job, task_key)
    if as_json:
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
