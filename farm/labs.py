"""Labs and nodes as Ray sees them: the farm's one spelling of a lab's name, the Ray resource a
lab's nodes advertise, and how a task is kept off nodes blocked for its job."""

from __future__ import annotations

import re

LAB_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"  # film, ml, film_2: what `farm node join --lab` takes
LAB = re.compile(LAB_PATTERN)
LAB_SHARE = 0.001  # what one task asks of its lab's resource: a node's 1 admits 1000 at once
NODE_LABEL = "ray.io/node-id"


def lab_resource(lab: str) -> str:
    """The Ray resource a lab's nodes advertise (``ray start --resources '{"film_lab": 1}'``)."""
    return f"{lab}_lab"


def avoiding(nodes: set[str] | frozenset[str]) -> dict[str, str]:
    """Ray's label selector that keeps a task or actor off ``nodes`` (by node id)."""
    return {NODE_LABEL: f"!in({','.join(sorted(nodes))})"}
