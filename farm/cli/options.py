"""Options and output shared by several ``farm`` commands."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print a machine-readable JSON result on stdout."
)


def upload_option(what: str) -> Any:
    """``--upload/--no-upload``: send ``what`` to the farm server, or name paths it reads."""
    return click.option(
        "--upload/--no-upload",
        default=None,
        help=f"Send {what} to the farm server (the default when the server is on another "
        "machine); --no-upload: the paths are on the lab's shared drive.",
    )


def render_options(function: Any) -> Any:
    """The options of a render: ``farm render``, ``farm demo`` and ``farm submit render``."""
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
            help="Blenders running at once (default: one per 2 cores here, any free on a server; $FARM_SLOTS).",
        ),
        click.option(
            "--threads",
            type=int,
            help="Render threads per Blender (default: cores / slots here, 2 on a server; $FARM_THREADS).",
        ),
        click.option(
            "--stall-timeout",
            type=float,
            default=600.0,
            show_default=True,
            help="Seconds Blender may print nothing before the attempt fails (loading a scene gets at least 120).",
        ),
        upload_option("the scene and every file it uses"),
        json_option,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def echo_json(value: Any) -> None:
    """What ``--json`` prints."""
    click.echo(json.dumps(value, indent=2))


def print_table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """``rows`` as a table of ``columns`` (a missing value is an empty cell)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(c) is None else cell(row[c]) for c in columns))
    Console().print(table)


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def day(_: Any, __: Any, value: str | None) -> str | None:
    """A click callback: a day as ISO 8601 (2026-09-01), or a one-line refusal."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-09-01") from None
