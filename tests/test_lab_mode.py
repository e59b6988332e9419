"""Lab mode as a trainee without the shared drive meets it: upload a scene, render it on the
server, fetch the frames back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil

from farm.store.scenes import digest_of


def farm(*args: str, server, cwd) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FARM_URL": server.url,
        "FARM_TOKEN": server.token,
        "XDG_CONFIG_HOME": str(cwd),
    }
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_an_uploaded_scene_renders_on_the_server_and_its_frames_come_back(
    farm_server, make_scene, tmp_path
) -> None:
    scene = make_scene(64, 36, samples=2, frames=4)
    args = ["submit", "render", str(scene), "--frames", "1-3", "--upload", "--threads", "1"]
    submitted = farm(*args, "--json", server=farm_server, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["id"]
    digest = digest_of(scene)
    stored = farm_server.client().get(f"{farm_server.url}/api/v1/scenes/{digest}").json()
    assert stored == {"scene": f"sha256:{digest}", "bytes": scene.stat().st_size}

    watched = farm("watch", str(job), server=farm_server, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    status = farm_server.client().get(f"{farm_server.url}/api/v1/jobs/{job}").json()
    assert (status["name"], status["state"]) == (scene.name, "done")

    fetched = farm("fetch", str(job), "frames", "--json", server=farm_server, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    files = json.loads(fetched.stdout)["files"]
    names = [f"{scene.stem}_{f:04d}.exr" for f in (1, 2, 3)]
    assert sorted(os.path.basename(f) for f in files) == names
    outputs = farm_server.client().get(f"{farm_server.url}/api/v1/jobs/{job}/outputs").json()
    for output in outputs:  # byte for byte what the server wrote
        with open(output["path"], "rb") as written:
            assert (tmp_path / "frames" / os.path.basename(output["path"])).read_bytes() == (
                written.read()
            )

    # The same scene again is not sent again; a relative output may not leave the user's folder.
    escape = farm(*args, "-o", "../../x_####.exr", server=farm_server, cwd=tmp_path)
    assert escape.returncode == 2
    folder = farm_server.data / "outputs" / "admin"
    assert escape.stderr.strip() == (
        f"error: output '../../x_####.exr' is outside your folder {folder}"
    )
    wrong = farm_server.client().put(
        f"{farm_server.url}/api/v1/scenes/{'0' * 64}", content=b"not that"
    )
    assert wrong.status_code == 400 and "sha256 is" in wrong.json()["detail"]


def test_cancel_stops_the_running_blenders_and_nothing_is_left_queued(
    farm_server, make_scene, tmp_path
) -> None:
    scene = make_scene(96, 54, samples=3000, frames=6)  # frames of several seconds
    api = f"{farm_server.url}/api/v1"
    http = farm_server.client()
    body = {"scene": str(scene), "output": str(tmp_path / "f_####.exr"), "threads": 1}
    job = http.post(f"{api}/jobs/render", json=body).json()["id"]
    deadline = time.monotonic() + 60
    while not http.get(f"{api}/jobs/{job}").json()["tasks"]["running"]:
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.1)
    assert wait_until(lambda: blenders_on(scene), 30)

    cancelled = farm("cancel", str(job), server=farm_server, cwd=tmp_path)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"job {job}: cancelled"
    # The slots that rendered the job died with their Blenders; a warm slot still opening on the
    # scene may stay for the next job, idle.
    assert wait_until(lambda: not rendering(blenders_on(scene)), 15), "a Blender went on rendering"
    assert wait_until(lambda: http.get(f"{api}/jobs/{job}").json()["tasks"]["running"] == 0, 15)
    status = http.get(f"{api}/jobs/{job}").json()
    assert status["state"] == "cancelled"
    assert status["tasks"]["queued"] == 0 and status["tasks"]["cancelled"] == 6
    assert not list(tmp_path.glob("f_*.exr"))
    again = farm("cancel", str(job), server=farm_server, cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: job {job} is cancelled: nothing to change"


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def blenders_on(scene) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if "blender" in (p.info["name"] or "") and str(scene) in " ".join(p.info["cmdline"] or [])
    ]


def rendering(blenders: list[psutil.Process]) -> list[psutil.Process]:
    """The Blenders that used the CPU in the last half second."""

    def cpu(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system

    before = {p: cpu(p) for p in blenders}
    time.sleep(0.5)
    return [p for p in blenders if cpu(p) - before[p] > 0.1]
