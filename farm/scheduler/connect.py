"""Joining Ray: the cluster this process belongs to, or a quiet local one."""

from __future__ import annotations

import logging

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
