"""A training run in a lab that shares no folder (tests/harness.py): the trainee's dataset is
uploaded once from the laptop (``farm data put``), the run's two DDP workers run on the film and ML
nodes, which see neither the laptop nor the head's data folder; one worker is killed mid-run and
the run resumes from its latest checkpoint, which the server kept; ``farm fetch`` brings the
checkpoints and TensorBoard files to the laptop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from sklearn.datasets import load_digits

from tests.harness import Lab

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
STEPS_PER_EPOCH = 1500 // 2 // 32 + 1  # each of 2 workers' 750 digits in batches of 32


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


def train_workers() -> list[psutil.Process]:
    """The Ray Train workers running now (on any machine: they share the process table)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(process.info["cmdline"] or []):
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
    workers = train_workers()
    assert len(workers) == 2, workers
    workers[0].kill()  # SIGKILL one of the two workers

    watched = lab.farm("watch", str(job), timeout=300)
    assert watched.returncode == 0, watched.stdout + watched.stderr
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
    assert len(checkpoints) == 2  # the two latest (num_to_keep)
    assert list(run.glob("tensorboard/events.out.tfevents.*"))
    for name in ("film", "ml"):
        node = lab.nodes[name]
        assert not [p for p in node.tmp.rglob("state.pt")], name
        cached = list(node.path("/tmp/home/.cache/farm/node/trees").glob("*/digits.npz"))
        assert [p.read_bytes() for p in cached] == [(folder / "digits.npz").read_bytes()], name

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


PLATES_COMP = """
config = "ocio://studio-config-latest"
working_space = "ACEScg"

[inputs.fg]
path = "plates/fg_####.exr"

[inputs.sky]
path = "plates/sky.exr"

[[ops]]
op = "over"
inputs = ["fg", "sky"]

[[ops]]
op = "grade"
exposure = 0.5

[output]
path = "comp/plates_####.exr"
depth = "float"
"""


def test_a_comp_of_plates_on_the_laptop_uploads_them_and_writes_in_the_users_folder(
    lab: Lab, tmp_path: Path
) -> None:
    """The spec's relative paths, as the trainee wrote them on the laptop: the plates found there
    are uploaded (once: a second submission sends nothing), the output lands in the trainee's
    folder on the server, and ``farm fetch`` brings back what a comp here makes, bit for bit."""
    from examples.make_plate import plate
    from farm.tiling.imagefile import Pixels, read_pixels, write_frame
    from pipelines import comp
    from workers.comp import header, make_frame

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
