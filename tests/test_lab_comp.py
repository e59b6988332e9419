"""A comp in a lab that shares no folder (tests/harness.py): the film node sees neither the head's
data folder nor the laptop's. A render uploaded from the laptop, then ``farm submit comp --after``
it from the laptop: every file a comp task reads travels to the node through Ray's object store,
what it makes comes back to the server, ``farm fetch`` brings the frames to the laptop, and the node
keeps nothing of it."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from farm.tiling.imagefile import Pixels, read_pixels, write_frame
from pipelines import comp
from tests.harness import Lab
from tests.test_comp import COMP_OVER_PLATE
from workers.comp import header, make_frame

ROOT = f"{Lab.DATA}/outputs/admin"  # the admin's folder on the server (the head)
SCENE = "/tmp/shot/shot.blend"  # on the laptop
FRAMES = (1, 2, 3)


# Plates are not uploaded (only a render's scene and its files are): a comp's plate is a file on
# the server already, named by its path there.
def spec_for(plate: str, out: str, retries: int, review: bool = True) -> str:
    """tests/test_comp.py's comp over a plate, its paths as the server has them."""
    text = COMP_OVER_PLATE.replace('"plates/sky_####.exr"', f'"{plate}"')
    text = text.replace('"comp/', f'"{out}/')
    return f"retries = {retries}\n" + (text if review else text.split("[review]")[0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    lab = Lab(tmp_path_factory.mktemp("lab"))
    try:
        lab.start_head()
        lab.join("film", "film", cpus=2)
        yield lab
    finally:
        lab.close()


@pytest.fixture(scope="module")
def render(lab: Lab, make_scene) -> str:
    """A small multilayer render with a see-through sky, uploaded from the laptop and done."""
    scene = lab.laptop.path(SCENE)
    scene.parent.mkdir(parents=True)
    scene.write_bytes(
        make_scene(32, 18, 2, len(FRAMES), "--transparent", "--multilayer").read_bytes()
    )
    submitted = lab.farm(
        "submit", "render", SCENE, "--upload", "--lab", "film", "--threads", "1",
        "-o", "renders/shot_####.exr", "--json",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job = str(json.loads(submitted.stdout)["id"])
    watched = lab.farm("watch", job)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    return job


def plate_on_server(lab: Lab, name: str) -> Path:
    from examples.make_plate import plate

    path = lab.head.path(f"{ROOT}/plates/{name}")
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
    out = f"{ROOT}/comp"
    spec = spec_for(f"{ROOT}/plates/sky.exr", out, retries=2)
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
        "path": str(lab.laptop.path("/tmp/renders/shot_####.exr")),
    }
    data["inputs"]["sky"]["path"] = str(lab.head.path(f"{ROOT}/plates/sky.exr"))
    data["output"] = {"path": str(tmp_path / "here_####.exr"), "depth": "float"}
    del data["review"]
    here = comp.inspect(comp.parse(data), header)
    for frame, path in zip(FRAMES, files, strict=True):
        make_frame(here, frame, None)
        made = read_pixels(lab.laptop.path(path)).data
        assert made.shape == (18, 32, 4)
        assert np.array_equal(made, read_pixels(here.output(frame)).data)
        shot = read_pixels(lab.laptop.path(f"/tmp/renders/shot_{frame:04d}.exr")).data
        assert not np.array_equal(made, shot[..., :4])  # the sky is under it, graded
    assert not np.array_equal(*(read_pixels(lab.laptop.path(p)).data for p in files[:2]))

    # The review's outputs are on the server, where the job's paths point.
    sheet = read_pixels(lab.head.path(outputs["contact_sheet"])).data
    assert sheet.shape[2] == 3 and sheet.shape[1] > 32
    with av.open(str(lab.head.path(outputs["movie"]))) as movie:
        decoded = [f.to_ndarray(format="rgb24") for f in movie.decode(video=0)]
    assert len(decoded) == len(FRAMES) and decoded[0].shape[:2] == (18, 32)

    # The node kept nothing of the comp: no work folder, no frame, preview, sheet or movie.
    node = lab.nodes["film"].path("/tmp/home")
    left = [
        p
        for p in node.parent.rglob("*")
        if p.name.startswith("farm-comp-") or p.suffix in (".png", ".mp4", ".jpg")
    ]
    assert left == []
    assert not list(node.parent.rglob("shot_*.exr"))


def test_a_torn_plate_fails_the_frame_naming_the_file_as_the_server_has_it(
    lab: Lab, render: str
) -> None:
    """Its header reads (the check at submission passes); its pixels do not, on the node."""
    torn = plate_on_server(lab, "torn.exr")
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    plate = f"{ROOT}/plates/torn.exr"
    job = submit_comp(lab, render, spec_for(plate, f"{ROOT}/torn", retries=0, review=False))
    watched = lab.farm("watch", job)
    assert watched.returncode != 0
    status = lab.api().get(f"/jobs/{job}").json()
    assert status["state"] == "failed" and status["outputs"]["frames"] == []
    errors = {a["error"] for a in json.loads(lab.farm("logs", job, "--json").stdout)}
    assert errors == {
        f"frame {f}: cannot decode {plate}: Some scanline chunks were missing or corrupted"
        for f in FRAMES
    }
    assert not lab.head.path(f"{ROOT}/torn").exists()
    assert not list(lab.nodes["film"].tmp.rglob("farm-comp-*"))
