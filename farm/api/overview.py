"""The farm at large as a caller sees it: the cluster's nodes and what runs on them, and the
caller's own standing (enrolment, limits, quota used)."""

from typing import Any

import ray
from fastapi import APIRouter

from farm.accounts import standing as accounts
from farm.api.deps import Db, Me, Sched
from farm.api.models import refusals

router = APIRouter()


@router.get("/nodes", responses=refusals())
def nodes(_: Me, scheduler: Sched) -> list[dict[str, Any]]:
    # Every node Ray knows, alive or not, with what the scheduler runs on it.
    work = scheduler.call(scheduler.node_work)
    rows = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        rows.append(
            {
                "id": node["NodeID"],
                "host": node.get("NodeManagerHostname", ""),
                "address": node.get("NodeManagerAddress", ""),
                "alive": bool(node.get("Alive")),
                "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0),
                "labs": sorted(k.removesuffix("_lab") for k in resources if k.endswith("_lab")),
                **work.get(node["NodeID"], {"running": 0, "slots": []}),
            }
        )
    return rows


@router.get("/me", responses=refusals())
def me(db: Db, me: Me) -> dict[str, Any]:
    """Who the token belongs to, their enrolment, limits and the quota used in this period."""
    return accounts.standing_of(db, me.name).as_json()
