"""The probe task: hold a slot for a while, then say which node ran it."""

from __future__ import annotations

import time


class ProbeFailure(RuntimeError):
    """A failure the probe was asked to make (``fail_first``), naming the node it happened on."""

    def __init__(self, message: str, node: str, began: float) -> None:
        super().__init__(message)
        self.node = node
        self.began = began

    def __reduce__(self):  # Ray pickles the cause; keep the node and start through it
        return (ProbeFailure, (str(self), self.node, self.began))


def probe(seconds: float, attempt: int, fail_first: int) -> tuple[str, float]:
    """Sleep ``seconds`` on the node Ray chose; fail the first ``fail_first`` attempts. Returns
    the node and when (epoch seconds) the task began there, what the ledger charges from."""
    import ray

    began = time.time()
    node = ray.get_runtime_context().get_node_id()
    if seconds:  # sleep(0) still costs a system call: a tenth of a no-op task here
        time.sleep(seconds)
    if attempt <= fail_first:
        raise ProbeFailure(
            f"probe failed on purpose (attempt {attempt} of {fail_first})", node, began
        )
    return node, began
