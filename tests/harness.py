"""Separate machines on one machine, for the lab-mode tests (kept out of the package).

Each :class:`Machine` runs its processes in a mount and IPC namespace of its own (bubblewrap): its
own ``/tmp`` (its ``HOME`` lives there, so no shared ``~/.ray``), its own ``/dev/shm`` (Ray's
object store), no view of the other machines' folders (the head's data folder, the laptop's
shot), and nothing of the farm's or Ray's settings from the test's environment. The system, the
virtual environment and Blender stay visible read-write, as an installed lab machine has them.
Networking stays on this machine: every machine reaches the others by this machine's address.
The machines share one PID namespace: a Ray driver finds its node's raylet by listing processes,
and each command of a machine is a bubblewrap of its own. Powering a machine off SIGKILLs every
process it started and all of theirs at once, as pulling a node's plug does.

A :class:`Lab` is how a lab is set up, step by step as the README says: ``farm node head``,
``farm admin init`` and ``farm server`` on the head, ``farm node join`` on each node with a copy of
the head's token, the CLI on a laptop.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

# What a machine never inherits from the test's environment: each has its own settings.
_PRIVATE = ("RAY_", "FARM_", "XDG_")
HOME = "/tmp/home"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Machine:
    """One machine of the lab: a folder of this one that holds its /tmp, home included."""

    def __init__(self, lab: Path, name: str) -> None:
        self.name = name
        self.lab = lab
        self.tmp = lab / name
        (self.tmp / "home").mkdir(parents=True)
        self.processes: list[subprocess.Popen[str]] = []
        self.node_id = ""  # its Ray node's id, once it joined the lab

    def path(self, inside: str) -> Path:
        """Where a path of this machine's /tmp lies on the real one (for the test to look)."""
        assert inside.startswith("/tmp/"), inside
        return self.tmp / inside.removeprefix("/tmp/")

    def argv(self, command: list[str]) -> list[str]:
        hidden = Path.home() / ".ray"  # this machine's own Ray token: not the lab's
        hidden.mkdir(exist_ok=True)
        box = ["bwrap", "--dev-bind", "/", "/", "--bind", str(self.tmp), "/tmp"]
        if not self.lab.is_relative_to("/tmp"):  # the other machines' folders out of sight
            box += ["--tmpfs", str(self.lab)]
        for installed in {REPO, Path(sys.prefix)}:  # a checkout under /tmp stays installed
            if installed.is_relative_to("/tmp"):
                box += ["--bind", str(installed), str(installed)]
        box += ["--tmpfs", str(hidden), "--tmpfs", "/dev/shm", "--unshare-ipc"]
        return [*box, "--die-with-parent", "--chdir", HOME, "--", *command]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE)}
        path = os.pathsep.join([str(Path(sys.executable).parent), kept.get("PATH", "")])
        return {**kept, "PATH": path, "HOME": HOME, **(extra or {})}  # this `farm`, as installed

    def run(
        self, *command: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(list(command)),
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(
        self, *command: str, log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """A long-running process of this machine; its output goes to ``<machine>/<log>``."""
        with (self.tmp / log).open("a") as out:
            process = subprocess.Popen(
                self.argv(list(command)),
                env=self.env(env),
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.tmp / name
        return path.read_text() if path.exists() else ""

    def power_off(self) -> None:
        """SIGKILL every process of the machine at once, as pulling its plug does: each it started
        and all theirs. Not only their process groups: Ray's workers make groups of their own, and
        a Blender a session of its own."""
        leaders = [p for p in self.processes if p.poll() is None]
        for _ in range(100):  # a process forked while the others died is found on the next pass
            alive = self._alive(leaders)
            if not alive:
                break
            for process in alive:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            time.sleep(0.02)
        for process in leaders:
            process.wait()
        self.processes.clear()

    def running(self) -> list[psutil.Process]:
        """Every live process of the machine (those it started and all theirs)."""
        return self._alive([p for p in self.processes if p.poll() is None])

    @staticmethod
    def _alive(leaders: list[subprocess.Popen[str]]) -> list[psutil.Process]:
        """The live processes of the sessions ``leaders`` head, and their descendants."""
        sessions = {p.pid for p in leaders}
        found: dict[int, psutil.Process] = {}
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getsid(process.pid) in sessions:
                    found[process.pid] = process
        for leader in leaders:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(leader.pid).children(recursive=True):
                    found[child.pid] = child
        live = []
        for process in found.values():
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE:
                    live.append(process)
        return live


class Lab:
    """A head (Ray head + farm server), lab nodes and a laptop, each a :class:`Machine`."""

    DATA = "/tmp/farm-data"  # the server's data folder, on the head

    def __init__(self, root: Path, head_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.head_env = head_env or {}  # settings of the head's Ray (``RAY_…``), as its admin sets
        self.ray_port = free_port()
        self.http_port = free_port()
        self.head = Machine(root, "head")
        self.laptop = Machine(root, "laptop")
        self.nodes: dict[str, Machine] = {}
        self.token = ""  # the first admin's API token

    @property
    def ray_address(self) -> str:
        return f"127.0.0.1:{self.ray_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start_head(self, timeout: float = 90) -> None:
        """``farm node head``, ``farm admin init``, ``farm server``: the README's head set-up."""
        self.head.start(
            "farm", "node", "head", "--port", str(self.ray_port), "--cpus", "0", "--block",
            log="ray-head.log", env=self.head_env,
        )  # fmt: skip
        written = self.head.path("/tmp/ray/ray_current_cluster")  # once the head is all up
        self._wait(written.exists, timeout, self.head, "ray-head.log")
        init = self.head.run(
            "farm", "admin", "init", "--data-dir", self.DATA, "--name", "admin", "--json"
        )
        assert init.returncode == 0, init.stderr
        self.token = json.loads(init.stdout)["token"]
        self.head.start(
            "farm", "server", "--port", str(self.http_port), "--data-dir", self.DATA,
            log="server.log",
        )  # fmt: skip
        self._wait(self._healthy, timeout, self.head, "server.log")

    def token_copy(self, machine: Machine) -> str:
        """Copy the head's Ray token to ``machine``, as an admin does with scp; its path there."""
        shutil.copy(self.head.path(f"{HOME}/.ray/auth_token"), machine.path(f"{HOME}/ray-token"))
        return f"{HOME}/ray-token"

    def join(self, name: str, lab: str, cpus: int = 1, timeout: float = 90) -> Machine:
        """A lab node joined with ``farm node join`` and the head's token."""
        node = self.nodes[name] = Machine(self.root, name)
        token = self.token_copy(node)
        before = self.alive_ids()
        node.start(
            "farm", "node", "join", "--address", self.ray_address, "--lab", lab,
            "--cpus", str(cpus), "--token-file", token, "--block",
            log="ray-node.log",
        )  # fmt: skip
        self._wait(lambda: self.alive_ids() - before, timeout, node, "ray-node.log")
        [node.node_id] = self.alive_ids() - before
        return node

    def alive_ids(self) -> set[str]:
        """The Ray node ids of the lab's live nodes, the head's included."""
        nodes = self.api().get("/nodes")
        nodes.raise_for_status()
        return {n["id"] for n in nodes.json() if n.get("alive", True)}

    def alive_nodes(self) -> int:
        return len(self.alive_ids())

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    def farm(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The farm CLI on the laptop, logged in to the server."""
        env = {"FARM_URL": self.url, "FARM_TOKEN": self.token}
        return self.laptop.run("farm", *args, env=env, timeout=timeout)

    def close(self) -> None:
        for machine in [*self.nodes.values(), self.head, self.laptop]:
            machine.power_off()

    def _healthy(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        return False

    @staticmethod
    def _wait(ready, timeout: float, machine: Machine, log: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            alive = all(p.poll() is None for p in machine.processes)
            if not alive or time.monotonic() > deadline:
                raise AssertionError(f"{machine.name} did not come up:\n{machine.log(log)[-3000:]}")
            time.sleep(0.3)
