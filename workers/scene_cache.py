"""A node's cache of uploaded scenes: every file by sha256, and one tree per bundle for Blender.

A trainee's scene and every file it uses (textures, sequences, UDIM tiles, linked libraries,
caches) travel from the laptop to the server and from there to a node by content hash; nodes share
no drive with either. On a node the files land in ``files/<sha256>`` under the node's cache
(:func:`node_cache`): fetched once per node per digest however many render slots want it at once
(a per-digest ``flock``: the first slot fetches, the others wait for it and then find the file),
verified against their digest, read-only. A bundle then gets a tree, ``trees/<id>/``, where each
original path is mirrored (:func:`mirrored`) and hard-linked to its cached file, so that the
scene's relative paths (``//../tex/a.png``, relative to the .blend's folder) and those of its
libraries resolve unchanged, and its absolute ones are rewritten to the same mirror inside Blender
(``workers/blender_driver.py`` imports this module by path for :func:`mirrored`: standard library
only, no farm import).

Decisions: originals are split on both ``/`` and ``\\`` (a scene from Windows names its files
with either); a Windows drive letter is upper-cased (``c:\\x`` and ``C:\\x`` are one file), other
names keep their case. Nothing is evicted here: the cache grows until a node's admin clears it.

A training run's uploaded dataset is laid out the same way (:func:`dataset_tree`): its files by
their names relative to the dataset's folder, in a tree named by the dataset's manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

_DIGEST = re.compile(r"[0-9a-f]{64}")
_DRIVE = re.compile(r"([A-Za-z]):[\\/]")
_SEPARATORS = re.compile(r"[\\/]+")


class DigestMismatch(RuntimeError):
    """What ``fetch`` returned for a digest does not hash to that digest."""


@dataclass(frozen=True)
class Bundle:
    """A scene and every file it uses, as submitted: ``scene`` is the scene's absolute path on the
    machine it came from; ``files`` every file (the scene too) as (original path, sha256 hex)."""

    scene: str
    files: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        """The sha256 of the bundle's canonical JSON (files sorted, duplicates dropped)."""
        canonical = json.dumps(
            {"scene": self.scene, "files": sorted({(p, d.lower()) for p, d in self.files})},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _refuse(original: str, why: str) -> ValueError:
    shown = repr(original if len(original) <= 200 else original[:200] + "…")
    return ValueError(f"cannot mirror {shown}: {why}")


def _parts(original: str) -> tuple[str, ...]:
    """The names of ``original``'s mirror under a root: its prefix (the drive letter, or ``UNC``
    and the server and share), then its folders and name, ``.`` and ``..`` resolved."""
    if not isinstance(original, str) or not original:
        raise _refuse(str(original), "an empty path")
    if "\0" in original:
        raise _refuse(original, "a NUL byte in the path")
    path = original
    if path[:4] in ("\\\\?\\", "//?/"):  # Windows' extended-length form: \\?\C:\… or \\?\UNC\…
        path = path[4:]
        if path[:4].upper() in ("UNC\\", "UNC/"):
            path = "\\\\" + path[4:]
    if drive := _DRIVE.match(path):
        prefix, rest = [drive[1].upper()], path[3:]
    elif path[:2] in ("\\\\", "//", "\\/", "/\\"):
        names = _SEPARATORS.split(path[2:], maxsplit=2)
        if len(names) < 2 or any(n in ("", ".", "..", "?") for n in names[:2]):
            raise _refuse(original, "a network path needs a server and a share")
        prefix, rest = ["UNC", *names[:2]], names[2] if len(names) > 2 else ""
    elif path.startswith("/"):
        prefix, rest = [], path
    else:
        raise _refuse(original, "not an absolute path")
    names: list[str] = []
    for name in _SEPARATORS.split(rest):
        if name in ("", "."):
            continue
        if name == "..":
            if not names:
                raise _refuse(original, "'..' climbs above its root")
            names.pop()
        else:
            names.append(name)
    if not names:
        raise _refuse(original, "names no file")
    return (*prefix, *names)


def mirrored(root: Path, original: str) -> Path:
    """Where ``original`` (a POSIX, Windows or UNC absolute path) lives under ``root``, keeping its
    folder layout: ``/home/t/a.png`` → ``root/home/t/a.png``, ``C:\\Users\\t\\a.png`` →
    ``root/C/Users/t/a.png``, ``\\\\server\\share\\x.png`` → ``root/UNC/server/share/x.png``.
    Raises ``ValueError`` (one line) for an empty or relative path, a NUL byte, or ``..`` that
    would climb: the result is always inside ``root``."""
    return Path(root).joinpath(*_parts(original))  # no part is empty, ".", ".." or has a slash


def node_cache() -> Path:
    """The node's cache folder: ``$FARM_NODE_CACHE``, else ``~/.cache/farm/node``; made 0700."""
    folder = Path(os.environ.get("FARM_NODE_CACHE") or Path.home() / ".cache" / "farm" / "node")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    return folder


def _checked(bundle: Bundle) -> tuple[dict[tuple[str, ...], str], tuple[str, ...]]:
    """The bundle's mirrors (parts → digest) and the scene's; ``ValueError`` before any fetch."""
    layout: dict[tuple[str, ...], str] = {}
    scene = _parts(bundle.scene)
    for original, digest in bundle.files:
        digest = digest.lower() if isinstance(digest, str) else ""
        if not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 hex digest for {original!r}: {digest!r}")
        parts = _parts(original)
        if layout.setdefault(parts, digest) != digest:
            raise ValueError(f"{original!r} is listed twice, with different contents")
    if scene not in layout:
        raise ValueError(f"the bundle's files do not include its scene {bundle.scene!r}")
    folders = {parts[:end] for parts in layout for end in range(1, len(parts))}
    if clash := folders & layout.keys():
        raise ValueError(f"{'/'.join(min(clash))!r} is both a file and a folder in the bundle")
    return layout, scene


def check(bundle: Bundle) -> None:
    """Refuse (``ValueError``, one line) a bundle no node could lay out: what the server checks at
    submission, so a bad one fails there and not on every node."""
    _checked(bundle)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (made if missing), held for the block."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _fetch_once(digest: str, fetch: Callable[[str], bytes], cache: Path) -> Path:
    """``cache/files/<digest>``, fetched and verified unless there already (one fetch a node)."""
    target = cache / "files" / digest
    if target.exists():
        return target
    with _locked(cache / "locks" / f"{digest}.lock"):
        if target.exists():  # another process fetched it while this one waited
            return target
        data = fetch(digest)
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            raise DigestMismatch(f"fetched {len(data)} bytes for {digest} that hash to {got}")
        descriptor, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{digest}.", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temp, 0o444)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
    return target


def _link(source: Path, target: Path) -> None:
    """A hard link, or a read-only copy where the filesystem refuses one (another device)."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
        target.chmod(0o444)


def materialize(bundle: Bundle, fetch: Callable[[str], bytes], cache: Path) -> Path:
    """Make ``bundle`` present under ``cache`` and return its scene's path there (:func:`lay_out`
    of its mirrors)."""
    layout, scene = _checked(bundle)
    return lay_out(layout, bundle.id, fetch, cache).joinpath(*scene)


def dataset_parts(name: str) -> tuple[str, ...]:
    """A dataset file's relative POSIX name as the names of its path, or ``ValueError`` (one
    line) for an absolute or empty name, a NUL byte, a backslash, ``.`` or ``..``."""
    if not isinstance(name, str) or not name or "\0" in name or "\\" in name:
        raise _refuse(str(name), "not a relative POSIX name")
    parts = tuple(name.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise _refuse(name, "an empty, '.' or '..' name in the path")
    return parts


def dataset_manifest(files: dict[str, str]) -> bytes:
    """A dataset's canonical manifest: its files (name → sha256) as sorted, compact JSON."""
    return json.dumps(dict(sorted(files.items())), separators=(",", ":")).encode()


def dataset_id(files: dict[str, str]) -> str:
    """The sha256 of the dataset's manifest: the name a training run gives as its data."""
    return hashlib.sha256(dataset_manifest(files)).hexdigest()


def dataset_layout(files: dict[str, str]) -> dict[tuple[str, ...], str]:
    """A dataset's files (relative name → sha256) as a tree's layout, or ``ValueError`` (one
    line) for a name :func:`dataset_parts` refuses, a bad digest, or a file that is a folder too:
    what the server checks when a dataset is named, so no node meets it."""
    layout: dict[tuple[str, ...], str] = {}
    for name, digest in files.items():
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise ValueError(f"not a sha256 hex digest for {name!r}: {digest!r}")
        layout[dataset_parts(name)] = digest
    folders = {parts[:end] for parts in layout for end in range(1, len(parts))}
    if clash := folders & layout.keys():
        raise ValueError(f"{'/'.join(min(clash))!r} is both a file and a folder in the dataset")
    return layout


def dataset_tree(files: dict[str, str], fetch: Callable[[str], bytes], cache: Path) -> Path:
    """An uploaded dataset (relative name → sha256) laid out under ``cache``: its folder."""
    return lay_out(dataset_layout(files), dataset_id(files), fetch, cache)


def tree_path(cache: Path, tree_id: str) -> Path:
    """Where the tree ``tree_id`` (a bundle's or a dataset's id) lies in ``cache``."""
    return Path(cache) / "trees" / tree_id


def lay_out(
    layout: dict[tuple[str, ...], str], tree_id: str, fetch: Callable[[str], bytes], cache: Path
) -> Path:
    """The tree ``cache/trees/<tree_id>``, each path of ``layout`` a link to its cached file.

    Each missing digest is fetched once (``fetch(sha256) -> bytes``, under a per-digest lock, so
    concurrent processes on a node wait for one fetch), verified (:class:`DigestMismatch` keeps
    nothing) and stored read-only as ``cache/files/<sha256>``; then each path is hard-linked in a
    temp folder renamed into place (a tree in place is always whole; the next call reuses it)."""
    cache = Path(cache)
    tree = tree_path(cache, tree_id)
    if tree.is_dir():
        return tree
    for folder in ("files", "locks", "trees"):
        (cache / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
    cached = {digest: _fetch_once(digest, fetch, cache) for digest in sorted(set(layout.values()))}
    building = Path(tempfile.mkdtemp(dir=cache / "trees", prefix=f".{tree_id}."))
    try:
        for parts, digest in sorted(layout.items()):
            target = building.joinpath(*parts)
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _link(cached[digest], target)
        try:
            building.rename(tree)
        except OSError:
            if not tree.is_dir():  # not a concurrent build of the same tree that won the race
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return tree
