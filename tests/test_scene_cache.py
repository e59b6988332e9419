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
    return _session_render_frame(scene, blender, folder, remap_root, 1)


def _session_render_frame(
    scene: Path, blender: str, folder: Path, remap_root: Path | None, frame: int
):
    session = BlenderSession(
        SessionOptions(blender, scene, remap_root=None if remap_root is None else str(remap_root))
    )
    try:
        session.start()
        session.configure({})
        return session.render(frame, None, {}, folder), session.remapped
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


SIMULATED = """
import random, sys
import bpy

root = sys.argv[sys.argv.index("--") + 1]
random.seed(3)


def glowing(name, image=None, colour=(1.0, 0.5, 0.1, 1.0)):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    nodes.clear()
    emission = nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = colour
    if image is not None:
        texture = nodes.new("ShaderNodeTexImage")
        texture.image, texture.interpolation = image, "Closest"
        material.node_tree.links.new(texture.outputs["Color"], emission.inputs["Color"])
    output = nodes.new("ShaderNodeOutputMaterial")
    material.node_tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


texture = bpy.data.images.new("libabs", 8, 8)
texture.pixels = [random.random() if i % 4 != 3 else 1.0 for i in range(8 * 8 * 4)]
texture.filepath_raw, texture.file_format = f"{root}/abs/libabs.png", "PNG"
texture.save()

# The library: a plane whose texture is named by an absolute path, inside the library.
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/assets/lib.blend")
image = bpy.data.images.load(f"{root}/abs/libabs.png")
bpy.ops.mesh.primitive_plane_add(size=3, location=(-2, 0, 0))
bpy.context.active_object.name = "prop"
bpy.context.active_object.data.materials.append(glowing("prop", image))
bpy.context.active_object.use_fake_user = True
bpy.ops.wm.save_mainfile(relative_remap=False)

# The shot: the prop linked, and a cloth falling, baked to disk, then its settings changed: the
# bake, not a new simulation, moves it (one without its files does not move at all).
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/shots/sim.blend")
scene = bpy.context.scene
scene.render.engine, scene.cycles.samples, scene.cycles.seed = "CYCLES", 2, 0
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 48, 27, 100
scene.frame_start, scene.frame_end = 1, 4
scene.render.image_settings.file_format = "OPEN_EXR"
camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
camera.data.type, camera.data.ortho_scale = "ORTHO", 8.0
camera.location = (0, 0, 6)
scene.collection.objects.link(camera)
scene.camera = camera
with bpy.data.libraries.load(f"{root}/assets/lib.blend", link=True, relative=True) as (_, into):
    into.objects = ["prop"]
scene.collection.objects.link(bpy.data.objects["prop"])
bpy.ops.mesh.primitive_grid_add(x_subdivisions=6, y_subdivisions=6, size=3, location=(2, 0, 1))
flag = bpy.context.active_object
flag.data.materials.append(glowing("flag"))
cloth = flag.modifiers.new("Cloth", "CLOTH")
cloth.point_cache.use_disk_cache, cloth.point_cache.frame_end = True, 4
flag.rotation_euler = (0.6, 0.3, 0.0)
bpy.ops.wm.save_mainfile()
scene.gravity = (40.0, 0.0, -9.8)  # a bake that runs sideways
with bpy.context.temp_override(scene=scene):
    bpy.ops.ptcache.bake_all(bake=True)
scene.gravity = (0.0, 0.0, -9.8)
cloth.settings.mass = 40.0
assert cloth.point_cache.is_baked
bpy.ops.wm.save_mainfile()
"""


def test_a_librarys_absolute_texture_and_a_baked_cloth_render_from_the_tree_as_on_the_laptop(
    blender: str, tmp_path: Path
) -> None:
    """The files Blender lists at submission, laid out on the node: the library's own absolute
    path is remapped into the tree, the bake is read from it."""
    from conftest import blender_render, pixels

    from farm.scene_files import scene_files

    laptop = tmp_path / "laptop"
    for folder in ("shots", "assets", "abs"):
        (laptop / folder).mkdir(parents=True)
    script = tmp_path / "simulated.py"
    script.write_text(SIMULATED)
    built = [blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python"]
    done = subprocess.run([*built, str(script), "--", str(laptop)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    scene = laptop / "shots" / "sim.blend"
    reference = pixels(blender_render(blender, scene, 4, tmp_path / "reference.exr"))
    files = [dep.path for dep in scene_files(scene, blender)]
    assert sorted(Path(f).relative_to(laptop).as_posix() for f in files) == [
        "abs/libabs.png",
        "assets/lib.blend",
        *(f"shots/blendcache_sim/{b'Grid'.hex().upper()}_{f:06d}_00.bphys" for f in range(1, 5)),
    ]
    originals = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in [str(scene), *files]}
    by_digest = {digest: Path(path) for path, digest in originals.items()}
    bundle = Bundle(str(scene), tuple(originals.items()))
    on_node = materialize(bundle, lambda digest: by_digest[digest].read_bytes(), tmp_path / "node")
    laptop.rename(tmp_path / "laptop_gone")  # the node has no view of the laptop's files
    tree = tmp_path / "node" / "trees" / bundle.id

    remapped, moved = _session_render_frame(on_node, blender, tmp_path / "out", tree, 4)
    assert moved["missing"] == [] and moved["paths"] >= 1  # the library's libabs.png
    assert np.array_equal(pixels(remapped), reference)
    plain, _ = _session_render_frame(on_node, blender, tmp_path / "plain", None, 4)
    assert not np.array_equal(pixels(plain), reference)  # libabs.png is missing without it
    tree.chmod(0o700)
    for cached in (on_node.parent / "blendcache_sim").iterdir():
        cached.unlink()  # without its bake, the cloth would not move
    unbaked, _ = _session_render_frame(on_node, blender, tmp_path / "unbaked", tree, 4)
    assert not np.array_equal(pixels(unbaked), reference)
