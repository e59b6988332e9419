"""A lab as a lab is set up: a Ray head with its token, a film node and an ML node that share no
folder with the head nor with the trainee's laptop (tests/harness.py), a farm server on the head,
and the CLI on the laptop."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from farm.store.scenes import digest_of
from tests.conftest import pixels
from tests.harness import Lab


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        lab.start_head()
        lab.join("film", "film")
        lab.join("ml", "ml")
        yield lab
    finally:
        lab.close()


def test_nodes_join_with_the_heads_token_and_a_wrong_token_is_refused(lab: Lab) -> None:
    nodes = lab.farm("nodes", "--json")
    assert nodes.returncode == 0, nodes.stderr
    labs = sorted(tuple(n["labs"]) for n in json.loads(nodes.stdout) if n["alive"])
    assert labs == [(), ("film",), ("ml",)]

    stranger = lab.laptop
    (stranger.path("/tmp/home/ray-token")).write_text("0" * 64)
    refused = stranger.run(
        "farm", "node", "join", "--address", lab.ray_address, "--token-file", "/tmp/home/ray-token"
    )
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: the Ray cluster at {lab.ray_address} refused the token in /tmp/home/ray-token: "
        "use the head node's ~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
    )
    none = stranger.run("farm", "node", "join", "--address", lab.ray_address)
    assert none.returncode == 2
    assert none.stderr.strip().startswith(
        "error: no Ray cluster token at /tmp/home/.ray/auth_token"
    )


SHOT = "/tmp/shot"  # on the laptop
SCENE = f"{SHOT}/shots/shot.blend"


@pytest.fixture(scope="module")
def shot(lab: Lab, blender: str) -> str:
    """The trainee's textured shot (tests/textured_shot.py), built on the laptop, and Blender's
    own render of its two frames there: the reference."""
    builder = lab.laptop.path("/tmp/textured_shot.py")
    builder.write_text((Path(__file__).parent / "textured_shot.py").read_text())
    build = [blender, "-b", "--factory-startup", "--python-exit-code", "1"]
    built = lab.laptop.run(*build, "--python", "/tmp/textured_shot.py", "--", SHOT)
    assert built.returncode == 0, built.stdout + built.stderr
    reference = [blender, "-b", "--factory-startup", SCENE, "-o", "/tmp/ref/ref_####"]
    rendered = lab.laptop.run(*reference, "-s", "1", "-e", "2", "-a")
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    return SCENE


def test_a_shot_with_textures_a_sequence_and_a_library_renders_on_the_film_node_bit_for_bit(
    lab: Lab, shot: str
) -> None:
    """Nothing of the shot is on the head or the node: the scene and the six files it uses travel
    by hash, the node lays them out and Blender finds them; a second submission sends nothing."""
    first = lab.farm(
        "submit", "render", shot, "--upload", "--lab", "film", "--threads", "1", "--json"
    )
    assert first.returncode == 0, first.stderr
    submitted = json.loads(first.stdout)
    total = sum(
        lab.laptop.path(p).stat().st_size
        for p in [
            SCENE,
            f"{SHOT}/tex/wood.png",
            f"{SHOT}/abs/marble.png",
            f"{SHOT}/assets/props.blend",
            f"{SHOT}/assets/tex/libtex.png",
            *(f"{SHOT}/tex/seq/frame_{f:04d}.png" for f in (1, 2, 3)),
        ]
    )
    assert submitted["sent"] == {"files": 8, "bytes": total, "of": 8}
    job = str(submitted["id"])
    watched = lab.farm("watch", job)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    fetched = lab.farm("fetch", job, "/tmp/frames", "--json")
    assert fetched.returncode == 0, fetched.stderr
    frames = sorted(json.loads(fetched.stdout)["files"])
    assert [Path(f).name for f in frames] == ["shot_0001.exr", "shot_0002.exr"]
    for frame, path in zip((1, 2), frames, strict=True):
        farm_pixels = pixels(lab.laptop.path(path))
        assert np.array_equal(farm_pixels, pixels(lab.laptop.path(f"/tmp/ref/ref_{frame:04d}.exr")))
    assert not np.array_equal(
        pixels(lab.laptop.path(frames[0])), pixels(lab.laptop.path(frames[1]))
    )
    attempts = json.loads(lab.farm("logs", job, "--json").stdout)
    film = lab.nodes["film"]
    assert {a["node"] for a in attempts} == {node_id(lab, "film")}, attempts
    trees = film.path("/tmp/home/.cache/farm/node/trees")  # the node's cache: the shot laid out
    assert len(list(trees.glob(f"*/{SCENE.lstrip('/')}"))) == 1

    again = lab.farm("submit", "render", shot, "--upload", "--threads", "1", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["sent"] == {"files": 0, "bytes": 0, "of": 8}
    lab.api().post(f"/jobs/{json.loads(again.stdout)['id']}/cancel")


def test_a_shot_missing_a_texture_is_refused_at_submission_naming_it(lab: Lab, shot: str) -> None:
    texture = lab.laptop.path(f"{SHOT}/tex/wood.png")
    kept = texture.read_bytes()
    texture.unlink()
    try:
        jobs = lab.api().get("/jobs").json()
        refused = lab.farm("submit", "render", shot, "--upload")
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"error: shot.blend: image 'wood.png' uses {SHOT}/tex/wood.png, which does not exist"
        )
        assert lab.api().get("/jobs").json() == jobs
    finally:
        texture.write_bytes(kept)


def node_id(lab: Lab, name: str) -> str:
    """The Ray node id of the lab node ``name`` (the one whose labs include it)."""
    nodes = lab.api().get("/nodes").json()
    [node] = [n for n in nodes if n["alive"] and name in n["labs"]]
    return node["id"]


def test_uploads_are_checked_and_outputs_stay_in_the_users_folder(lab: Lab, shot: str) -> None:
    """The same scene again is not stored twice; bytes that do not match their name are refused;
    a relative output may not climb out of the user's folder on the server."""
    api = lab.api()
    digest = digest_of(lab.laptop.path(SCENE))
    api.put(f"/scenes/{digest}", content=lab.laptop.path(SCENE).read_bytes())  # had or not
    stored = api.get(f"/scenes/{digest}").json()
    assert stored == {"scene": f"sha256:{digest}", "bytes": lab.laptop.path(SCENE).stat().st_size}
    wrong = api.put(f"/scenes/{'0' * 64}", content=b"not that")
    assert wrong.status_code == 400 and "sha256 is" in wrong.json()["detail"]
    wrong = api.put(f"/files/{'0' * 64}", content=b"not that")
    assert wrong.status_code == 400 and "sha256 is" in wrong.json()["detail"]
    assert api.post("/files/missing", json={"digests": ["0" * 64]}).json() == {
        "missing": ["0" * 64]
    }
    # A submission's file list is the client's word: a path that would land outside the node's
    # tree, or a relative one, is refused before any node sees it.
    stored = api.put(f"/files/{hashlib.sha256(b'x').hexdigest()}", content=b"x").json()["file"]
    for hostile in ("/tmp/a/../../../etc/cron.d/x", "tex/wood.png", "C:relative.png"):
        body = {
            "scene": f"sha256:{digest}",
            "origin": SCENE,
            "files": {hostile: stored},
            "threads": 1,
        }
        refused = api.post("/jobs/render", json=body)
        assert refused.status_code == 400, refused.text
        detail = refused.json()["detail"]
        assert detail.startswith("the scene's files: ") and "\n" not in detail, detail
    escape = lab.farm("submit", "render", shot, "--upload", "-o", "../../x_####.exr")
    assert escape.returncode == 2
    folder = f"{Lab.DATA}/outputs/admin"
    assert (
        escape.stderr.strip() == f"error: output '../../x_####.exr' is outside your folder {folder}"
    )


def test_cancel_stops_the_nodes_blenders_and_nothing_is_left_queued(lab: Lab, make_scene) -> None:
    slow = make_scene(96, 54, samples=3000, frames=6)  # frames of several seconds
    laptop_scene = lab.laptop.path("/tmp/slow/slow.blend")
    laptop_scene.parent.mkdir(parents=True, exist_ok=True)
    laptop_scene.write_bytes(slow.read_bytes())
    api = lab.api()
    submitted = lab.farm(
        "submit", "render", "/tmp/slow/slow.blend", "--upload", "--threads", "1", "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["id"]
    assert wait_until(lambda: api.get(f"/jobs/{job}").json()["tasks"]["running"], 60), "no task ran"
    assert wait_until(lambda: blenders_on("slow.blend"), 30)

    cancelled = lab.farm("cancel", str(job))
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"job {job}: cancelled"
    # The slots that rendered the job died with their Blenders; a warm slot still opening on the
    # scene may stay for the next job, idle.
    assert wait_until(lambda: not rendering(blenders_on("slow.blend")), 15), "a Blender rendered on"
    assert wait_until(lambda: api.get(f"/jobs/{job}").json()["tasks"]["running"] == 0, 15)
    status = api.get(f"/jobs/{job}").json()
    assert status["state"] == "cancelled"
    assert status["tasks"]["queued"] == 0 and status["tasks"]["cancelled"] == 6
    assert api.get(f"/jobs/{job}/outputs").json() == []
    again = lab.farm("cancel", str(job))
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: job {job} is cancelled: nothing to change"


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def blenders_on(name: str) -> list[psutil.Process]:
    """The Blenders (of any machine: they share the process table) with ``name`` open."""
    return [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if "blender" in (p.info["name"] or "") and name in " ".join(p.info["cmdline"] or [])
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
