"""A training run's storage on the server (workers/run_storage.py): what Ray Train writes through
it lands in the run's folder, bit for bit, in pieces when large; nothing outside the run's folder
or its dataset can be reached through it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs
import pytest
import ray

from workers.run_storage import CHUNK, RunFiles, filesystem, inside


@pytest.mark.parametrize(
    "hostile",
    ["job-2/state.pt", "job-1/../job-2/x", "/etc/passwd", "", ".", "job-1x/a", "..\\job-2\\a"],
)
def test_a_path_outside_the_runs_folder_is_refused(hostile: str) -> None:
    with pytest.raises(PermissionError, match="is outside the run's folder job-1"):
        inside("job-1", hostile)


def test_inside_keeps_a_path_of_the_run() -> None:
    assert inside("job-1", "./job-1//checkpoint_1/state.pt") == "job-1/checkpoint_1/state.pt"


def test_checkpoints_travel_whole_and_only_the_runs_dataset_is_readable(
    ray_local, tmp_path: Path
) -> None:
    storage, store = tmp_path / "train", tmp_path / "files"
    store.mkdir()
    (store / ("a" * 64)).write_bytes(b"the run's data")
    (store / ("b" * 64)).write_bytes(b"another user's upload")
    (tmp_path / "train" / "job-2").mkdir(parents=True)
    (tmp_path / "train" / "job-2" / "secret").write_bytes(b"not yours")
    actor = ray.remote(RunFiles).remote(str(storage), "job-1", ["a" * 64], str(store))
    fs = filesystem(actor)
    local = tmp_path / "checkpoint"
    local.mkdir()
    big = os.urandom(CHUNK + 12345)  # more than one piece
    (local / "state.pt").write_bytes(big)
    (local / "empty").write_bytes(b"")
    pyarrow.fs.copy_files(str(local), "job-1/checkpoint_1", destination_filesystem=fs)
    kept = storage / "job-1" / "checkpoint_1"
    assert (kept / "state.pt").read_bytes() == big and (kept / "empty").read_bytes() == b""
    back = tmp_path / "back"
    back.mkdir()  # as Ray Train makes it before it downloads
    pyarrow.fs.copy_files("job-1/checkpoint_1", str(back), source_filesystem=fs)
    assert (back / "state.pt").read_bytes() == big
    listed = fs.get_file_info(pyarrow.fs.FileSelector("job-1", recursive=True))
    assert sorted(i.path for i in listed) == [
        "job-1/checkpoint_1",
        "job-1/checkpoint_1/empty",
        "job-1/checkpoint_1/state.pt",
    ]
    missing = fs.get_file_info("job-1/nothing")
    assert missing.type == pyarrow.fs.FileType.NotFound
    with pytest.raises(FileNotFoundError):
        fs.open_input_file("job-1/nothing")
    for hostile in ("job-2/secret", "job-1/../job-2/secret"):
        with pytest.raises(PermissionError, match="outside the run's folder"):
            fs.open_input_file(hostile)
    with pytest.raises(PermissionError):
        fs.delete_dir_contents("", accept_root_dir=True)
    assert (storage / "job-2" / "secret").read_bytes() == b"not yours"
    assert ray.get(actor.dataset_file.remote("a" * 64)) == b"the run's data"
    with pytest.raises(ray.exceptions.RayTaskError, match="not a file of this run's dataset"):
        ray.get(actor.dataset_file.remote("b" * 64))
    ray.kill(actor)
