"""Build the example animated shot for the render farm from nothing.

The farm needs a real little shot to split into tiles, render and assemble:
a moving camera, several moving coloured objects over a checkered ground,
three lights (two of them animated) and a world colour, rendered with Cycles
on the CPU. Rather than committing an opaque ``.blend`` binary to the repository,
this script builds the scene in code from an empty factory scene and saves
it, so the shot is reviewable, diffable and reproducible.

It runs inside Blender (it imports ``bpy``) and works on Blender 3.4 to 5.x::

    blender -b --factory-startup --python examples/build_shot.py -- OUT.blend \
        [--resolution 320x180] [--samples 16] [--frames 24]

Then render it, for example::

    blender -b OUT.blend -o /tmp/shot/f_#### -a

Frames are written as 32-bit RGBA OpenEXR (ZIP); the seed is fixed and not
animated, denoising and motion blur are off, so renders are deterministic
and tiles of a frame can be assembled seamlessly.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

import bpy

Vec3 = tuple[float, float, float]
RGB = tuple[float, float, float]

TARGET: Vec3 = (0.0, 0.0, 0.8)


class _Parser(argparse.ArgumentParser):
    """Argument parser that reports errors as a single line."""

    def error(self, message: str) -> NoReturn:
        """Print a one-line error and exit with status 2."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _resolution(text: str) -> tuple[int, int]:
    """Parse ``WIDTHxHEIGHT`` into a pair of positive ints."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid resolution {text!r}, expected WIDTHxHEIGHT"
        ) from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"resolution must be positive: {text!r}")
    return width, height


def _positive_int(text: str) -> int:
    """Parse a strictly positive integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse the script's arguments (those after ``--`` on Blender's line)."""
    parser = _Parser(
        prog="build_shot.py",
        description="Build the example animated shot and save it as .blend.",
    )
    parser.add_argument("out", metavar="OUT.blend", help="path of the .blend")
    parser.add_argument("--resolution", type=_resolution, default=(320, 180))
    parser.add_argument("--samples", type=_positive_int, default=16)
    parser.add_argument("--frames", type=_positive_int, default=24)
    parser.add_argument(
        "--transparent", action="store_true", help="no sky: alpha 0 where the world shows"
    )
    parser.add_argument(
        "--multilayer",
        action="store_true",
        help="multilayer EXR with diffuse and glossy colour passes (AOVs for comps)",
    )
    args = parser.parse_args(list(argv))
    if os.path.isdir(args.out):
        parser.error(f"OUT.blend is a directory: {args.out}")
    return args


def script_argv() -> list[str]:
    """Return the arguments after ``--`` (Blender ignores those itself)."""
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1 :]
    return []


def find_input(node: Any, names: Iterable[str]) -> Any | None:
    """Return the first input socket of ``node`` named in ``names``.

    Socket names differ between Blender versions (e.g. Principled BSDF
    "Emission" became "Emission Color" in 4.0), so callers list them all.
    """
    for name in names:
        socket = node.inputs.get(name)
        if socket is not None:
            return socket
    return None


def set_input(node: Any, names: Iterable[str], value: Any) -> None:
    """Set the default value of the first matching input, if any."""
    socket = find_input(node, names)
    if socket is not None:
        socket.default_value = value


def fresh_node_tree(owner: Any) -> Any:
    """Enable nodes on a material or world and return its emptied tree."""
    # From 5.0 node trees are always used and ``use_nodes`` is deprecated
    # (touching it warns; it goes away in 6.0), so only set it before 5.0.
    if bpy.app.version < (5, 0, 0):
        owner.use_nodes = True
    tree = owner.node_tree
    tree.nodes.clear()
    return tree


def make_world(scene: Any, color: RGB, strength: float) -> None:
    """Give the scene a plain coloured world background."""
    world = bpy.data.worlds.new("ShotWorld")
    tree = fresh_node_tree(world)
    background = tree.nodes.new("ShaderNodeBackground")
    output = tree.nodes.new("ShaderNodeOutputWorld")
    set_input(background, ("Color",), (*color, 1.0))
    set_input(background, ("Strength",), strength)
    tree.links.new(background.outputs[0], output.inputs["Surface"])
    world.color = color  # Viewport colour; harmless for Cycles.
    scene.world = world


def make_material(
    name: str,
    color: RGB,
    roughness: float = 0.5,
    metallic: float = 0.0,
    emission: float = 0.0,
) -> Any:
    """Create a Principled BSDF material with an optional glow."""
    mat = bpy.data.materials.new(name)
    mat.diffuse_color = (*color, 1.0)
    tree = fresh_node_tree(mat)
    bsdf = tree.nodes.new("ShaderNodeBsdfPrincipled")
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    set_input(bsdf, ("Base Color",), (*color, 1.0))
    set_input(bsdf, ("Roughness",), roughness)
    set_input(bsdf, ("Metallic",), metallic)
    if emission > 0.0:
        set_input(bsdf, ("Emission Color", "Emission"), (*color, 1.0))
        set_input(bsdf, ("Emission Strength",), emission)
    tree.links.new(bsdf.outputs[0], output.inputs["Surface"])
    return mat


def make_checker_material(name: str, color_a: RGB, color_b: RGB) -> Any:
    """Create a checkered, slightly bumpy floor so camera motion reads clearly."""
    mat = make_material(name, color_a, roughness=0.8)
    tree = mat.node_tree
    bsdf = next(n for n in tree.nodes if n.bl_idname == "ShaderNodeBsdfPrincipled")
    checker = tree.nodes.new("ShaderNodeTexChecker")
    set_input(checker, ("Color1",), (*color_a, 1.0))
    set_input(checker, ("Color2",), (*color_b, 1.0))
    set_input(checker, ("Scale",), 12.0)
    tree.links.new(checker.outputs[0], find_input(bsdf, ("Base Color",)))
    noise = tree.nodes.new("ShaderNodeTexNoise")
    set_input(noise, ("Scale",), 18.0)
    set_input(noise, ("Detail",), 2.0)
    bump = tree.nodes.new("ShaderNodeBump")
    set_input(bump, ("Strength",), 0.15)
    tree.links.new(noise.outputs[0], find_input(bump, ("Height",)))
    tree.links.new(bump.outputs[0], find_input(bsdf, ("Normal",)))
    return mat


def finish_object(obj: Any, name: str, material: Any, smooth: bool) -> Any:
    """Name an object, assign its material and optionally shade it smooth."""
    obj.name = name
    obj.data.name = name
    obj.data.materials.append(material)
    if smooth:
        for polygon in obj.data.polygons:
            polygon.use_smooth = True
    return obj


def add_ground(material: Any) -> Any:
    """Add a large ground plane at z = 0."""
    bpy.ops.mesh.primitive_plane_add(size=40.0, location=(0.0, 0.0, 0.0))
    return finish_object(bpy.context.active_object, "Ground", material, False)


def add_sphere(name: str, radius: float, material: Any) -> Any:
    """Add a smooth, low-poly UV sphere."""
    bpy.ops.mesh.primitive_uv_sphere_add(segments=32, ring_count=16, radius=radius)
    return finish_object(bpy.context.active_object, name, material, True)


def add_ico(name: str, radius: float, material: Any) -> Any:
    """Add a faceted icosphere."""
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=1, radius=radius)
    return finish_object(bpy.context.active_object, name, material, False)


def add_cube(name: str, size: float, material: Any) -> Any:
    """Add a cube."""
    bpy.ops.mesh.primitive_cube_add(size=size)
    return finish_object(bpy.context.active_object, name, material, False)


def add_torus(name: str, major: float, minor: float, material: Any) -> Any:
    """Add a smooth torus."""
    bpy.ops.mesh.primitive_torus_add(
        major_radius=major, minor_radius=minor, major_segments=40, minor_segments=16
    )
    return finish_object(bpy.context.active_object, name, material, True)


def add_pillars(count: int, radius: float) -> None:
    """Add a static arc of coloured pillars behind the action."""
    for i in range(count):
        angle = math.radians(20.0 + 140.0 * i / max(count - 1, 1))
        height = 1.6 + 1.2 * ((i * 7) % count) / count
        hue = i / count
        color = (
            0.25 + 0.35 * math.cos(2.0 * math.pi * hue) ** 2,
            0.25 + 0.35 * math.cos(2.0 * math.pi * (hue + 1.0 / 3.0)) ** 2,
            0.25 + 0.35 * math.cos(2.0 * math.pi * (hue + 2.0 / 3.0)) ** 2,
        )
        bpy.ops.mesh.primitive_cylinder_add(
            vertices=16,
            radius=0.35,
            depth=height,
            location=(radius * math.cos(angle), radius * math.sin(angle), height / 2),
        )
        material = make_material(f"Pillar{i}", color, roughness=0.6)
        finish_object(bpy.context.active_object, f"Pillar{i}", material, False)


def phase(frame: int, frames: int) -> float:
    """Map ``frame`` in 1..frames onto 0..1 (0 for a one-frame shot)."""
    return (frame - 1) / (frames - 1) if frames > 1 else 0.0


def key_transform(
    obj: Any,
    frame: int,
    location: Vec3,
    rotation: Vec3 | None = None,
) -> None:
    """Key an object's location (and rotation, if given) at ``frame``."""
    obj.location = location
    obj.keyframe_insert(data_path="location", frame=frame)
    if rotation is not None:
        obj.rotation_euler = rotation
        obj.keyframe_insert(data_path="rotation_euler", frame=frame)


def animate_objects(objects: dict[str, Any], frames: int) -> None:
    """Key every frame of the moving props from closed-form paths."""
    for frame in range(1, frames + 1):
        t = phase(frame, frames)
        turn = 2.0 * math.pi * t
        # Red ball: one and a half bounces while drifting across the set.
        bounce = abs(math.sin(3.0 * math.pi * t))
        key_transform(
            objects["ball"],
            frame,
            (-2.6 + 1.2 * t, -0.6, 0.6 + 2.2 * bounce),
        )
        # Blue cube: slides along y and tumbles.
        key_transform(
            objects["cube"],
            frame,
            (2.4, 1.2 - 2.4 * t, 0.7),
            (0.0, 0.0, turn * 0.5),
        )
        # Gold torus: hovers and spins around two axes.
        key_transform(
            objects["torus"],
            frame,
            (0.2, 2.6, 1.3 + 0.4 * math.sin(turn)),
            (math.radians(70.0), 0.0, turn),
        )
        # Green icosphere: orbits the centre of the set.
        key_transform(
            objects["ico"],
            frame,
            (3.6 * math.cos(turn + 2.0), 3.6 * math.sin(turn + 2.0), 0.55),
            (turn, 0.0, turn),
        )
        # Glowing cyan orb: a higher, counter-rotating orbit.
        key_transform(
            objects["orb"],
            frame,
            (2.0 * math.cos(-turn), 2.0 * math.sin(-turn), 2.6),
        )


def add_target() -> Any:
    """Add the empty the camera looks at."""
    target = bpy.data.objects.new("CameraTarget", None)
    target.location = TARGET
    bpy.context.scene.collection.objects.link(target)
    return target


def add_camera(scene: Any, target: Any, frames: int) -> Any:
    """Add a camera that orbits and dollies in while tracking the target."""
    cam_data = bpy.data.cameras.new("ShotCamera")
    cam_data.lens = 32.0
    cam_data.clip_start = 0.1
    cam_data.clip_end = 200.0
    camera = bpy.data.objects.new("ShotCamera", cam_data)
    scene.collection.objects.link(camera)
    scene.camera = camera
    aim_at(camera, target)
    for frame in range(1, frames + 1):
        t = phase(frame, frames)
        angle = math.radians(-115.0 + 50.0 * t)
        radius = 12.5 - 2.5 * t
        height = 5.0 - 1.2 * t
        key_transform(
            camera,
            frame,
            (radius * math.cos(angle), radius * math.sin(angle), height),
        )
    return camera


def add_light(scene: Any, name: str, kind: str, energy: float, color: RGB) -> Any:
    """Add a light object of type ``kind`` (SUN, AREA, POINT, ...)."""
    data = bpy.data.lights.new(name, type=kind)
    data.energy = energy
    data.color = color
    obj = bpy.data.objects.new(name, data)
    scene.collection.objects.link(obj)
    return obj


def aim_at(obj: Any, target: Any) -> None:
    """Keep ``obj``'s -Z axis pointed at ``target``."""
    track = obj.constraints.new(type="TRACK_TO")
    track.target = target
    track.track_axis = "TRACK_NEGATIVE_Z"
    track.up_axis = "UP_Y"


def add_lights(scene: Any, target: Any, frames: int) -> None:
    """Add a warm sun, a cool moving area fill and a pulsing rim light."""
    sun = add_light(scene, "KeySun", "SUN", 3.0, (1.0, 0.93, 0.82))
    sun.data.angle = math.radians(3.0)
    sun.rotation_euler = (math.radians(55.0), 0.0, math.radians(75.0))

    area = add_light(scene, "FillArea", "AREA", 200.0, (0.6, 0.75, 1.0))
    area.data.size = 3.0
    aim_at(area, target)

    rim = add_light(scene, "RimPoint", "POINT", 200.0, (1.0, 0.45, 0.2))
    rim.data.shadow_soft_size = 1.0
    rim.location = (1.5, 5.0, 3.5)

    for frame in range(1, frames + 1):
        t = phase(frame, frames)
        area.data.energy = 200.0 + 400.0 * t
        area.data.keyframe_insert(data_path="energy", frame=frame)
        key_transform(area, frame, (-5.0 + 6.0 * t, -4.0, 5.0))
        rim.data.energy = 100.0 + 200.0 * math.sin(2.0 * math.pi * t) ** 2
        rim.data.keyframe_insert(data_path="energy", frame=frame)


def build_props() -> dict[str, Any]:
    """Create the ground and the coloured props; return the moving ones."""
    add_ground(make_checker_material("Ground", (0.42, 0.42, 0.4), (0.12, 0.12, 0.14)))
    add_pillars(7, 7.5)
    return {
        "ball": add_sphere("RedBall", 0.6, make_material("Red", (0.8, 0.05, 0.04))),
        "cube": add_cube(
            "BlueCube",
            1.4,
            make_material("Blue", (0.05, 0.15, 0.8), 0.35),
        ),
        "torus": add_torus(
            "GoldTorus",
            0.9,
            0.28,
            make_material("Gold", (0.9, 0.6, 0.12), roughness=0.3, metallic=1.0),
        ),
        "ico": add_ico("GreenIco", 0.55, make_material("Green", (0.1, 0.65, 0.12))),
        "orb": add_sphere(
            "CyanOrb",
            0.3,
            make_material("Cyan", (0.1, 0.8, 0.9), emission=4.0),
        ),
    }


def set_cycles(scene: Any, samples: int) -> None:
    """Configure cheap, deterministic CPU Cycles rendering."""
    scene.render.engine = "CYCLES"
    cycles = scene.cycles
    cycles.device = "CPU"
    cycles.samples = samples
    cycles.seed = 0
    cycles.use_animated_seed = False
    cycles.use_denoising = False
    optional = {
        "use_preview_denoising": False,  # Not present in every build.
        "use_adaptive_sampling": False,  # Same per-pixel work in every tile.
        "max_bounces": 4,
        "diffuse_bounces": 3,
        "glossy_bounces": 3,
        "transmission_bounces": 2,
        "transparent_max_bounces": 4,
        "volume_bounces": 0,
        "caustics_reflective": False,
        "caustics_refractive": False,
    }
    for name, value in optional.items():
        if hasattr(cycles, name):
            setattr(cycles, name, value)


def set_output(
    scene: Any, resolution: tuple[int, int], frames: int, transparent: bool, multilayer: bool
) -> None:
    """Set resolution, frame range and 32-bit RGBA EXR output (multilayer with two AOVs)."""
    render = scene.render
    render.resolution_x, render.resolution_y = resolution
    render.resolution_percentage = 100
    render.fps = 24
    render.fps_base = 1.0
    render.film_transparent = transparent
    render.use_motion_blur = False
    render.filepath = "//render/shot_####"
    scene.frame_start = 1
    scene.frame_end = frames
    scene.frame_current = 1
    image = render.image_settings
    if hasattr(image, "media_type"):  # Blender 5.0 split images from video.
        image.media_type = "IMAGE"
    image.file_format = "OPEN_EXR_MULTILAYER" if multilayer else "OPEN_EXR"
    if multilayer:
        layer = scene.view_layers[0]
        layer.use_pass_diffuse_color = True
        layer.use_pass_glossy_color = True
    image.color_depth = "32"
    image.exr_codec = "ZIP"
    image.color_mode = "RGBA"


def save(path: str) -> None:
    """Save the current file uncompressed, creating parent folders.

    An existing file is replaced rather than kept as a ``.blend1`` backup.
    """
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    if os.path.isfile(path):
        os.remove(path)
    bpy.ops.wm.save_as_mainfile(filepath=path, compress=False)


def build(args: argparse.Namespace) -> None:
    """Build the whole shot from an empty scene and save it."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.name = "Shot"
    make_world(scene, (0.05, 0.07, 0.12), 1.0)
    animate_objects(build_props(), args.frames)
    target = add_target()
    add_camera(scene, target, args.frames)
    add_lights(scene, target, args.frames)
    set_cycles(scene, args.samples)
    set_output(scene, args.resolution, args.frames, args.transparent, args.multilayer)
    save(os.path.abspath(args.out))


def main() -> None:
    """Entry point: parse arguments, build, save and report."""
    args = parse_args(script_argv())
    try:
        build(args)
    except (OSError, RuntimeError) as exc:
        # Blender would print a traceback and still exit 0; fail loudly instead.
        message = " ".join(str(exc).split())
        sys.stderr.write(f"build_shot.py: error: cannot build {args.out}: {message}\n")
        sys.exit(1)
    print(f"built {args.out}")


if __name__ == "__main__":
    main()
