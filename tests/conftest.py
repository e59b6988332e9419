"""Shared fixtures: a real Blender, a real local Ray, and small scenes built by the example builder."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import OpenImageIO as oiio
import pytest
import ray
import sqlalchemy
from hypothesis import settings

from farm.config import find_blender
from farm.scheduler.connect import ensure_ray

ROOT = Path(__file__).resolve().parent.parent

# The suite runs on pytest-xdist's workers (make test: -n 2 --dist loadfile). Each worker's Ray
# lives in a temp folder of its own, so a driver that joins "the cluster this machine runs"
# (embedded farm render, ray.init() with no address) finds its own worker's, never the other's.
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["RAY_TMPDIR"] = f"/tmp/ray-{worker}"
# Every Ray the tests start (the farm's commands and servers start many) starts its workers when
# work needs them, not two idle ones at once: the suite is bound by the CPU of its two cores.
os.environ["RAY_prestart_worker_first_driver"] = "0"  # noqa: SIM112  (Ray spells it so)


# In CI every property test is derandomized (its examples follow from its own code, the same on
# every run) and a failure prints the blob that reproduces it; locally each run draws anew.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_report_header() -> str:
    """Which Hypothesis profile the run uses, first thing in the output."""
    current = settings()
    return f"hypothesis: derandomize={current.derandomize}, print_blob={current.print_blob}"


BUILDER = ROOT / "examples" / "build_shot.py"


@pytest.fixture(scope="session")
def blender() -> str:
    return find_blender()


@pytest.fixture
def ray_local():
    """This process's own local Ray, started once and shared by the tests that use it (starting
    Ray costs seconds), and started again after a module that needed a cluster of its own."""
    ensure_ray("local")


def pytest_sessionfinish(session: pytest.Session) -> None:
    ray.shutdown()


SceneMaker = Callable[..., Path]


@pytest.fixture(scope="session")
def make_scene(blender: str, tmp_path_factory: pytest.TempPathFactory) -> SceneMaker:
    """Build (once per set of arguments) the example shot at a test-sized resolution."""
    folder = tmp_path_factory.mktemp("scenes")
    built: dict[tuple, Path] = {}

    def make(
        width: int = 96, height: int = 54, samples: int = 4, frames: int = 24, *flags: str
    ) -> Path:
        """``flags``: the builder's own, e.g. ``--transparent``, ``--multilayer``."""
        key = (width, height, samples, frames, *flags)
        if key not in built:
            name = "".join(f.strip("-")[0] for f in flags)
            path = folder / f"shot_{width}x{height}_{samples}s_{frames}f{name}.blend"
            subprocess.run(
                [
                    blender,
                    "-b",
                    "--factory-startup",
                    "--python",
                    str(BUILDER),
                    "--",
                    str(path),
                    "--resolution",
                    f"{width}x{height}",
                    "--samples",
                    str(samples),
                    "--frames",
                    str(frames),
                    *flags,
                ],
                check=True,
                capture_output=True,
            )
            built[key] = path
        return built[key]

    return make


def blender_render(blender: str, scene: Path, frame: int, out: Path, python: str = "") -> Path:
    """Blender's own full-frame render of ``frame``: the reference the farm must match."""
    command = [blender, "-b", "--factory-startup", str(scene)]
    if python:
        command += ["--python-expr", python]
    command += ["-o", str(out.with_suffix("")) + "_####", "-f", str(frame)]
    subprocess.run(command, check=True, capture_output=True)
    return out.parent / f"{out.with_suffix('').name}_{frame:04d}{out.suffix}"


def pixels(path: Path) -> np.ndarray:
    """Decode an image as stored: its own pixel type, straight alpha left straight."""
    config = oiio.ImageSpec()
    config.attribute("oiio:UnassociatedAlpha", 1)
    image = oiio.ImageInput.open(str(path), config)
    assert image is not None, oiio.geterror()
    spec = image.spec()
    data = image.read_image(0, 0, 0, spec.nchannels, spec.format)
    image.close()
    return data


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    assert path, f"PostgreSQL's {name} not found: make setup installs Debian's postgresql"
    return path


@pytest.fixture(scope="session")
def postgres_url():
    """A real, throwaway PostgreSQL server on a Unix socket in a temp folder (no TCP port)."""
    # Not under pytest's temp root: that is private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="farm-pg-"))
    data = folder / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: use its own account
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]

    def pg(tool: str, *args: str, check: bool = True) -> None:
        subprocess.run([*as_user, _pg_bin(tool), *args], check=check, capture_output=True)

    pg("initdb", "-D", str(data), "-A", "trust", "-U", "farm")
    options = f"-k {folder} -c listen_addresses='' -c fsync=off"
    pg("pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start")
    pg("createdb", "-h", str(folder), "-U", "farm", "farm")
    yield f"postgresql+psycopg://farm@/farm?host={folder}"
    gc.collect()  # close the tests' pooled connections while the server still answers
    pg("pg_ctl", "-D", str(data), "-m", "immediate", "stop", check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'farm.db'}"
    url = request.getfixturevalue("postgres_url")
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:  # a clean database for every test
        # Sessions left open by earlier tests would hold locks the DROP waits on.
        connection.execute(
            sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class FarmServer:
    """A real ``farm server`` process on a loopback port, with a store of its own."""

    def __init__(
        self,
        data: Path,
        db: str | None = None,
        ray_address: str = "local",
        env: dict[str, str] | None = None,
    ) -> None:
        self.data, self.db, self.ray_address = data, db, ray_address
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None
        self.token = ""  # the first admin's, made by `farm admin init` before the first start

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, token: str | None = None) -> httpx.Client:
        """An API client with ``token`` (default: the admin's)."""
        return httpx.Client(
            base_url=f"{self.url}/api/v1",
            timeout=60,
            headers={"Authorization": f"Bearer {token or self.token}"},
        )

    def start(self, timeout: float = 60.0) -> FarmServer:
        store = ["--db", self.db] if self.db else []
        if not self.token:
            init = [sys.executable, "-m", "farm", "admin", "init", "--data-dir", str(self.data)]
            done = subprocess.run(
                [*init, *store, "--name", "admin", "--json"], capture_output=True, text=True
            )
            assert done.returncode == 0, done.stderr
            self.token = json.loads(done.stdout)["token"]
        command = [sys.executable, "-m", "farm", "server", "--port", str(self.port)]
        command += ["--data-dir", str(self.data), "--ray-address", self.ray_address, *store]
        log = (self.data.parent / f"server-{self.port}.log").open("a")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env=self.env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    return self
            time.sleep(0.2)
        raise AssertionError(f"the farm server did not answer in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return (self.data.parent / f"server-{self.port}.log").read_text()

    def kill(self) -> None:
        """SIGKILL the server and everything it started (its Ray, its Blenders)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
        self.kill()


@pytest.fixture(scope="module")
def farm_server(tmp_path_factory: pytest.TempPathFactory):
    """One real farm server (and its own local Ray) for a test module."""
    server = FarmServer(tmp_path_factory.mktemp("server") / "data").start()
    yield server
    server.stop()


# The longest modules first (measured: seconds in a serial run), so that the two workers end
# together rather than one waiting on the training runs at the end; the rest follow in order.
LONGEST_FIRST = [
    "test_lab_machines",  # ~150 s: the one lab (head, server, film and ML nodes, nodes lost)
    "test_train",  # ~140 s on a busy worker
    "test_cli",  # ~130 s
    "test_server_restart",
    "test_train_denoise",
    "test_api",
    "test_bit_exact",
    "test_accounts",
    "test_failures",
    "test_comp",
    "test_color",
    "test_fairshare",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest modules first. Each module runs on one worker (--dist loadfile: its
    module-scoped servers and clusters start once); --no-loadscope-reorder keeps this order."""
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))
