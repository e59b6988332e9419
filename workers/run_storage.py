"""A training run's files, kept by the server: nodes that share no drive with the head write its
checkpoints and Ray Train's own state there, read them back on a resume from any node, and read
the run's uploaded dataset from there.

The scheduler starts one :class:`RunFiles` actor a run, on the server's node: it reads and writes
the run's own folder under the server's run storage (nothing above it: every path is checked to
lie inside) and reads the files of the run's dataset from the server's content store (those
alone). Ray Train reaches it through :func:`filesystem`, a pyarrow filesystem whose every call is
a call on that actor, given as ``RunConfig(storage_filesystem=...)``. Bytes travel through Ray's
object store in pieces of :data:`CHUNK`.

pyarrow, Ray and the standard library only: this runs on lab nodes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs
import ray

CHUNK = 64 << 20  # bytes a call carries


def inside(run: str, path: str) -> str:
    """``path`` as a path of the run's folder (``run/…``), or ``PermissionError``: a path is
    relative, names no ``..`` and starts with the run's own folder."""
    names = [n for n in str(path).replace("\\", "/").split("/") if n not in ("", ".")]
    if str(path).startswith("/") or ".." in names or not names or names[0] != run:
        raise PermissionError(f"{str(path)[:200]!r} is outside the run's folder {run}")
    return "/".join(names)


class RunFiles:
    """The run's folder on the server's disk, and its dataset's files (a Ray actor there)."""

    def __init__(self, storage: str, run: str, dataset: list[str], store: str | None) -> None:
        self.run = run
        Path(storage, run).mkdir(parents=True, exist_ok=True)
        self.fs = pyarrow.fs.SubTreeFileSystem(str(storage), pyarrow.fs.LocalFileSystem())
        self.dataset = set(dataset)  # sha256 digests this run may read
        self.store = Path(store) if store else None

    def _in(self, path: str) -> str:
        return inside(self.run, path)

    def info(self, paths: list[str]) -> list[tuple[str, int, int | None, int | None]]:
        return [_plain(i) for i in self.fs.get_file_info([self._in(p) for p in paths])]

    def listing(self, base: str, recursive: bool, allow_not_found: bool) -> list[tuple]:
        selector = pyarrow.fs.FileSelector(self._in(base), allow_not_found, recursive)
        return [_plain(i) for i in self.fs.get_file_info(selector)]

    def create_dir(self, path: str, recursive: bool) -> None:
        self.fs.create_dir(self._in(path), recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.fs.delete_dir(self._in(path))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool) -> None:
        self.fs.delete_dir_contents(self._in(path), missing_dir_ok=missing_dir_ok)

    def delete_file(self, path: str) -> None:
        self.fs.delete_file(self._in(path))

    def move(self, source: str, target: str) -> None:
        self.fs.move(self._in(source), self._in(target))

    def copy_file(self, source: str, target: str) -> None:
        self.fs.copy_file(self._in(source), self._in(target))

    def read(self, path: str, offset: int) -> bytes:
        with self.fs.open_input_file(self._in(path)) as handle:
            handle.seek(offset)
            return handle.read(CHUNK)

    def write(self, path: str, data: bytes, append: bool) -> None:
        path = self._in(path)
        if "/" in path:  # as object stores do: a file's folders need not be made first
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        opened = self.fs.open_append_stream if append else self.fs.open_output_stream
        with opened(path) as handle:
            handle.write(data)

    def dataset_file(self, digest: str) -> bytes:
        if digest not in self.dataset or self.store is None:
            raise PermissionError(f"{digest[:64]!r} is not a file of this run's dataset")
        return (self.store / digest).read_bytes()


def _plain(info: pyarrow.fs.FileInfo) -> tuple[str, int, int | None, int | None]:
    size = info.size if info.type == pyarrow.fs.FileType.File else None
    return info.path, int(info.type), size, info.mtime_ns


def _info(plain: tuple[str, int, int | None, int | None]) -> pyarrow.fs.FileInfo:
    path, kind, size, mtime_ns = plain
    return pyarrow.fs.FileInfo(path, pyarrow.fs.FileType(kind), size=size, mtime_ns=mtime_ns)


class ServerFiles(pyarrow.fs.FileSystemHandler):
    """pyarrow's filesystem calls, each made on the run's :class:`RunFiles` actor."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def __reduce__(self) -> tuple[Any, ...]:
        return ServerFiles, (self.actor,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServerFiles) and other.actor == self.actor

    def __hash__(self) -> int:
        return hash(self.actor)

    def call(self, method: str, *args: Any) -> Any:
        try:
            return ray.get(getattr(self.actor, method).remote(*args))
        except ray.exceptions.RayTaskError as error:  # the actor's own OSError, as pyarrow wants
            if isinstance(error.cause, OSError):
                raise error.cause from None
            raise

    def get_type_name(self) -> str:
        return "farm-server"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return [_info(i) for i in self.call("info", list(paths))]

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list:
        found = self.call(
            "listing", selector.base_dir, selector.recursive, selector.allow_not_found
        )
        return [_info(i) for i in found]

    def create_dir(self, path: str, recursive: bool) -> None:
        self.call("create_dir", path, recursive)

    def delete_dir(self, path: str) -> None:
        self.call("delete_dir", path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.call("delete_dir_contents", path, missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("a run may not empty the server's run storage")

    def delete_file(self, path: str) -> None:
        self.call("delete_file", path)

    def move(self, src: str, dest: str) -> None:
        self.call("move", src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.call("copy_file", src, dest)

    def _whole(self, path: str) -> pyarrow.BufferReader:
        data = bytearray()
        while True:
            piece = self.call("read", path, len(data))
            data += piece
            if len(piece) < CHUNK:
                return pyarrow.BufferReader(pyarrow.py_buffer(bytes(data)))

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self._whole(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self._whole(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_Sent(self, path, append=False), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_Sent(self, path, append=True), mode="w")


class _Sent(io.RawIOBase):
    """A file being written on the server: bytes go in pieces of :data:`CHUNK`, the rest on close
    (an empty file is written too)."""

    def __init__(self, files: ServerFiles, path: str, append: bool) -> None:
        self.files, self.path, self.append = files, path, append
        self.pending = bytearray()
        self.sent = False

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.pending += bytes(data)
        while len(self.pending) >= CHUNK:
            self._send(bytes(self.pending[:CHUNK]))
            del self.pending[:CHUNK]
        return len(data)

    def _send(self, data: bytes) -> None:
        self.files.call("write", self.path, data, self.append or self.sent)
        self.sent = True

    def close(self) -> None:
        if not self.closed:
            if self.pending or not self.sent:
                self._send(bytes(self.pending))
            self.pending.clear()
        super().close()


def filesystem(actor: Any) -> pyarrow.fs.PyFileSystem:
    """The pyarrow filesystem of a run's :class:`RunFiles` actor, for Ray Train's storage."""
    return pyarrow.fs.PyFileSystem(ServerFiles(actor))
