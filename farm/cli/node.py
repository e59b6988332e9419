"""``farm node join``: a lab machine joins the farm's Ray cluster with its GPUs and its labs.

A thin wrapper over ``ray start --address …``: the farm never invents its own transport between
machines, Ray is the cluster. What it adds is the farm's conventions (a lab is the Ray resource
``<lab>_lab``, one unit per node) and a check of what a node of that lab needs before it takes work.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from farm.config import find_blender
from farm.errors import FarmError
from farm.labs import LAB, lab_resource


def ray_cli() -> str:
    """The ``ray`` command of this environment (the farm and its nodes share one Ray version)."""
    return str(Path(sys.executable).with_name("ray"))


def join_command(
    address: str, labs: list[str], gpus: int | None = None, cpus: int | None = None
) -> list[str]:
    """The ``ray start`` that joins ``address`` as a node of ``labs``."""
    if not address.strip():
        raise FarmError("--address is empty: give the head node's Ray address, like head:6379")
    for lab in labs:
        if not LAB.match(lab):
            raise FarmError(f"--lab {lab!r}: use lower-case letters, digits and _ (e.g. film, ml)")
    command = [ray_cli(), "start", "--address", address]
    if labs:
        command += ["--resources", json.dumps({lab_resource(lab): 1 for lab in sorted(set(labs))})]
    if gpus is not None:
        command += ["--num-gpus", str(gpus)]
    if cpus is not None:
        command += ["--num-cpus", str(cpus)]
    return command


def node_problems(address: str, labs: list[str]) -> list[str]:
    """What keeps this machine from joining: the head out of reach (``ray start`` would retry for
    minutes), or what a lab's node needs (a film node renders with Blender)."""
    problems = []
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or address, int(port or 6379)), timeout=5).close()
    except (OSError, ValueError) as error:
        problems.append(f"cannot reach the head node's Ray at {address}: {error}")
    if "film" in labs:
        try:
            find_blender()
        except FarmError as error:
            problems.append(f"a film lab node renders with Blender: {error}")
    return problems
