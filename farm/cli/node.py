"""``farm node``: the lab's machines start the Ray head, join it with their GPUs and labs, leave.

Thin wrappers over ``ray start``: the farm never invents its own transport between machines, Ray
is the cluster. What they add is the farm's conventions (a lab is the Ray resource ``<lab>_lab``,
one unit per node), the cluster's token carried by file (:mod:`farm.ray_token`), and a check of
what a node needs before it takes work: the head within reach, the token taken, a film node's
Blender.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import click

from farm.cli.options import echo_json, json_option
from farm.config import find_blender
from farm.errors import FarmError
from farm.labs import LAB, lab_resource
from farm.ray_token import ClusterToken, disabled, find_token, make_token, reachable, token_for

DEFAULT_PORT = 6379


def ray_cli() -> str:
    """The ``ray`` command of this environment (the farm and its nodes share one Ray version)."""
    return str(Path(sys.executable).with_name("ray"))


def node_options(labs: list[str], gpus: int | None = None, cpus: int | None = None) -> list[str]:
    """The ``ray start`` options that make this machine a node of ``labs``."""
    for lab in labs:
        if not LAB.match(lab):
            raise FarmError(f"--lab {lab!r}: use lower-case letters, digits and _ (e.g. film, ml)")
    options = []
    if labs:
        options += ["--resources", json.dumps({lab_resource(lab): 1 for lab in sorted(set(labs))})]
    if gpus is not None:
        options += ["--num-gpus", str(gpus)]
    if cpus is not None:
        options += ["--num-cpus", str(cpus)]
    return options


def join_command(
    address: str, labs: list[str], gpus: int | None = None, cpus: int | None = None
) -> list[str]:
    """The ``ray start`` that joins ``address`` as a node of ``labs``."""
    if not address.strip():
        raise FarmError("--address is empty: give the head node's Ray address, like head:6379")
    return [ray_cli(), "start", "--address", address, *node_options(labs, gpus, cpus)]


def node_problems(address: str, labs: list[str]) -> list[str]:
    """What keeps this machine from joining: the head out of reach (``ray start`` would retry for
    minutes), or what a lab's node needs (a film node renders with Blender)."""
    problems = []
    unreachable = reachable(address)
    if unreachable:
        problems.append(f"cannot reach the head node's Ray at {address}: {unreachable}")
    if "film" in labs:
        try:
            find_blender()
        except FarmError as error:
            problems.append(f"a film lab node renders with Blender: {error}")
    return problems


def start_ray(command: list[str], token: ClusterToken | None, block: bool) -> None:
    """Run ``ray start`` with the token in its environment; ``block``: become it (a service
    manager or a terminal then holds the node, and Ctrl-C or SIGTERM stops it)."""
    env = token.environ() if token else dict(os.environ)
    if block:
        sys.stdout.flush()
        os.execve(command[0], [*command, "--block"], env)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FarmError(f"ray start failed: {tail[0]}")


token_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The cluster's Ray token, a copy of the head's ~/.ray/auth_token "
    "(default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token).",
)
block_option = click.option(
    "--block", is_flag=True, help="Stay in the foreground until stopped (for a service manager)."
)
lab_options = [
    click.option(
        "--lab", "labs", multiple=True, help="A lab this node serves: film, ml (repeatable)."
    ),
    click.option(
        "--gpus", type=click.IntRange(0, 64), help="GPUs to offer (default: Ray counts them)."
    ),
    click.option("--cpus", type=click.IntRange(0, 4096), help="CPUs to offer (default: all)."),
]


def with_lab_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(lab_options):
        command = option(command)
    return command


@click.group()
def node() -> None:
    """Start the lab's Ray head, join this machine to it, or take it out."""


@node.command("head")
@click.option("--port", type=click.IntRange(1024, 65535), default=DEFAULT_PORT, show_default=True)
@with_lab_options
@token_option
@block_option
@json_option
def node_head(
    port: int,
    labs: tuple[str, ...],
    gpus: int | None,
    cpus: int | None,
    token_file: Path | None,
    block: bool,
    as_json: bool,
) -> None:
    """Start the lab's Ray head on this machine, with the cluster's token (made if missing)."""
    token = None if disabled() else find_token(make_token(token_file))
    command = [ray_cli(), "start", "--head", "--port", str(port), "--include-dashboard=false"]
    command += node_options(list(labs), gpus, cpus)
    where = f"{_this_host()}:{port}"
    join = f"farm node join --address {where} --lab film"
    if as_json:
        echo_json({"address": where, "token_file": token.source if token else None})
    elif token:
        click.echo(
            f"Ray head on {where}. On each lab node, copy {token.source} there, then run: "
            f"{join} --token-file <the copy>"
        )
    else:
        click.echo(f"Ray head on {where}, without a token (RAY_AUTH_MODE=disabled). Nodes: {join}")
    start_ray(command, token, block)


@node.command("join")
@click.option(
    "--address", required=True, envvar="RAY_ADDRESS", help="The head node's Ray, e.g. head:6379."
)
@with_lab_options
@token_option
@block_option
@click.option("--dry-run", is_flag=True, help="Print the ray start command instead of running it.")
@json_option
def node_join(
    address: str,
    labs: tuple[str, ...],
    gpus: int | None,
    cpus: int | None,
    token_file: Path | None,
    block: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Join the cluster at ADDRESS as a node of the given labs (ray start underneath)."""
    command = join_command(address, list(labs), gpus, cpus)
    if dry_run:
        click.echo(json.dumps({"command": command}) if as_json else shlex.join(command))
        return
    problems = node_problems(address, list(labs))
    if problems:
        raise FarmError(problems[0])
    token = token_for(address, token_file)
    message = f"joined {address} as a node of {', '.join(labs) or 'no lab'}"
    if block:
        click.echo(f"{message}; stop it with Ctrl-C", err=True)
    start_ray(command, token, block)
    if as_json:
        echo_json({"address": address, "labs": sorted(set(labs))})
    else:
        click.echo(f"{message}; leave with: farm node leave")


@node.command("leave")
@json_option
def node_leave(as_json: bool) -> None:
    """Stop this machine's Ray node; its running tasks run again elsewhere."""
    subprocess.run([ray_cli(), "stop"], check=False, capture_output=True)
    if as_json:
        echo_json({"left": True})
    else:
        click.echo("this machine left the cluster")


def _this_host() -> str:
    """This machine's address as other machines reach it (Ray's own choice of it)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()
