"""Joining Ray: the cluster this process belongs to, or a quiet local one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import ray


def ensure_ray(address: str | None = None) -> None:
    """Join the Ray cluster at ``address``, or start a quiet local one (embedded mode)."""
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )


def last_cluster() -> tuple[str, str] | None:
    """The cluster ``auto`` (and ``ray.init()`` with no address) means: ``$RAY_ADDRESS``, else the
    one this machine's last ``ray start`` wrote down; with where it was found."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "$RAY_ADDRESS"
    from ray._private.utils import get_ray_address_file

    path = Path(get_ray_address_file(None))
    try:
        address = path.read_text().strip()
    except OSError:
        return None
    return (address, str(path)) if address else None


def local_resources() -> tuple[float, float] | None:
    """The CPUs and GPUs a local Ray started by :func:`ensure_ray` would have, found as Ray finds
    them but without starting it (seconds of CPU); None when it would join a cluster instead."""
    if ray.is_initialized() or last_cluster() is not None:
        return None
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    return float(get_num_cpus()), float(gpus)
