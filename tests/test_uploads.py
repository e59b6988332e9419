"""Uploaded datasets in the server's content store, as a comp's inputs name them
(``sha256:<dataset>/<file>``): laid out as hard links to the store's copies; a name that would
climb out, or a file that is not a dataset, refused in one line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.store.scenes import ContentStore
from workers.scene_cache import dataset_id, dataset_manifest


def stored(store: ContentStore, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    upload = store.upload(digest)
    upload.add(data)
    upload.finish()
    return digest


def test_an_uploaded_input_is_laid_out_and_hostile_names_are_refused(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "files")
    files = {"fg_0001.exr": stored(store, b"frame 1"), "fg_0002.exr": stored(store, b"frame 2")}
    name = f"sha256:{dataset_id(files)}"
    stored(store, dataset_manifest(files))
    path = Path(store.uploaded_path(f"{name}/fg_####.exr"))
    assert path.parent.parent == tmp_path / "trees"
    assert (path.parent / "fg_0002.exr").read_bytes() == b"frame 2"
    assert (path.parent / "fg_0001.exr").samefile(store.path(files["fg_0001.exr"]))  # no copy
    for hostile in ("../../files/x", "/etc/passwd", "", "a/../../b"):
        with pytest.raises(FarmError) as refused:
            store.uploaded_path(f"{name}/{hostile}")
        assert "\n" not in str(refused.value)
    not_a_dataset = f"sha256:{files['fg_0001.exr']}"
    with pytest.raises(FarmError, match="is an uploaded file, not a dataset"):
        store.uploaded_path(f"{not_a_dataset}/fg_0001.exr")
    with pytest.raises(FarmError, match="no uploaded dataset sha256:0000"):
        store.uploaded_path(f"sha256:{'0' * 64}/x.exr")
    with pytest.raises(FarmError, match="is not a sha256 digest"):
        store.uploaded_path("sha256:../x.exr")
