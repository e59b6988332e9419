"""Run by Blender: a trainee's shot whose pixels come from files outside its folder.

``blender -b --factory-startup --python tests/textured_shot.py -- ROOT`` writes ``ROOT/shots/
shot.blend`` (64×36, Cycles on the CPU, 2 samples, fixed seed, no denoising, frames 1-2), four
emissive planes seen from above, each lit by a random-coloured texture: ``ROOT/tex/wood.png``
(relative, as Blender saves by default), ``ROOT/abs/marble.png`` (an absolute path), an image
sequence ``ROOT/tex/seq/frame_0001-0003.png`` (each frame shows its own file), and a plane linked
from the library ``ROOT/assets/props.blend`` that uses ``ROOT/assets/tex/libtex.png`` relative to
the library.
"""

import os
import random
import sys

import bpy

root = sys.argv[sys.argv.index("--") + 1]
random.seed(7)


def png(path: str, size: int = 8) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = bpy.data.images.new("texture", size, size)
    image.pixels = [random.random() if i % 4 != 3 else 1.0 for i in range(size * size * 4)]
    image.filepath_raw = path
    image.file_format = "PNG"
    image.save()
    bpy.data.images.remove(image)


def glowing(name: str, image: bpy.types.Image) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes = material.node_tree.nodes
    nodes.clear()
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.interpolation = "Closest"
    if image.source == "SEQUENCE":
        texture.image_user.frame_duration = 3
        texture.image_user.use_auto_refresh = True
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    material.node_tree.links.new(texture.outputs["Color"], emission.inputs["Color"])
    material.node_tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def plane(name: str, x: float, material: bpy.types.Material) -> bpy.types.Object:
    bpy.ops.mesh.primitive_plane_add(size=2, location=(x, 0, 0))
    obj = bpy.context.active_object
    obj.name = name
    obj.data.materials.append(material)
    return obj


for name in ("tex/wood.png", "abs/marble.png", "assets/tex/libtex.png"):
    png(f"{root}/{name}")
for frame in (1, 2, 3):
    png(f"{root}/tex/seq/frame_{frame:04d}.png")

# The library: a plane with its own texture, relative to the library's folder.
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/assets/props.blend")
texture = bpy.data.images.load(f"{root}/assets/tex/libtex.png")
texture.filepath = "//tex/libtex.png"
plane("prop", 3.3, glowing("prop", texture)).use_fake_user = True
bpy.ops.wm.save_mainfile(relative_remap=False)

# The shot, in a folder of its own.
os.makedirs(f"{root}/shots", exist_ok=True)
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.save_as_mainfile(filepath=f"{root}/shots/shot.blend")
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.device = "CPU"
scene.cycles.samples = 2
scene.cycles.seed = 0
scene.cycles.use_denoising = False
scene.render.resolution_x, scene.render.resolution_y = 64, 36
scene.render.resolution_percentage = 100
scene.render.image_settings.file_format = "OPEN_EXR"
scene.frame_start, scene.frame_end = 1, 2
camera = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
camera.data.type = "ORTHO"
camera.data.ortho_scale = 9.0
camera.location = (0, 0, 5)
scene.collection.objects.link(camera)
scene.camera = camera
wood = bpy.data.images.load(f"{root}/tex/wood.png")
wood.filepath = "//../tex/wood.png"
marble = bpy.data.images.load(f"{root}/abs/marble.png")  # stays absolute
sequence = bpy.data.images.load(f"{root}/tex/seq/frame_0001.png")
sequence.source = "SEQUENCE"
sequence.filepath = "//../tex/seq/frame_0001.png"
plane("wood", -3.3, glowing("wood", wood))
plane("marble", -1.1, glowing("marble", marble))
plane("sequence", 1.1, glowing("sequence", sequence))
with bpy.data.libraries.load(f"{root}/assets/props.blend", link=True, relative=True) as (_, into):
    into.objects = ["prop"]
scene.collection.objects.link(bpy.data.objects["prop"])
bpy.ops.wm.save_mainfile(relative_remap=False)
