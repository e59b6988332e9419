"""Lab mode as a trainee without the shared drive meets it: upload a scene, render it on the
server, fetch the frames back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from farm.scenes import digest_of


def farm(*args: str, server, cwd) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FARM_URL": server.url, "XDG_CONFIG_HOME": str(cwd)}
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
    stored = httpx.get(f"{farm_server.url}/api/v1/scenes/{digest}").json()
    assert stored == {"scene": f"sha256:{digest}", "bytes": scene.stat().st_size}

    watched = farm("watch", str(job), server=farm_server, cwd=tmp_path)
    assert watched.returncode == 0, watched.stderr
    status = httpx.get(f"{farm_server.url}/api/v1/jobs/{job}").json()
    assert (status["name"], status["state"]) == (scene.name, "done")

    fetched = farm("fetch", str(job), "frames", "--json", server=farm_server, cwd=tmp_path)
    assert fetched.returncode == 0, fetched.stderr
    files = json.loads(fetched.stdout)["files"]
    names = [f"{scene.stem}_{f:04d}.exr" for f in (1, 2, 3)]
    assert sorted(os.path.basename(f) for f in files) == names
    outputs = httpx.get(f"{farm_server.url}/api/v1/jobs/{job}/outputs").json()
    for output in outputs:  # byte for byte what the server wrote
        with open(output["path"], "rb") as written:
            assert (tmp_path / "frames" / os.path.basename(output["path"])).read_bytes() == (
                written.read()
            )

    # The same scene again is not sent again; a relative output may not leave the outputs folder.
    escape = farm(*args, "-o", "../../x_####.exr", server=farm_server, cwd=tmp_path)
    assert escape.returncode == 2
    assert escape.stderr.strip() == (
        "error: output '../../x_####.exr' leaves the server's outputs folder"
    )
    wrong = httpx.put(f"{farm_server.url}/api/v1/scenes/{'0' * 64}", content=b"not that")
    assert wrong.status_code == 400 and "sha256 is" in wrong.json()["detail"]
