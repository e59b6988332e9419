"""What trainees upload, stored by content: scenes as ``<data-dir>/scenes/<sha256>.blend``, every
file a scene uses (textures, sequences, libraries, caches) as ``<data-dir>/files/<sha256>``.

A trainee without the lab's shared storage uploads a shot once (``farm submit render --upload``);
a file the server has already is not sent again, whoever sent it and under whatever name (as
Flamenco's Shaman does). Render slots on other nodes get the files through Ray's object store and
keep them in their node's cache under the same hash, so a node fetches a file once however many
jobs use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from farm.errors import FarmError
from workers.scene_cache import dataset_manifest, dataset_parts, dataset_tree

PREFIX = "sha256:"
MAX_BYTES = 8 << 30  # 8 GiB: a heavy production .blend, not a disk filler
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def check_digest(digest: str) -> str:
    if not _DIGEST.match(digest):
        raise FarmError(f"{digest[:80]!r} is not a sha256 digest (64 lower-case hex digits)")
    return digest


def digest_of(path: Path) -> str:
    """The sha256 of a file, read in blocks."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


class ContentStore:
    """Files by their sha256 in one folder."""

    def __init__(self, folder: Path, suffix: str = "") -> None:
        self.folder = folder
        self.suffix = suffix

    def path(self, digest: str) -> Path:
        return self.folder / f"{check_digest(digest)}{self.suffix}"

    def missing(self, digests: list[str]) -> list[str]:
        """The digests among ``digests`` this store lacks, in their order, each once."""
        return [d for d in dict.fromkeys(digests) if not self.path(d).is_file()]

    def require(self, named: dict[str, str]) -> None:
        """Refuse, naming the first, files (name → sha256) this store lacks."""
        if missing := self.missing(list(named.values())):
            name = next(n for n, d in named.items() if d == missing[0])
            raise FarmError(
                f"{name} (sha256:{missing[0]}) was not uploaded: PUT /files/{missing[0]}"
            )

    def upload(self, digest: str) -> Upload:
        return Upload(self.path(digest))

    def dataset(self, name: str) -> dict[str, str]:
        """An uploaded dataset's files (name → sha256) from its manifest (``name``: sha256:…)."""
        digest = check_digest(name.removeprefix(PREFIX))
        manifest = self.path(digest)
        if not manifest.is_file():
            raise FarmError(f"no uploaded dataset {name} on this server: upload it (farm data put)")
        text = manifest.read_bytes()
        try:
            files = json.loads(text)
        except ValueError:
            files = None
        if not isinstance(files, dict) or text != dataset_manifest(files):
            raise FarmError(f"{name} is an uploaded file, not a dataset (farm data put makes one)")
        return files

    def uploaded_path(self, path: str) -> str:
        """``sha256:<dataset>/<name>`` (a file or ``####`` sequence of an uploaded dataset) as a
        path on this machine: the dataset laid out beside the store (``../trees/<id>``), each
        file a hard link to the store's copy."""
        name, _, inner = path.partition("/")
        files = self.dataset(name)
        try:
            dataset_parts(inner)
        except ValueError as error:
            raise FarmError(f"{path[:200]!r}: {error}") from None
        tree = dataset_tree(
            files, lambda digest: self.path(digest).read_bytes(), self.folder.parent
        )
        return str(tree / inner)


class SceneStore(ContentStore):
    """The server's uploaded scenes."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, ".blend")

    def resolve(self, scene: str) -> tuple[str, str | None]:
        """A submission's scene as a server path, and its digest if it was uploaded."""
        if not scene.startswith(PREFIX):
            return scene, None
        digest = check_digest(scene.removeprefix(PREFIX))
        path = self.path(digest)
        if not path.is_file():
            raise FarmError(
                f"no uploaded scene {scene}: upload it first (farm submit render --upload)"
            )
        return str(path), digest


class Upload:
    """One upload in progress: bytes go to a temp file beside the target, which takes its name
    only once the bytes prove the digest (a broken upload never looks like a scene)."""

    def __init__(self, target: Path) -> None:
        self.target = target
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        self.temp = Path(temp)
        self.out = os.fdopen(handle, "wb")
        self.hasher = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_BYTES:
            raise FarmError(f"the upload is larger than {MAX_BYTES >> 30} GiB")
        self.hasher.update(chunk)
        self.out.write(chunk)

    def finish(self) -> int:
        """Keep the scene if its bytes match its name; returns its size."""
        self.out.close()
        digest = self.target.name[:64]
        if self.hasher.hexdigest() != digest:
            raise FarmError(f"the upload's sha256 is {self.hasher.hexdigest()}, not {digest}")
        os.replace(self.temp, self.target)
        return self.size

    def abort(self) -> None:
        self.out.close()
        self.temp.unlink(missing_ok=True)
