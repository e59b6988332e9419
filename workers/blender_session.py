"""A warm Blender: one subprocess kept open on one scene, rendering frames and regions on command.

A cold ``blender -b scene -f N`` spends about a second before its first sample; a Blender kept open
with ``render.use_persistent_data`` renders the next small frame in well under a tenth of that. Blender
runs as a subprocess, never as ``import bpy``: a Blender crash must not take the Ray worker down, and
each node may have its own Blender build.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DRIVER = Path(__file__).with_name("blender_driver.py")
PREFIX = "@@farm "
_SAMPLE = re.compile(r"Sample (\d+)/(\d+)")


# Blender gets SIGKILL when the process that started it dies, so a killed Ray worker never leaves
# an orphan Blender rendering on (util-linux's setpriv; Popen's preexec_fn is unsafe in threaded Ray
# workers).
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []


class BlenderError(RuntimeError):
    """Blender failed an attempt; the message ends with Blender's last log lines."""


@dataclass(frozen=True)
class SessionOptions:
    """How to start Blender for one scene."""

    blender: str  # "": the node's own (FARM_BLENDER, else blender on PATH)
    scene: Path
    threads: int = 0  # 0: Blender's default, every core
    allow_scripts: bool = False
    stall_timeout: float = 600.0  # seconds without a line of output before the attempt fails
    # Loading a scene prints nothing until it is loaded (Blender's own output is block-buffered
    # on a pipe), and takes longer on a busy node: start-up gets at least this long.
    start_timeout: float = 120.0
    env: dict[str, str] | None = None
    # The scene's tree on this node (workers/scene_cache.py): its absolute paths are pointed at
    # their mirrors under it before anything else; None: the paths stay as the .blend has them.
    remap_root: str | None = None


class BlenderSession:
    """One Blender process on one scene. Not thread-safe: one command at a time."""

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self.info: dict[str, Any] = {}
        self._process: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._log: collections.deque[str] = collections.deque(maxlen=40)
        self._last_output = time.monotonic()
        self._on_line: Callable[[str], None] | None = None
        self.remapped: dict[str, Any] = {}  # the remap's reply: paths moved, those missing

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> dict[str, Any]:
        """Launch Blender on the scene and return the scene info it reports; with a
        ``remap_root``, remap the scene's absolute paths first (``remapped`` says what moved)."""
        opts = self.options
        command = [
            *DIE_WITH_PARENT,
            opts.blender,
            "--background",
            "--factory-startup",
            "--enable-autoexec" if opts.allow_scripts else "--disable-autoexec",
            str(opts.scene),
            "--threads",
            str(opts.threads),
            "--python",
            str(DRIVER),
        ]
        env = dict(os.environ if opts.env is None else opts.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._replies = queue.Queue()
        self._last_output = time.monotonic()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,
        )
        threading.Thread(target=self._read, args=(self._process,), daemon=True).start()
        self.info = self._wait("hello", max(opts.stall_timeout, opts.start_timeout))["info"]
        if opts.remap_root is not None:
            self._send({"op": "remap", "root": str(opts.remap_root)})
            try:
                self.remapped = self._wait("remapped")
            except BlenderError:
                self.close()  # a Blender whose paths are not the tree's must never render
                raise
        return self.info

    def configure(self, settings: dict[str, Any]) -> dict[str, Any]:
        """Apply job overrides (engine, device, samples, seed, resolution, dither)."""
        self._send({"op": "configure", "settings": settings})
        self.info = self._wait("configured")["info"]
        return self.info

    def render(
        self,
        frame: int,
        border: tuple[float, float, float, float] | None,
        image: dict[str, Any],
        folder: Path,
        on_progress: Callable[[float], None] | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> Path:
        """Render ``frame`` (or the ``border`` region of it) into ``folder``; return the file.
        ``on_progress`` gets the fraction of samples done; ``on_output`` every line Blender prints
        except its per-sample progress lines (a log reader wants what happened, not every sample)."""

        def progress(line: str) -> None:
            match = _SAMPLE.search(line)
            if match is None:
                if on_output:
                    on_output(line)
            elif on_progress:
                on_progress(int(match[1]) / max(1, int(match[2])))

        self._on_line = progress
        try:
            self._send(
                {
                    "op": "render",
                    "frame": frame,
                    "border": border,
                    "image": image,
                    "dir": str(folder),
                    "name": f"render_{uuid.uuid4().hex[:12]}_",  # never a stale file's name
                }
            )
            return Path(self._wait("rendered")["path"])
        finally:
            self._on_line = None

    def close(self) -> None:
        """Ask Blender to quit; kill it if it does not within a few seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None and process.stdin:
                process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                process.stdin.flush()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self._kill(process)

    @staticmethod
    def _kill(process: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._last_output = time.monotonic()
            line = line.rstrip("\n")
            if line.startswith(PREFIX):
                self._replies.put(json.loads(line[len(PREFIX) :]))
                continue
            self._log.append(line)
            if self._on_line:
                self._on_line(line)
        self._replies.put(None)

    def _send(self, command: dict[str, Any]) -> None:
        if not self.alive:
            raise self._failure("Blender is not running")
        assert self._process is not None and self._process.stdin is not None
        self._last_output = time.monotonic()  # the stall clock runs from the command, not before
        try:
            self._process.stdin.write(json.dumps(command) + "\n")
            self._process.stdin.flush()
        except OSError as error:
            raise self._failure(f"Blender stopped accepting commands ({error})") from error

    def _wait(self, op: str, stall: float | None = None) -> dict[str, Any]:
        """The reply ``op``; fail when Blender prints nothing for ``stall`` seconds (by default
        the session's stall timeout)."""
        stall = self.options.stall_timeout if stall is None else stall
        while True:
            idle = time.monotonic() - self._last_output
            try:
                message = self._replies.get(timeout=max(0.1, stall - idle))
            except queue.Empty:
                if time.monotonic() - self._last_output < stall:
                    continue
                raise self._failure(f"Blender printed nothing for {stall:g} s") from None
            if message is None:
                code = self._process.wait() if self._process else None
                raise self._failure(f"Blender exited with code {code}")
            if message.get("op") == "error":
                raise BlenderError(f"{message['error']}\n{message.get('trace', '')}")
            if message.get("op") == op:
                return message

    def _failure(self, reason: str) -> BlenderError:
        """Kill what is left of Blender and describe the failure with its last log lines."""
        process, self._process = self._process, None
        if process is not None:
            self._kill(process)
        tail = "\n".join(self._log)
        return BlenderError(f"{reason}; last lines:\n{tail}" if tail else reason)
