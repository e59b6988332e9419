"""The probe task: hold a slot for a while, then say which node ran it."""

from __future__ import annotations

import time


class ProbeFailure(RuntimeError):
    """A failure the probe was asked to make (``fail_first``), naming the node it happened on."""

    def __init__(self, message: str, node: str) -> None:
        super().__init__(message)
        self.node = node

    def __reduce__(self):  # Ray pickles the cause; keep the node through it
        return (ProbeFailure, (str(self), self.node))


def probe(seconds: float, attempt: int, fail_first: int) -> str:
    """Sleep ``seconds`` on the node Ray chose; fail the first ``fail_first`` attempts."""
    import ray

    node = ray.get_runtime_context().get_node_id()
    if seconds:  # sleep(0) still costs a system call: a tenth of a no-op task here
        time.sleep(seconds)
    if attempt <= fail_first:
        raise ProbeFailure(f"probe failed on purpose (attempt {attempt} of {fail_first})", node)
    return node
