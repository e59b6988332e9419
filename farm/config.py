"""Where Blender is and how a node's cores are shared between render slots.

A slot is one Blender kept open; each gets ``threads`` render threads and reserves as many CPUs from
Ray, so slots × threads never exceeds the node's cores. More slots hide Blender's single-threaded
per-frame work (scene sync, file write) behind other slots' rendering; fewer, fatter slots finish a
single frame sooner. The default is measured on the lab's machines (see the README's benchmarks).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from farm.errors import FarmError

INSTALL_HINT = "install Blender (Debian: apt-get install blender) or set FARM_BLENDER to its path"


def find_blender(explicit: str | None = None) -> str:
    """The Blender to run: ``explicit``, else ``$FARM_BLENDER``, else ``blender`` on PATH."""
    chosen = explicit or os.environ.get("FARM_BLENDER")
    if chosen:
        path = Path(chosen).expanduser()
        found = shutil.which(str(path)) if path.parent == Path(".") else str(path)
        if not found or not Path(found).is_file() or not os.access(found, os.X_OK):
            raise FarmError(f"Blender not found at {chosen!r}: {INSTALL_HINT}")
        return found
    found = shutil.which("blender")
    if not found:
        raise FarmError(f"Blender not found on PATH: {INSTALL_HINT}")
    return found


_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``8G``, ``512M``, ``1.5g`` or a number of bytes, as bytes (powers of 1024)."""
    match = _MEMORY.match(text)
    if not match:
        raise FarmError(f"--memory {text!r}: give an amount like 8G or 512M")
    scale = 1024 ** " kmgt".index(match[2].lower() or " ")
    return int(float(match[1]) * scale)


def farm_home() -> Path:
    """Where embedded mode keeps its store and the example scene: ``$FARM_HOME``, else ``./.farm``."""
    return Path(os.environ.get("FARM_HOME", ".farm")).expanduser()


def private_folder(path: Path) -> Path:
    """A server's data folder: made if missing, and readable by the server's own user alone
    (0700), whatever it was: the store, tokens' hashes, uploads and every user's outputs."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


STORE_FILE = "farm.db"  # the SQLite store in a farm's folder (the embedded farm's, a server's)


def store_url(folder: Path | None = None) -> str:
    """The SQLite store in ``folder`` (default: :func:`farm_home`), as an absolute URL: a job
    stored from one working folder is found from any other."""
    return f"sqlite:///{((folder or farm_home()) / STORE_FILE).absolute()}"


def node_cpus() -> int:
    """CPUs this process may use (the affinity mask, not the machine's core count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class SlotLayout:
    """How many Blenders run at once on a node and how many threads each gets."""

    slots: int
    threads: int

    @classmethod
    def for_node(
        cls, cpus: int, slots: int | None = None, threads: int | None = None
    ) -> SlotLayout:
        """Defaults: one slot per 2 cores, every core busy, none oversubscribed."""
        if slots is not None and slots < 1:
            raise FarmError(f"--slots must be at least 1, got {slots}")
        if threads is not None and threads < 1:
            raise FarmError(f"--threads must be at least 1, got {threads}")
        if slots is None:
            slots = max(1, cpus // (threads or 2))
        if threads is None:
            threads = max(1, cpus // slots)
        return cls(slots, threads)

    @classmethod
    def resolve(
        cls, slots: int | None = None, threads: int | None = None, cpus: int | None = None
    ) -> SlotLayout:
        """The layout asked for, else ``FARM_SLOTS`` / ``FARM_THREADS``, else the defaults."""

        def number(name: str) -> int | None:
            value = os.environ.get(name)
            if value is None:
                return None
            if not value.strip().isdigit():
                raise FarmError(f"{name}={value!r} is not a whole number")
            return int(value)

        return cls.for_node(
            cpus or node_cpus(),
            slots if slots is not None else number("FARM_SLOTS"),
            threads if threads is not None else number("FARM_THREADS"),
        )
