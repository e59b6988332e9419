"""Sending a textured shot to a farm server: ``farm submit render --upload`` vs plain ``rsync``.

The shot: ``TEXTURES`` incompressible textures of about 10 MB each (random pixels, PNG stored
without compression) in ``ROOT/tex/``, and ``ROOT/shots/shot.blend`` (built by Blender) whose
materials use every one of them by a relative ``//../tex/…`` path, one plane and one material a
texture.

Two senders, on loopback, each to a receiver with an empty store of its own, case by case in
turn (farm, then rsync) so both see the same machine load:

* **farm**: ``farm submit render shot.blend --upload --json`` against a real ``farm server``
  (``--ray-address local``, its own data dir): Blender lists the files the .blend uses, the client
  hashes each (sha256), asks ``POST /files/missing`` and ``PUT``\\ s only what the server lacks.
  The job is queued after a long probe job (``--after``), so nothing renders, and is cancelled
  with ``farm cancel`` once timed (not counted).
* **rsync**: ``rsync -a --stats ROOT/ rsync://127.0.0.1:PORT/mod/`` to an ``rsync --daemon``;
  its bytes are its "Total bytes sent".

Cases: the first upload; the second, nothing changed; one texture rewritten with new random
bytes (same size). Each round starts both receivers afresh (the server's Ray given time to
settle first); rows are the best of ``ROUNDS``, every run listed below the table.
For reference: reading and hashing every file once (hashlib), a raw loopback copy of every byte
(``socket.sendfile`` to a thread that discards them), Blender listing the shot's files
(``farm.scene_files.scene_files``) and the CLI's start-up (``farm submit render --help``).

Needs ``rsync`` (Debian: ``apt-get install rsync``).
Run: ``.venv/bin/python benchmarks/upload.py`` (about two minutes on two cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import OpenImageIO as oiio

from farm.config import find_blender
from farm.scene_files import scene_files

FARM = [sys.executable, "-m", "farm"]
TEXTURES = 20
SIDE = 1826  # 1826² RGB pixels of 8 bits: 10.0 MB a texture
ROUNDS = 3
SETTLE_S = 3.0  # after the server's Ray has started its first worker
CASES = ["first upload", "again, nothing changed", "one texture rewritten"]

# Runs inside Blender: one plane and one material a texture of ROOT/tex, saved with relative paths.
BUILD = r"""
import os
import sys

import bpy

root = sys.argv[sys.argv.index("--") + 1]
bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.resolution_x, scene.render.resolution_y = 64, 64
scene.frame_start = scene.frame_end = 1
names = sorted(os.listdir(os.path.join(root, "tex")))
for index, name in enumerate(names):
    bpy.ops.mesh.primitive_plane_add(location=(index * 2.5, 0, 0))
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    image = nodes.new("ShaderNodeTexImage")
    image.image = bpy.data.images.load(os.path.join(root, "tex", name))
    material.node_tree.links.new(image.outputs["Color"], nodes["Principled BSDF"].inputs[0])
    bpy.context.object.data.materials.append(material)
bpy.ops.object.camera_add(location=(len(names) * 1.25, -30, 10), rotation=(1.2, 0, 0))
scene.camera = bpy.context.object
shot = os.path.join(root, "shots", "shot.blend")
os.makedirs(os.path.dirname(shot), exist_ok=True)
bpy.ops.wm.save_as_mainfile(filepath=shot, relative_remap=True)
for image in bpy.data.images:
    assert image.filepath.startswith("//../tex/"), image.filepath
"""

RSYNCD = """pid file = {folder}/rsyncd.pid
log file = {folder}/rsyncd.log
use chroot = no
uid = {uid}
gid = {gid}
[mod]
path = {folder}/dest
read only = no
"""


def fail(message: str) -> None:
    sys.exit(f"benchmarks/upload.py: {message}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        fail(f"command failed: {' '.join(command)}\n{(done.stderr or done.stdout)[-2000:]}")
    return seconds, done.stdout


def write_texture(path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    spec = oiio.ImageSpec(SIDE, SIDE, 3, oiio.UINT8)
    spec.attribute("png:compressionLevel", 0)  # random pixels do not compress: do not try
    out = oiio.ImageOutput.create(str(path))
    if out is None or not out.open(str(path), spec) or not out.write_image(pixels):
        fail(f"cannot write {path}: {oiio.geterror()}")
    out.close()


def build_shot(root: Path, blender: str, rng: np.random.Generator) -> Path:
    (root / "tex").mkdir(parents=True)
    for index in range(TEXTURES):
        write_texture(root / "tex" / f"noise_{index:02d}.png", rng)
    script = root.parent / "build_shot.py"
    script.write_text(BUILD)
    command = [blender, "-b", "--factory-startup", "--python-exit-code", "1"]
    run([*command, "--python", str(script), "--", str(root)])
    return root / "shots" / "shot.blend"


def shot_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


class Farm:
    """A real ``farm server`` on a loopback port with a data dir of its own, and its client."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        data = folder / "data"
        _, out = run([*FARM, "admin", "init", "--data-dir", str(data), "--name", "admin", "--json"])
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env |= {"FARM_URL": self.url, "FARM_TOKEN": json.loads(out)["token"]}
        command = [*FARM, "server", "--port", str(port), "--data-dir", str(data)]
        self.log = (folder / "server.log").open("w")
        self.process = subprocess.Popen(
            [*command, "--ray-address", "local"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=self.env,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                fail(f"the farm server exited:\n{(folder / 'server.log').read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.2)
        else:
            fail("the farm server did not answer within 120 s")
        # Every render job waits on this one, so nothing renders (each is cancelled anyway).
        probe = [*FARM, "submit", "probe", "--seconds", "3600", "--json"]
        self.blocker = json.loads(run(probe, self.env)[1])["id"]
        self.settle()

    def settle(self) -> None:
        """Wait until the blocker runs (the server's Ray has started its worker), then a little
        more, so that no round measures the server still starting up."""
        headers = {"Authorization": f"Bearer {self.env['FARM_TOKEN']}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = httpx.get(f"{self.url}/api/v1/jobs/{self.blocker}", headers=headers).json()
            if job["state"] == "running":
                time.sleep(SETTLE_S)
                return
            time.sleep(0.2)
        fail(f"the farm server's blocking probe job did not start within 60 s: {job}")

    def send(self, scene: Path) -> tuple[float, dict[str, int]]:
        command = [*FARM, "submit", "render", str(scene), "--upload", "--json"]
        seconds, out = run([*command, "--after", str(self.blocker)], self.env)
        job = json.loads(out)
        run([*FARM, "cancel", str(job["id"])], self.env)
        return seconds, job["sent"]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # its Ray and anything left
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log.close()


class Rsync:
    """An ``rsync --daemon`` on a loopback port, one module writing into an empty folder."""

    def __init__(self, folder: Path) -> None:
        (folder / "dest").mkdir(parents=True)
        config = folder / "rsyncd.conf"
        config.write_text(RSYNCD.format(folder=folder, uid=os.getuid(), gid=os.getgid()))
        self.port = free_port()
        self.process = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={config}", f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                fail(f"rsync --daemon did not start: {(folder / 'rsyncd.log').read_text()}")
            time.sleep(0.05)

    def send(self, root: Path) -> tuple[float, int]:
        target = f"rsync://127.0.0.1:{self.port}/mod/"
        seconds, out = run(["rsync", "-a", "--stats", f"{root}/", target])
        found = re.search(r"Total bytes sent: ([\d,]+)", out)
        if not found:
            fail(f"no 'Total bytes sent' in rsync --stats:\n{out}")
        return seconds, int(found.group(1).replace(",", ""))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def hash_all(files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        with path.open("rb") as handle:
            hashlib.file_digest(handle, "sha256")
    return time.perf_counter() - started


def loopback_copy(files: list[Path]) -> float:
    """Seconds to send every byte through a loopback TCP socket to a reader that drops them."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        total = sum(p.stat().st_size for p in files)
        got = [0]

        def drain() -> None:
            connection, _ = server.accept()
            with connection:
                while chunk := connection.recv(1 << 20):
                    got[0] += len(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        started = time.perf_counter()
        with socket.create_connection(server.getsockname()) as out:
            for path in files:
                with path.open("rb") as handle:
                    out.sendfile(handle)
        reader.join()
        seconds = time.perf_counter() - started
    assert got[0] == total, (got[0], total)
    return seconds


def main() -> None:
    if shutil.which("rsync") is None:
        fail("rsync is not installed: install it first (Debian: apt-get install rsync)")
    blender = find_blender()
    work = Path(tempfile.mkdtemp(prefix="farm-bench-upload-"))
    rng = np.random.default_rng(5)
    farm_runs: dict[str, list[tuple[float, dict[str, int]]]] = {case: [] for case in CASES}
    rsync_runs: dict[str, list[tuple[float, int]]] = {case: [] for case in CASES}
    started = time.perf_counter()
    farm = rsync = None
    try:
        root = work / "shot"
        scene = build_shot(root, blender, rng)
        files = shot_files(root)
        total = sum(p.stat().st_size for p in files)
        listed = len(scene_files(scene))
        if listed != TEXTURES:
            fail(f"Blender lists {listed} files of the shot, not its {TEXTURES} textures")
        for round_ in range(ROUNDS):
            farm = Farm(work / f"farm{round_}")
            rsync = Rsync(work / f"rsync{round_}")
            for case in CASES:
                if case == "one texture rewritten":
                    write_texture(root / "tex" / f"noise_{round_:02d}.png", rng)
                farm_runs[case].append(farm.send(scene))
                rsync_runs[case].append(rsync.send(root))
            farm.stop()
            rsync.stop()
            farm = rsync = None
        hash_s = min(hash_all(files) for _ in range(ROUNDS))
        copy_s = min(loopback_copy(files) for _ in range(ROUNDS))
        list_s = []
        for _ in range(ROUNDS):
            began = time.perf_counter()
            scene_files(scene)
            list_s.append(time.perf_counter() - began)
        cli_s = min(run([*FARM, "submit", "render", "--help"])[0] for _ in range(ROUNDS))
    finally:
        for receiver in (farm, rsync):
            if receiver is not None:
                with contextlib.suppress(Exception):
                    receiver.stop()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started

    first = farm_runs[CASES[0]][0][1]
    if first["of"] != TEXTURES + 1:
        fail(f"the farm sent a shot of {first['of']} files, not {TEXTURES + 1}")

    def mb(count: int) -> str:
        if not count:
            return "0"
        return f"{count / 1e6:.1f}" if count >= 1e5 else f"{count / 1e6:.3f}"

    print(
        f"A shot of {len(files)} files, {total / 1e6:.0f} MB ({TEXTURES} random-pixel textures "
        f"of {SIDE}² RGB PNG, and the .blend); loopback; {os.cpu_count()} cores; best of "
        f"{ROUNDS} rounds, each to receivers started empty (every run below the table).\n"
    )
    print("| case | farm s | farm MB sent | rsync s | rsync MB sent | farm/rsync |")
    print("|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        farm_s, sent = min(farm_runs[case], key=lambda r: r[0])
        rsync_s, rsync_bytes = min(rsync_runs[case])
        print(
            f"| {case} | {farm_s:.2f} | {mb(sent['bytes'])} ({sent['files']} of {sent['of']} "
            f"files) | {rsync_s:.2f} | {mb(rsync_bytes)} | {farm_s / rsync_s:.1f} |"
        )
    print(f"| reference: read + sha256 every file once (hashlib) | {hash_s:.2f} | | | | |")
    print(f"| reference: raw loopback TCP copy of every byte | {copy_s:.2f} | | | | |")
    print()
    for case in CASES:
        farm_all = " ".join(f"{s:.2f}" for s, _ in farm_runs[case])
        rsync_all = " ".join(f"{s:.2f}" for s, _ in rsync_runs[case])
        print(f"* {case}: farm {farm_all}; rsync {rsync_all}")
    unchanged = min(s for s, _ in farm_runs[CASES[1]])
    fixed = min(list_s) + hash_s + cli_s
    # What sending every byte adds: the first upload less the unchanged one, of the same round.
    pairs = zip(farm_runs[CASES[0]], farm_runs[CASES[1]], strict=True)
    sending = statistics.median(first - again for (first, _), (again, _) in pairs)
    print(
        f"\nWhere the farm's time goes: even with nothing to send ({unchanged:.2f} s), it starts "
        f"its CLI (`farm submit render --help`: {cli_s:.2f} s), starts a Blender that opens the "
        f".blend and lists its files ({min(list_s):.2f} s) and hashes all {total / 1e6:.0f} MB "
        f"({hash_s:.2f} s), {fixed:.2f} s measured apart (best of {ROUNDS} each); the "
        f"{max(unchanged - fixed, 0):.2f} s left is HTTP (`POST /files/missing`, `GET "
        f"/scenes/…`, the submission) and the server. Sending all "
        f"{total / 1e6:.0f} MB adds {sending:.2f} s (median of the rounds: "
        f"{total / 1e6 / sending:.0f} MB/s; the "
        f"client reads each file again into HTTP PUTs, the server hashes and writes it). "
        f"rsync skips an unchanged file by its size and mtime, reading nothing. Whole run: "
        f"{elapsed:.0f} s."
    )


if __name__ == "__main__":
    main()
