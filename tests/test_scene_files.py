"""What a .blend uses, as Blender lists it at submission: real Blender, real files, no mocks.

One Blender run builds every scene and file the module needs (each Blender start costs about a
second here): textures outside the scene's folder with ``//../`` paths, as Blender saves them by
default, one absolute path, an image sequence, a UDIM set, a font and a library in another folder
with a texture of its own, relative to the library.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.scene_files import Dependency, scene_files

BUILD = r"""
import os, shutil, sys
import bpy

root = sys.argv[sys.argv.index("--") + 1]

def png(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = bpy.data.images.new("tmp", 4, 4)
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)

for name in ("tex/wood.png", "abs/absolute.png", "tex/udim.1001.png", "tex/udim.1002.png",
             "tex/seq/other_0001.png", "assets/props/tex/libtex.png", "assets/innertex.png"):
    png(f"{root}/{name}")
for frame in (1, 2, 3):
    png(f"{root}/tex/seq/frame_{frame:04d}.png")
os.makedirs(f"{root}/fonts")
os.makedirs(f"{root}/shots")
fonts = bpy.utils.system_resource("DATAFILES", path="fonts")
font_file = os.path.join(fonts, sorted(n for n in os.listdir(fonts) if "DejaVuSans." in n)[0])
font_copy = shutil.copy(font_file, f"{root}/fonts/")

def textured(name, image):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    node = material.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    return material

# Two libraries, each with a texture relative to its own folder: assets/props/lib.blend (two
# folders down, so that a path relative to it differs from one relative to the shot) has an
# object "prop" whose mesh uses its own material and one linked from assets/inner.blend.
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/assets/inner.blend")
image = bpy.data.images.load(f"{root}/assets/innertex.png")
image.name, image.filepath = "innertex", "//innertex.png"
textured("innermat", image).use_fake_user = True
bpy.ops.wm.save_mainfile()
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/assets/props/lib.blend")
image = bpy.data.images.load(f"{root}/assets/props/tex/libtex.png")
image.name, image.filepath = "libtex", "//tex/libtex.png"
with bpy.data.libraries.load(f"{root}/assets/inner.blend", link=True, relative=True) as (_, into):
    into.materials = ["innermat"]
mesh = bpy.data.meshes.new("prop")
mesh.materials.append(textured("libmat", image))
mesh.materials.append(bpy.data.materials["innermat"])
bpy.data.objects.new("prop", mesh).use_fake_user = True
bpy.ops.wm.save_mainfile()

# The shot, in a folder of its own.
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/shots/shot.blend")
images = {}
for name, path, source in (
    ("wood", "tex/wood.png", "FILE"),
    ("seq", "tex/seq/frame_0001.png", "SEQUENCE"),
    ("udim", "tex/udim.1001.png", "TILED"),
    ("absolute", "abs/absolute.png", "FILE"),
):
    image = bpy.data.images.load(f"{root}/{path}")
    image.name, image.source = name, source
    if name != "absolute":
        image.filepath = bpy.path.relpath(image.filepath)
    images[name] = image
mesh = bpy.data.meshes.new("plane")
for image in images.values():
    mesh.materials.append(textured(image.name, image))
bpy.context.scene.collection.objects.link(bpy.data.objects.new("plane", mesh))
library = f"{root}/assets/props/lib.blend"
with bpy.data.libraries.load(library, link=True, relative=True) as (_, into):
    into.objects = ["prop"]
bpy.context.scene.collection.objects.link(bpy.data.objects["prop"])
font = bpy.data.fonts.load(font_copy)
font.name, font.filepath = "label", bpy.path.relpath(font_copy)
text = bpy.data.curves.new("title", "FONT")
text.font = font
bpy.context.scene.collection.objects.link(bpy.data.objects.new("title", text))
# Simulations baked to disk: a cloth (an unnamed cache: its files are named by its object's name
# in hex) and particles (a named cache), both in //blendcache_shot/, and a smoke domain, in the
# folder its settings name.
scene = bpy.context.scene
scene.frame_start, scene.frame_end = 1, 2
bpy.ops.mesh.primitive_grid_add(x_subdivisions=3, y_subdivisions=3, size=1)
flag = bpy.context.active_object
flag.name = "Flag"
cloth = flag.modifiers.new("Cloth", "CLOTH")
cloth.point_cache.use_disk_cache = True
cloth.point_cache.frame_end = 2
flag.modifiers.new("Sparks", "PARTICLE_SYSTEM")
sparks = flag.particle_systems[0]
sparks.point_cache.use_disk_cache, sparks.point_cache.name = True, "sparks"
sparks.settings.count, sparks.settings.frame_start, sparks.settings.frame_end = 4, 1, 2
bpy.ops.mesh.primitive_cube_add()
domain = bpy.context.active_object
domain.name = "Smoke"
fluid = domain.modifiers.new("Fluid", "FLUID")
fluid.fluid_type = "DOMAIN"
smoke = fluid.domain_settings
smoke.cache_directory, smoke.resolution_max = "//../cache/smoke", 6
smoke.cache_frame_start, smoke.cache_frame_end = 1, 2  # a replay cache: written as frames run
bpy.ops.wm.save_mainfile()
with bpy.context.temp_override(scene=scene):
    bpy.ops.ptcache.bake_all(bake=True)
assert cloth.point_cache.is_baked and sparks.point_cache.is_baked
bpy.ops.wm.save_mainfile()
stored = {i.name: i.filepath for i in bpy.data.images}
stored.update({l.name: l.filepath for l in bpy.data.libraries}, label=font.filepath)
print("STORED", stored)
"""


@pytest.fixture(scope="module")
def tree(blender: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole tree: tex/, abs/, fonts/, assets/ (two libraries), shots/shot.blend."""
    root = tmp_path_factory.mktemp("scene_files")
    script = root / "build.py"
    script.write_text(BUILD)
    command = [blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python"]
    done = subprocess.run(
        [*command, str(script), "--", str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The scene names its files as Blender saves them by default: relative, outside its folder.
    assert "'wood': '//../tex/wood.png'" in done.stdout, done.stdout
    assert "'udim': '//../tex/udim.<UDIM>.png'" in done.stdout, done.stdout
    assert "'lib.blend': '//../assets/props/lib.blend'" in done.stdout, done.stdout
    script.unlink()
    return root


def copy_of(tree: Path, tmp_path: Path) -> Path:
    """The tree again, for a test that deletes from it (relative paths follow the copy)."""
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    return copy


def test_every_file_the_scene_uses_is_listed_with_its_data_block(tree: Path, blender: str):
    library, inner = str(tree / "assets/props/lib.blend"), str(tree / "assets/inner.blend")

    def dep(path: str, block: str, lib: str | None = None) -> Dependency:
        return Dependency(str(tree / path), block, lib)

    smoke = sorted(p for p in (tree / "cache/smoke").rglob("*") if p.is_file())  # the bake's
    assert {p.suffix for p in smoke} >= {".uni", ".vdb"}, smoke
    cloth = "cloth 'Cloth' of object 'Flag'"
    flag = "466C6167"  # "Flag", as Blender names an unnamed cache's files; _01: its 2nd cache
    assert scene_files(tree / "shots" / "shot.blend", blender) == [
        dep("abs/absolute.png", "image 'absolute'"),
        dep("assets/inner.blend", "library 'inner.blend'", library),  # linked by lib.blend
        dep("assets/innertex.png", "image 'innertex'", inner),  # relative to inner.blend
        dep("assets/props/lib.blend", "library 'lib.blend'"),
        dep("assets/props/tex/libtex.png", "image 'libtex'", library),  # relative to lib.blend
        *(dep(str(p.relative_to(tree)), "fluid domain 'Fluid' of object 'Smoke'") for p in smoke),
        dep("fonts/" + os.listdir(tree / "fonts")[0], "font 'label'"),
        *(dep(f"shots/blendcache_shot/{flag}_00000{f}_01.bphys", cloth) for f in (1, 2)),
        *(
            dep(
                f"shots/blendcache_shot/sparks_00000{f}_00.bphys",
                "particles 'Sparks' of object 'Flag'",
            )
            for f in (1, 2)
        ),
        dep("tex/seq/frame_0001.png", "image 'seq'"),  # every frame, not other_0001.png
        dep("tex/seq/frame_0002.png", "image 'seq'"),
        dep("tex/seq/frame_0003.png", "image 'seq'"),
        dep("tex/udim.1001.png", "image 'udim'"),  # one a tile, not the <UDIM> name
        dep("tex/udim.1002.png", "image 'udim'"),
        dep("tex/wood.png", "image 'wood'"),
    ]


def test_a_deleted_texture_is_refused_naming_the_file_and_the_image(tree: Path, tmp_path: Path):
    copy = copy_of(tree, tmp_path)
    (copy / "tex" / "wood.png").unlink()
    with pytest.raises(FarmError) as refused:
        scene_files(copy / "shots" / "shot.blend")
    message = str(refused.value)
    assert message == f"shot.blend: image 'wood' uses {copy}/tex/wood.png, which does not exist"


def test_a_library_texture_or_a_whole_sequence_missing_is_refused(tree: Path, tmp_path: Path):
    """The library's texture names the library; a sequence with no frame left counts as missing."""
    copy = copy_of(tree, tmp_path)
    (copy / "assets/props/tex/libtex.png").unlink()
    for frame in (copy / "tex" / "seq").glob("frame_*.png"):
        frame.unlink()
    with pytest.raises(FarmError) as refused:
        scene_files(copy / "shots" / "shot.blend")
    assert str(refused.value) == (
        f"shot.blend: image 'libtex' (from library {copy}/assets/props/lib.blend) uses "
        f"{copy}/assets/props/tex/libtex.png, which does not exist (and 1 more missing)"
    )
    shutil.copy(tree / "assets/props/tex/libtex.png", copy / "assets/props/tex")
    with pytest.raises(FarmError, match=r"image 'seq' uses .*/tex/seq/frame_0001\.png, which"):
        scene_files(copy / "shots" / "shot.blend")


def test_a_file_that_is_not_a_blend_is_refused_in_one_line(tmp_path: Path):
    scene = tmp_path / "shot.blend"
    scene.write_bytes(os.urandom(4096))
    with pytest.raises(FarmError) as refused:
        scene_files(scene)
    message = str(refused.value)
    assert message.startswith("shot.blend: Blender could not list its files: ")
    assert "\n" not in message and "not supported" in message
    with pytest.raises(FarmError, match="no such file"):
        scene_files(tmp_path / "absent.blend")


def test_a_bake_deleted_on_the_laptop_is_refused_naming_the_simulation(tree: Path, tmp_path: Path):
    """A baked cache with no file left would simulate again on a node, or not move at all."""
    copy = copy_of(tree, tmp_path)
    shutil.rmtree(copy / "shots" / "blendcache_shot")
    with pytest.raises(FarmError) as refused:
        scene_files(copy / "shots" / "shot.blend")
    assert str(refused.value) == (
        "shot.blend: cloth 'Cloth' of object 'Flag' uses "
        f"{copy}/shots/blendcache_shot/466C6167_000001_01.bphys, which does not exist "
        "(and 1 more missing)"
    )
