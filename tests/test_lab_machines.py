"""A lab as a lab is set up: a Ray head with its token, a film node and an ML node that share no
folder with the head nor with the trainee's laptop (tests/harness.py), a farm server on the head,
and the CLI on the laptop. One lab for the whole module (starting one costs half a minute):

* nodes join with the head's token; a shot with textures, a sequence and a library travels by hash
  and renders on the film node bit for bit; uploads are checked;
* lab placement: a render for the film lab runs only on film nodes; a node failing three tasks of
  a job is blocked for it;
* a comp ``--after`` an uploaded render: every file a comp task reads travels to the node through
  Ray's object store, what it makes comes back to the server, ``farm fetch`` brings the frames,
  previews, contact sheet and movie to the laptop, and the node keeps nothing of it;
* a comp of plates on the laptop uploads them; a training run on an uploaded dataset, one of its
  workers killed, resumes from the checkpoint the server kept; ``farm fetch`` brings it all back;
* a cancel stops the nodes' Blenders;
* nodes the test joins itself, powered off mid-job (SIGKILL, as pulling the plug), lose no frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import av
import numpy as np
import psutil
import pytest
import torch
from sklearn.datasets import load_digits
from sqlalchemy import create_engine, select

from farm.store.scenes import digest_of
from farm.store.tables import Attempt, Job, Task, session
from farm.tiling.imagefile import Pixels, read_pixels, write_frame
from pipelines import comp
from tests.conftest import pixels
from tests.harness import Lab, Machine
from tests.test_comp import COMP_OVER_PLATE
from workers.comp import header, make_frame

# The head's Ray takes a node that stops answering for dead after three failed health checks a
# second apart (Ray's default: five, three seconds apart); a check still waits 10 s for a live
# node's answer, so a busy node is not taken for dead. An admin sets the same on ``ray start``.
QUICK_NODE_LOSS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    """The head, a film node with two CPUs (a render's slots and a comp's frames side by side) and
    an ML node with one. A test that powers a node off joins that node itself."""
    lab = Lab(tmp_path_factory.mktemp("lab"), head_env=QUICK_NODE_LOSS)
    try:
        lab.start_head()
        lab.join("film", "film", cpus=2)
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
    assert {a["node"] for a in attempts} == {film.node_id}, attempts
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


def test_a_node_failing_three_tasks_of_a_job_is_blocked_for_it(lab: Lab) -> None:
    """A probe runs on any node with CPUs: the film and ML nodes. Every task fails its first
    attempt: six failures over two nodes, so one node reaches three."""
    submitted = lab.farm(
        "submit", "probe", "--tasks", "6", "--seconds", "0.3", "--fail-first", "1",
        "--retries", "4", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["id"]
    watched = lab.farm("watch", str(job))
    assert watched.returncode == 0, watched.stdout + watched.stderr
    store = lab.head.path(f"{Lab.DATA}/farm.db")  # the server's own, read beside it
    db = session(create_engine(f"sqlite:///file:{store}?mode=ro&uri=true"))
    row = db.get(Job, job)
    assert row is not None and row.state == "done"
    assert len(row.blocked_nodes) == 1  # the other node must stay: it is all the job has left
    [blocked] = row.blocked_nodes
    assert blocked in {lab.nodes["film"].node_id, lab.nodes["ml"].node_id}
    tries = db.scalars(select(Attempt).join(Task).where(Task.job_id == job))
    on_blocked = [a for a in tries if a.node == blocked]
    third = sorted(a.ended_at for a in on_blocked if a.status == "failed")[2]
    assert all(a.started_at <= third for a in on_blocked)  # nothing started there after the block


# A render for the film lab and a comp after it: a small multilayer render with a see-through sky.
OUTPUTS = f"{Lab.DATA}/outputs/admin"  # the admin's folder on the server (the head)
LAYERED = "/tmp/layered/shot.blend"  # on the laptop
FRAMES = (1, 2, 3)


@pytest.fixture(scope="module")
def render(lab: Lab, make_scene) -> str:
    """The multilayer render, uploaded from the laptop for the film lab, and done."""
    scene = lab.laptop.path(LAYERED)
    scene.parent.mkdir(parents=True)
    scene.write_bytes(
        make_scene(32, 18, 2, len(FRAMES), "--transparent", "--multilayer").read_bytes()
    )
    submitted = lab.farm(
        "submit", "render", LAYERED, "--upload", "--lab", "film", "--threads", "1",
        "-o", "renders/layers_####.exr", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = str(json.loads(submitted.stdout)["id"])
    watched = lab.farm("watch", job)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    return job


def test_a_render_for_the_film_lab_runs_only_on_film_nodes(lab: Lab, render: str) -> None:
    """The ML node had a CPU free all along (a slot for each frame would have fitted only with
    it); the render kept to the film node."""
    api = lab.api()
    assert api.get(f"/jobs/{render}").json()["state"] == "done"
    attempts = json.loads(lab.farm("logs", render, "--json").stdout)
    assert {a["node"] for a in attempts} == {lab.nodes["film"].node_id}, attempts
    [ml] = [n for n in api.get("/nodes").json() if n["id"] == lab.nodes["ml"].node_id]
    assert ml["alive"] and ml["cpus"] == 1 and ml["labs"] == ["ml"]
    outputs = api.get(f"/jobs/{render}/outputs").json()
    assert sorted(o["name"] for o in outputs) == [f"layers_{f:04d}.exr" for f in FRAMES]


# Plates are not uploaded (only a render's scene and its files are): a comp's plate is a file on
# the server already, named by its path there.
def spec_for(plate: str, out: str, retries: int, review: bool = True) -> str:
    """tests/test_comp.py's comp over a plate, its paths as the server has them."""
    text = COMP_OVER_PLATE.replace('"plates/sky_####.exr"', f'"{plate}"')
    text = text.replace('"comp/', f'"{out}/')
    return f"retries = {retries}\n" + (text if review else text.split("[review]")[0])


def plate_on_server(lab: Lab, name: str) -> Path:
    from examples.make_plate import plate

    path = lab.head.path(f"{OUTPUTS}/plates/{name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_frame(path, Pixels(plate(32, 18, 1), ("R", "G", "B", "A")), "zip")
    return path


def submit_comp(lab: Lab, render: str, text: str) -> str:
    lab.laptop.path("/tmp/home/comp.toml").write_text(text)
    submitted = lab.farm(
        "submit", "comp", "comp.toml", "--after", render, "--lab", "film", "--json"
    )
    assert submitted.returncode == 0, submitted.stderr
    return str(json.loads(submitted.stdout)["id"])


def test_a_comp_after_an_uploaded_render_needs_no_shared_folder(
    lab: Lab, render: str, tmp_path: Path
) -> None:
    plate_on_server(lab, "sky.exr")  # a still: the same plate under every frame
    out = f"{OUTPUTS}/comp"
    spec = spec_for(f"{OUTPUTS}/plates/sky.exr", out, retries=2)
    job = submit_comp(lab, render, spec)
    watched = lab.farm("watch", job)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    status = lab.api().get(f"/jobs/{job}").json()
    assert status["state"] == "done", status
    outputs = status["outputs"]
    assert outputs["frames"] == [f"{out}/shot_{f:04d}.exr" for f in FRAMES]
    assert outputs["previews"] == [f"{out}/preview/shot_{f:04d}.png" for f in FRAMES]
    assert (outputs["contact_sheet"], outputs["movie"]) == (f"{out}/contact.png", f"{out}/shot.mp4")
    attempts = json.loads(lab.farm("logs", job, "--json").stdout)
    assert len({a["node"] for a in attempts}) == 1 and len(attempts) == len(FRAMES) + 1

    # The frames come back to the laptop; the same comp made here from the same render and plate
    # (the code embedded mode runs, files in place) gives the same pixels, bit for bit.
    fetched = lab.farm("fetch", job, "/tmp/comp", "--json")
    assert fetched.returncode == 0, fetched.stderr
    every = sorted(json.loads(fetched.stdout)["files"])  # frames, previews, sheet and movie
    assert [str(Path(f).relative_to("/tmp/comp")) for f in every] == sorted(
        [
            *(f"shot_{f:04d}.exr" for f in FRAMES),
            *(f"preview/shot_{f:04d}.png" for f in FRAMES),
            "contact.png",
            "shot.mp4",
        ]
    )
    for fetched_file in every:  # each the server's bytes
        name = str(Path(fetched_file).relative_to("/tmp/comp"))
        on_server = lab.head.path(f"{out}/{name}").read_bytes()
        assert lab.laptop.path(fetched_file).read_bytes() == on_server, name
    files = [f for f in every if f.endswith(".exr")]
    renders = lab.farm("fetch", render, "/tmp/renders", "--json")
    assert renders.returncode == 0, renders.stderr
    data = comp.read_toml(lab.laptop.path("/tmp/home/comp.toml"))
    data["inputs"]["shot"] = {
        **{k: v for k, v in data["inputs"]["shot"].items() if k != "after"},
        "path": str(lab.laptop.path("/tmp/renders/layers_####.exr")),
    }
    data["inputs"]["sky"]["path"] = str(lab.head.path(f"{OUTPUTS}/plates/sky.exr"))
    data["output"] = {"path": str(tmp_path / "here_####.exr"), "depth": "float"}
    del data["review"]
    here = comp.inspect(comp.parse(data), header)
    for frame, path in zip(FRAMES, files, strict=True):
        make_frame(here, frame, None)
        made = read_pixels(lab.laptop.path(path)).data
        assert made.shape == (18, 32, 4)
        assert np.array_equal(made, read_pixels(here.output(frame)).data)
        shot = read_pixels(lab.laptop.path(f"/tmp/renders/layers_{frame:04d}.exr")).data
        assert not np.array_equal(made, shot[..., :4])  # the sky is under it, graded
    assert not np.array_equal(*(read_pixels(lab.laptop.path(p)).data for p in files[:2]))

    # The review's outputs are on the server, where the job's paths point.
    sheet = read_pixels(lab.head.path(outputs["contact_sheet"])).data
    assert sheet.shape[2] == 3 and sheet.shape[1] > 32
    with av.open(str(lab.head.path(outputs["movie"]))) as movie:
        decoded = [f.to_ndarray(format="rgb24") for f in movie.decode(video=0)]
    assert len(decoded) == len(FRAMES) and decoded[0].shape[:2] == (18, 32)

    # The node kept nothing of the comp: no work folder, no frame, preview, sheet or movie (the
    # textured shot's PNGs in its scene cache are that shot's, uploaded for its render).
    film = lab.nodes["film"]
    left = [
        p
        for p in film.tmp.rglob("*")
        if (p.name.startswith("farm-comp-") or p.suffix in (".png", ".mp4", ".jpg"))
        and not textured_shot_input(film, p)
    ]
    assert left == []
    assert not list(film.tmp.rglob("shot_*.exr"))


def textured_shot_input(node: Machine, path: Path) -> bool:
    """Whether ``path`` is one of the textured shot's files, laid out in ``node``'s scene cache."""
    trees = node.path("/tmp/home/.cache/farm/node/trees")
    return path.is_relative_to(trees) and path.relative_to(trees).parts[1:3] == ("tmp", "shot")


def test_a_torn_plate_fails_the_frame_naming_the_file_as_the_server_has_it(
    lab: Lab, render: str
) -> None:
    """Its header reads (the check at submission passes); its pixels do not, on the node."""
    torn = plate_on_server(lab, "torn.exr")
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    plate = f"{OUTPUTS}/plates/torn.exr"
    job = submit_comp(lab, render, spec_for(plate, f"{OUTPUTS}/torn", retries=0, review=False))
    watched = lab.farm("watch", job)
    assert watched.returncode != 0
    status = lab.api().get(f"/jobs/{job}").json()
    assert status["state"] == "failed" and status["outputs"]["frames"] == []
    errors = {a["error"] for a in json.loads(lab.farm("logs", job, "--json").stdout)}
    assert errors == {
        f"frame {f}: cannot decode {plate}: Some scanline chunks were missing or corrupted"
        for f in FRAMES
    }
    assert not lab.head.path(f"{OUTPUTS}/torn").exists()
    assert not list(lab.nodes["film"].tmp.rglob("farm-comp-*"))


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
    assert wait_for(lambda: api.get(f"/jobs/{job}").json()["tasks"]["running"], 60), "no task ran"
    assert wait_for(lambda: blenders_on("slow.blend"), 30)

    cancelled = lab.farm("cancel", str(job))
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"job {job}: cancelled"
    # The slots that rendered the job died with their Blenders; a warm slot still opening on the
    # scene may stay for the next job, idle.
    assert wait_for(lambda: not rendering(blenders_on("slow.blend")), 15), "a Blender rendered on"
    assert wait_for(lambda: api.get(f"/jobs/{job}").json()["tasks"]["running"] == 0, 15)
    status = api.get(f"/jobs/{job}").json()
    assert status["state"] == "cancelled"
    assert status["tasks"]["queued"] == 0 and status["tasks"]["cancelled"] == 6
    assert api.get(f"/jobs/{job}/outputs").json() == []
    again = lab.farm("cancel", str(job))
    assert again.returncode == 2
    assert again.stderr.strip() == f"error: job {job} is cancelled: nothing to change"


def wait_for(value, timeout: float):
    """``value()`` once it is truthy, asked every 0.1 s for up to ``timeout`` seconds (else None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := value():
            return found
        time.sleep(0.1)
    return None


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


SPARE_FRAMES = 12  # frames of about two seconds: work left for each node lost


def test_nodes_powered_off_mid_job_lose_no_frame(lab: Lab, make_scene) -> None:
    """Three one-CPU nodes of a lab of their own (the film and ML nodes stay for the other tests)
    and a render on two slots there. The first node powered off mid-frame has its slot replaced on
    the spare node; powering off the other first one leaves no room, so the spare's slot renders
    the rest (a replacement Ray cannot place gets no work). Every frame is written, once."""
    nodes = [lab.join(f"spare{n}", "spare") for n in range(3)]
    try:
        scene = lab.laptop.path("/tmp/spare/spare.blend")
        scene.parent.mkdir(parents=True)
        scene.write_bytes(make_scene(96, 54, 200, SPARE_FRAMES).read_bytes())
        submitted = lab.farm(
            "submit", "render", "/tmp/spare/spare.blend", "--upload", "--lab", "spare",
            "--slots", "2", "--threads", "1", "--tiles", "none", "--json",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        job = json.loads(submitted.stdout)["id"]
        api = lab.api()
        by_id = {n.node_id: n for n in nodes}

        def running() -> Counter[str]:
            """The job's attempts running now (one renders, one waits: a slot takes two), by node."""
            tries = api.get(f"/jobs/{job}/logs").json()
            return Counter(a["node"] for a in tries if a["status"] == "running")

        # Powered off with two frames on its slot: one of them is lost whatever the timing.
        both = wait_for(lambda: now if sorted((now := running()).values()) == [2, 2] else None, 120)
        assert both, "the job's two slots did not both render"
        first, survivor = (by_id[node] for node in sorted(both))
        [spare] = [n for n in nodes if n not in (first, survivor)]
        first.power_off()
        assert wait_for(lambda: running()[spare.node_id], 60), "the spare node got no work"
        assert wait_for(lambda: running()[survivor.node_id] == 2, 60), "the survivor ran out"
        survivor.power_off()

        watched = lab.farm("watch", str(job))
        assert watched.returncode == 0, watched.stdout + watched.stderr
        tries = api.get(f"/jobs/{job}/logs").json()
        done = {a["task"]: a["node"] for a in tries if a["status"] == "done"}
        for off, then in ((first, {survivor, spare}), (survivor, {spare})):
            lost = {a["task"] for a in tries if a["node"] == off.node_id and a["status"] != "done"}
            assert lost and {by_id[done[task]] for task in lost} <= then, tries
        events = api.get(f"/jobs/{job}/events", params={"limit": 10_000}).json()
        assert sum(e["kind"] == "retry" for e in events) >= 2
        written = Counter(e["frame"] for e in events if e["kind"] == "written")
        assert written == Counter(range(1, SPARE_FRAMES + 1))
        outputs = api.get(f"/jobs/{job}/outputs").json()
        names = sorted(o["name"] for o in outputs)
        assert names == [f"spare_{f:04d}.exr" for f in range(1, SPARE_FRAMES + 1)]
    finally:
        for node in nodes:
            node.power_off()


DIGITS = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
STEPS_PER_EPOCH = 1500 // 2 // 32 + 1  # each of 2 workers' 750 digits in batches of 32


def train_workers(lab: Lab) -> list[psutil.Process]:
    """The Ray Train workers running on the lab's nodes now (never another test's, beside)."""
    found = []
    for node in lab.nodes.values():
        for process in node.running():
            with contextlib.suppress(psutil.Error):
                if "RayTrainWorker" in " ".join(process.cmdline()):
                    found.append(process)
    return found


def test_a_run_on_uploaded_data_survives_a_killed_worker_with_no_shared_folder(lab: Lab) -> None:
    folder = lab.laptop.path("/tmp/digits")  # the trainee's dataset, on the laptop only
    folder.mkdir()
    digits = load_digits()
    np.savez(folder / "digits.npz", data=digits.data, target=digits.target)
    (folder / "README.txt").write_text("scikit-learn's 8x8 digits\n")
    size = sum(p.stat().st_size for p in folder.iterdir())
    put = lab.farm("data", "put", "/tmp/digits", "--json")
    assert put.returncode == 0, put.stderr
    dataset = json.loads(put.stdout)
    assert dataset["files"] == 2 and dataset["bytes"] == size
    assert dataset["sent"] == {"files": 2, "bytes": size, "of": 2}
    again = json.loads(lab.farm("data", "put", "/tmp/digits", "--json").stdout)
    assert again["data"] == dataset["data"]
    assert again["sent"] == {"files": 0, "bytes": 0, "of": 2}  # nothing sent the second time

    lab.laptop.path("/tmp/train_digits.py").write_text(DIGITS.read_text())
    epochs = 4
    submitted = lab.farm(
        "submit", "train", "/tmp/train_digits.py", "--workers", "2", "--data", dataset["data"],
        "--config", f"epochs={epochs}", "--config", "seconds_per_epoch=1.5", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["id"]
    api = lab.api()
    deadline = time.monotonic() + 240
    while len(api.get(f"/jobs/{job}/metrics").json()) < 2:  # two epochs checkpointed
        status = api.get(f"/jobs/{job}").json()
        assert status["state"] in ("queued", "running"), status
        assert time.monotonic() < deadline, "two epochs were not reported in time"
        time.sleep(0.5)
    workers = train_workers(lab)
    assert len(workers) == 2, workers
    workers[0].kill()  # SIGKILL one of the two workers

    watched = lab.farm("watch", str(job), timeout=300)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "epoch 3" in watched.stdout + watched.stderr  # shown live as the run reported
    rows = api.get(f"/jobs/{job}/metrics").json()
    # Every epoch reported once, none again from zero: the run went on from its checkpoint,
    # read back from the server by nodes that never had it on their disk.
    assert [r["epoch"] for r in rows] == list(range(epochs)), rows
    assert [r["step"] for r in rows] == [STEPS_PER_EPOCH * (e + 1) for e in range(epochs)]
    assert rows[-1]["accuracy"] > 0.85, rows[-1]

    # The run's files are on the head, in the server's run storage; a node kept no checkpoint,
    # and each node that ran a worker has the dataset in its cache, fetched once.
    run = lab.head.path(f"{Lab.DATA}/train/job-{job}")
    checkpoints = sorted(run.glob("checkpoint_*/state.pt"))
    latest = torch.load(checkpoints[-1], weights_only=False)  # names sort by time
    assert (latest["epoch"], latest["step"]) == (epochs - 1, STEPS_PER_EPOCH * epochs)
    assert list(run.glob("tensorboard/events.out.tfevents.*"))
    laid_out = 0
    left = []
    for name in ("film", "ml"):
        node = lab.nodes[name]
        left += [p.relative_to(node.tmp) for p in node.tmp.rglob("state.pt")]
        cached = list(node.path("/tmp/home/.cache/farm/node/trees").glob("*/digits.npz"))
        assert [p.read_bytes() for p in cached] in ([], [(folder / "digits.npz").read_bytes()])
        laid_out += len(cached)
    assert laid_out >= 1  # on each node that ran a worker
    # The only state.pt a node may hold is the script's own: the worker killed inside its
    # `with TemporaryDirectory()` (a folder straight under /tmp) could not remove it.
    assert len(left) <= 1 and all(len(p.parts) == 2 and p.parts[0].startswith("tmp") for p in left)

    plotted = lab.farm("metrics", str(job), "--json", "--plot", "/tmp/curves.png")
    assert plotted.returncode == 0 and json.loads(plotted.stdout) == rows
    assert lab.laptop.path("/tmp/curves.png").read_bytes()[:4] == b"\x89PNG"

    fetched = lab.farm("fetch", str(job), "/tmp/run", "--json")
    assert fetched.returncode == 0, fetched.stderr
    names = {str(Path(f).relative_to("/tmp/run")) for f in json.loads(fetched.stdout)["files"]}
    want = {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
    assert names == want
    assert {str(c.relative_to(run)) for c in checkpoints} <= names
    for name in names:
        assert lab.laptop.path(f"/tmp/run/{name}").read_bytes() == (run / name).read_bytes()


def test_a_run_naming_a_dataset_the_server_lacks_is_refused_at_submission(lab: Lab) -> None:
    lab.laptop.path("/tmp/train_digits.py").write_text(DIGITS.read_text())
    jobs = lab.api().get("/jobs").json()
    missing = "sha256:" + "0" * 64
    refused = lab.farm("submit", "train", "/tmp/train_digits.py", "--data", missing)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: no uploaded dataset {missing} on this server: upload it (farm data put)"
    )
    nowhere = lab.farm("submit", "train", "/tmp/train_digits.py", "--data", "/tmp/nothing")
    assert nowhere.returncode == 2
    assert nowhere.stderr.strip() == (
        "error: --data /tmp/nothing: no such folder (or give sha256:… from farm data put)"
    )
    empty = lab.laptop.path("/tmp/empty")
    empty.mkdir()
    nothing = lab.farm("data", "put", "/tmp/empty")
    assert nothing.returncode == 2
    assert nothing.stderr.strip() == "error: dataset folder /tmp/empty holds no file"
    hostile = lab.api().post("/datasets", json={"files": {"../x": "0" * 64}})
    assert hostile.status_code == 400 and "\n" not in hostile.json()["detail"]
    assert hostile.json()["detail"].startswith("the dataset's files: cannot mirror '../x'")
    assert lab.api().get("/jobs").json() == jobs


# tests/test_comp.py's comp over a plate with both inputs plates on the laptop (no render, no
# review): a sequence under a still.
PLATES_COMP = (
    COMP_OVER_PLATE.split("[review]")[0]
    .replace('after = true\nlayer = "ViewLayer.Combined"', 'path = "plates/fg_####.exr"')
    .replace('"plates/sky_####.exr"', '"plates/sky.exr"')
    .replace('preview = "comp/preview/shot_####.png"\n', "")
    .replace('"comp/shot_####.exr"', '"comp/plates_####.exr"')
)


def test_a_comp_of_plates_on_the_laptop_uploads_them_and_writes_in_the_users_folder(
    lab: Lab, tmp_path: Path
) -> None:
    """The spec's relative paths, as the trainee wrote them on the laptop: the plates found there
    are uploaded (once: a second submission sends nothing), the output lands in the trainee's
    folder on the server, and ``farm fetch`` brings back what a comp here makes, bit for bit."""
    from examples.make_plate import plate

    plates = lab.laptop.path("/tmp/home/plates")
    plates.mkdir()
    for frame in (1, 2):
        half = plate(32, 18, frame)
        half[:9] *= 0.0  # a see-through top half: the sky shows there
        write_frame(plates / f"fg_{frame:04d}.exr", Pixels(half, ("R", "G", "B", "A")), "zip")
    write_frame(plates / "sky.exr", Pixels(plate(32, 18, 7), ("R", "G", "B", "A")), "zip")
    lab.laptop.path("/tmp/home/plates.toml").write_text(PLATES_COMP)
    store = lab.head.path(f"{Lab.DATA}/files")

    def stored() -> set[Path]:
        return set(store.iterdir()) if store.is_dir() else set()

    files_before = stored()
    submitted = lab.farm("submit", "comp", "plates.toml", "--upload", "--json")
    assert submitted.returncode == 0, submitted.stderr
    job = str(json.loads(submitted.stdout)["id"])
    watched = lab.farm("watch", job)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    outputs = lab.api().get(f"/jobs/{job}").json()["outputs"]
    root = f"{Lab.DATA}/outputs/admin/comp"
    assert outputs["frames"] == [f"{root}/plates_{f:04d}.exr" for f in (1, 2)]
    uploaded = stored() - files_before
    assert len(uploaded) == 3 + 2  # three plates; two datasets (the sequence, the still)

    fetched = lab.farm("fetch", job, "/tmp/plates-comp", "--json")
    assert fetched.returncode == 0, fetched.stderr
    files = sorted(json.loads(fetched.stdout)["files"])
    assert [Path(f).name for f in files] == ["plates_0001.exr", "plates_0002.exr"]
    data = comp.absolute_paths(
        comp.read_toml(lab.laptop.path("/tmp/home/plates.toml")), lab.laptop.path("/tmp/home")
    )
    data["output"]["path"] = str(tmp_path / "here_####.exr")
    here = comp.inspect(comp.parse(data), header)
    for frame, path in zip((1, 2), files, strict=True):
        make_frame(here, frame, None)
        made = read_pixels(lab.laptop.path(path)).data
        assert np.array_equal(made, read_pixels(here.output(frame)).data)
    again = lab.farm("submit", "comp", "plates.toml", "--upload", "--json")
    assert again.returncode == 0, again.stderr
    assert stored() - files_before == uploaded
    lab.api().post(f"/jobs/{json.loads(again.stdout)['id']}/cancel")
