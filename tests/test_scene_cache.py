"""An uploaded scene on a node: its files cached by sha256, once a node, in a tree Blender finds
(real processes, real Blender)."""

from __future__ import annotations

import collections
import functools
import hashlib
import multiprocessing
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.blender_session import BlenderSession, SessionOptions
from workers.scene_cache import Bundle, DigestMismatch, materialize, mirrored, node_cache

ROOT = Path("/srv/cache/trees/t")


@pytest.mark.parametrize(
    ("original", "inside"),
    [
        ("/home/t/tex/a.png", "home/t/tex/a.png"),
        ("/home//t/./tex/../tex/a.png", "home/t/tex/a.png"),
        ("/home/t/tex/a.<UDIM>.png", "home/t/tex/a.<UDIM>.png"),
        ("C:\\Users\\t\\tex\\a.png", "C/Users/t/tex/a.png"),
        ("c:/Users/t/tex/a.png", "C/Users/t/tex/a.png"),
        ("C:\\Users/t\\tex/a.png", "C/Users/t/tex/a.png"),
        ("\\\\server\\share\\x.png", "UNC/server/share/x.png"),
        ("//server/share/x.png", "UNC/server/share/x.png"),
        ("\\\\?\\C:\\Users\\a.png", "C/Users/a.png"),
        ("\\\\?\\UNC\\server\\share\\x.png", "UNC/server/share/x.png"),
    ],
)
def test_mirrored_keeps_the_original_layout(original: str, inside: str) -> None:
    assert mirrored(ROOT, original) == ROOT / inside


@pytest.mark.parametrize(
    "original",
    [
        "",
        "\0",
        "/home/t/a\0.png",
        "/../etc/passwd",
        "/home/../../etc/passwd",
        "C:\\..\\Windows\\x",
        "\\\\server\\share\\..\\x",
        "\\\\server\\..\\x",
        "\\\\server",
        "\\\\.\\C:\\x",
        "relative/a.png",
        "C:a.png",
        "\\rooted\\without\\drive",
        "/",
        "C:\\",
    ],
)
def test_mirrored_refuses_hostile_originals_in_one_line(original: str) -> None:
    with pytest.raises(ValueError, match=r"^cannot mirror") as refused:
        mirrored(ROOT, original)
    assert "\n" not in str(refused.value)


HOSTILE = st.lists(
    st.sampled_from(["/", "\\", "//", "\\\\", ".", "..", ":", "C:", "?", "UNC", "a", "\0", " "]),
    max_size=12,
).map("".join)


@given(st.one_of(HOSTILE, st.text(max_size=40)))
def test_mirrored_never_leaves_its_root(original: str) -> None:
    try:
        path = mirrored(ROOT, original)
    except ValueError as error:
        assert "\n" not in str(error)
        return
    inside = PurePosixPath(path).relative_to(ROOT)
    assert inside.parts and not {".", "..", ""} & set(inside.parts)
    assert os.path.normpath(path) == str(path)
    assert os.path.commonpath([ROOT, path]) == str(ROOT)


def test_a_hostile_bundle_is_refused_before_any_fetch(tmp_path: Path) -> None:
    def fetch(digest: str) -> bytes:
        raise AssertionError("fetched for a bundle that is refused")

    good = hashlib.sha256(b"x").hexdigest()
    for bundle in [
        Bundle("/s/a.blend", (("/s/a.blend", good), ("/s/../../etc/passwd", good))),
        Bundle("/s/a.blend", (("/s/a.blend", "../../x"),)),
        Bundle("/s/a.blend", (("/s/b.blend", good),)),  # the scene is not among the files
        Bundle("/s/a.blend", (("/s/a.blend", good), ("/s/a.blend/x", good))),
        Bundle("/s/a.blend", (("/s/a.blend", good), ("/s/./a.blend", "0" * 64))),
    ]:
        with pytest.raises(ValueError):
            materialize(bundle, fetch, tmp_path / "cache")
    assert not list(tmp_path.glob("cache/*/*"))


def test_node_cache_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_NODE_CACHE", str(tmp_path / "node" / "cache"))
    assert node_cache() == tmp_path / "node" / "cache"
    assert stat.S_IMODE((tmp_path / "node" / "cache").stat().st_mode) == 0o700
    monkeypatch.delenv("FARM_NODE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert node_cache() == tmp_path / "home" / ".cache" / "farm" / "node"


def _counting_fetch(sources: dict[str, bytes], log: str, digest: str) -> bytes:
    """A fetch slow enough for every process to want the same digest at once; logs each call."""
    with open(log, "a") as calls:
        calls.write(digest + "\n")
    time.sleep(0.3)
    return sources[digest]


def _materialize_in_child(
    bundle: Bundle, sources: dict[str, bytes], log: str, cache: Path, start, done
) -> None:
    start.wait()
    done.put(str(materialize(bundle, functools.partial(_counting_fetch, sources, log), cache)))


def test_four_processes_fetch_each_digest_once(tmp_path: Path) -> None:
    contents = {
        "/home/t/shots/scene.blend": b"BLENDER-v304 not really",
        "/home/t/tex/a.png": b"a" * 100_000,
        "/home/t/tex/a.1001.png": b"tile 1001",
        "C:\\Users\\t\\tex\\c.png": b"c",
        "\\\\server\\share\\lib.blend": b"library",
        "/home/t/tex/copy_of_c.png": b"c",  # the same content twice: one fetch, two names
    }
    sources = {hashlib.sha256(data).hexdigest(): data for data in contents.values()}
    bundle = Bundle(
        "/home/t/shots/scene.blend",
        tuple((path, hashlib.sha256(data).hexdigest()) for path, data in contents.items()),
    )
    cache, log = tmp_path / "cache", tmp_path / "fetches.log"
    context = multiprocessing.get_context("spawn")
    start, done = context.Barrier(4), context.Queue()
    children = [
        context.Process(
            target=_materialize_in_child, args=(bundle, sources, str(log), cache, start, done)
        )
        for _ in range(4)
    ]
    for child in children:
        child.start()
    scenes = {done.get(timeout=60) for _ in children}
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert collections.Counter(log.read_text().split()) == dict.fromkeys(sources, 1)
    tree = cache / "trees" / bundle.id
    assert scenes == {str(tree / "home/t/shots/scene.blend")}
    for original, data in contents.items():
        placed = mirrored(tree, original)
        assert placed.read_bytes() == data
        assert stat.S_IMODE(placed.stat().st_mode) == 0o444
        assert placed.stat().st_nlink >= 2  # a hard link to cache/files/<sha256>
    assert sorted(p.name for p in (cache / "files").iterdir()) == sorted(sources)
    assert sorted(p.name for p in (cache / "trees").iterdir()) == [bundle.id]

    def refuse(digest: str) -> bytes:
        raise AssertionError("a second materialize fetched")

    assert str(materialize(bundle, refuse, cache)) in scenes  # the tree is reused


def test_wrong_bytes_are_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"the scene").hexdigest()
    bundle = Bundle("/home/t/scene.blend", (("/home/t/scene.blend", digest),))
    with pytest.raises(DigestMismatch, match=digest):
        materialize(bundle, lambda _: b"something else", tmp_path / "cache")
    assert list((tmp_path / "cache" / "files").iterdir()) == []
    assert list((tmp_path / "cache" / "trees").iterdir()) == []


TEXTURE = """
import sys
import bpy

out, absolute, relative_file = sys.argv[sys.argv.index("--") + 1 :]
bpy.ops.wm.save_as_mainfile(filepath=out)  # first: a relative path is relative to where it lies


def texture(material, path, filepath):
    tree = bpy.data.materials[material].node_tree
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image = bpy.data.images.load(path, check_existing=False)
    node.image.filepath = filepath
    node.interpolation = "Closest"
    tree.links.new(node.outputs["Color"], bsdf.inputs["Base Color"])


texture("Ground", absolute, absolute)
texture("Red", relative_file, "//../tex/b.png")
bpy.ops.wm.save_mainfile()
"""


def _texture(path: Path, seed: int) -> None:
    import OpenImageIO as oiio

    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert oiio.ImageBuf(image).write(str(path))


def _session_render(scene: Path, blender: str, folder: Path, remap_root: Path | None):
    session = BlenderSession(
        SessionOptions(blender, scene, remap_root=None if remap_root is None else str(remap_root))
    )
    try:
        session.start()
        session.configure({})
        return session.render(1, None, {}, folder), session.remapped
    finally:
        session.close()


def test_a_scene_renders_from_its_tree_as_it_did_on_the_laptop(
    blender: str, make_scene, tmp_path: Path
) -> None:
    from conftest import blender_render, pixels  # here: the spawned processes above need no Ray

    laptop = tmp_path / "laptop"
    scene, absolute, relative = (
        laptop / "shots/scene.blend",
        laptop / "abs/a.png",
        laptop / "tex/b.png",
    )
    _texture(absolute, 1)
    _texture(relative, 2)
    scene.parent.mkdir(parents=True)
    built = [blender, "-b", "--factory-startup", str(make_scene(48, 27, 4, 3))]
    subprocess.run(
        [*built, "--python-expr", TEXTURE, "--", str(scene), str(absolute), str(relative)],
        check=True,
        capture_output=True,
    )
    reference = pixels(blender_render(blender, scene, 1, tmp_path / "reference.exr"))

    originals = {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in (scene, absolute, relative)
    }
    by_digest = {digest: Path(path) for path, digest in originals.items()}
    bundle = Bundle(str(scene), tuple(originals.items()))
    on_node = materialize(bundle, lambda digest: by_digest[digest].read_bytes(), tmp_path / "node")
    laptop.rename(tmp_path / "laptop_gone")  # the node has no view of the laptop's files
    tree = tmp_path / "node" / "trees" / bundle.id
    assert on_node == mirrored(tree, str(scene))

    remapped, moved = _session_render(on_node, blender, tmp_path / "out", tree)
    assert moved == {"op": "remapped", "paths": 1, "missing": []}  # a.png; b.png is relative
    assert np.array_equal(pixels(remapped), reference)
    plain, _ = _session_render(on_node, blender, tmp_path / "out", None)
    assert not np.array_equal(pixels(plain), reference)  # a.png is missing without the remap
    shutil.rmtree(tmp_path / "laptop_gone")
