"""Runs inside Blender: keeps one scene open and renders frames and regions on command.

The farm starts ``blender -b SCENE --python blender_driver.py`` and talks to this script over
stdin/stdout, one JSON object a line. Replies start with ``@@farm `` so they stand out from
Blender's own output (render progress, warnings), which the farm parses for progress and keeps
for error reports. Only the standard library and ``bpy`` are used, and only API that exists from
Blender 3.4 to 5.x, so any Blender a lab node has can be driven.

Commands:
  {"op": "remap", "root": "/…/trees/<id>"} point every absolute path of the scene's local data at
                                           its mirror under root (the scene's tree on this node:
                                           workers/scene_cache.py); replies with what it moved and
                                           which of those are missing there. Sent first, if at all
  {"op": "configure", "settings": {...}}   apply job overrides once; replies with the scene info
  {"op": "render", "frame": N, "border": [min_x, max_x, min_y, max_y] | null,
   "image": {...}, "dir": "/tmp/...", "name": "unique_"}
                                           render one frame or region; replies with the file written
  {"op": "quit"}
"""

import importlib.util
import json
import os
import re
import sys
import time
import traceback

import bpy

PREFIX = "@@farm "


def reply(**message):
    sys.stdout.write(PREFIX + json.dumps(message) + "\n")
    sys.stdout.flush()


def scene_info(scene):
    """What the farm needs to plan and validate a job, as the .blend has it (after overrides)."""
    render = scene.render
    image = render.image_settings
    cycles = getattr(scene, "cycles", None)
    percentage = render.resolution_percentage
    return {
        "blender": bpy.app.version_string,
        "scene": scene.name,
        "engine": render.engine,
        "width": render.resolution_x * percentage // 100,
        "height": render.resolution_y * percentage // 100,
        "frame_start": scene.frame_start,
        "frame_end": scene.frame_end,
        "frame_step": scene.frame_step,
        "fps": render.fps / render.fps_base,
        "has_camera": scene.camera is not None,
        "file_format": image.file_format,
        "color_depth": image.color_depth,
        "color_mode": image.color_mode,
        "exr_codec": getattr(image, "exr_codec", "ZIP"),
        "quality": image.quality,
        "dither": render.dither_intensity,
        "samples": getattr(cycles, "samples", None) if cycles else None,
        "seed": getattr(cycles, "seed", None) if cycles else None,
        "denoising": getattr(cycles, "use_denoising", None) if cycles else None,
    }


def use_gpu(scene, device_type):
    """Render on every GPU of ``device_type`` this process sees (Ray sets CUDA_VISIBLE_DEVICES)."""
    prefs = bpy.context.preferences.addons["cycles"].preferences
    prefs.compute_device_type = device_type
    prefs.get_devices()
    devices = [d for d in prefs.devices if d.type == device_type]
    if not devices:
        raise RuntimeError(f"no {device_type} device visible to Blender")
    for device in prefs.devices:
        device.use = device.type == device_type
    scene.cycles.device = "GPU"


def configure(scene, settings):
    render = scene.render
    render.use_persistent_data = True
    if "engine" in settings:
        render.engine = settings["engine"]
    if "resolution" in settings:
        render.resolution_x, render.resolution_y = settings["resolution"]
        render.resolution_percentage = 100
    if render.engine == "CYCLES":
        if "samples" in settings:
            scene.cycles.samples = settings["samples"]
            if hasattr(scene.cycles, "use_adaptive_sampling"):
                scene.cycles.use_adaptive_sampling = False
        if "seed" in settings:
            scene.cycles.seed = settings["seed"]
            scene.cycles.use_animated_seed = False
        device = settings.get("device", "CPU")
        if device == "CPU":
            scene.cycles.device = "CPU"
        else:
            use_gpu(scene, device)
    if "dither" in settings:
        render.dither_intensity = settings["dither"]


def apply_image(scene, image_settings):
    """Set the output format; order matters (a format must be set before its depth and codec)."""
    image = scene.render.image_settings
    if hasattr(image, "media_type") and "file_format" in image_settings:
        multilayer = image_settings["file_format"] == "OPEN_EXR_MULTILAYER"
        image.media_type = "MULTI_LAYER_IMAGE" if multilayer else "IMAGE"
    for key in ("file_format", "color_mode", "color_depth", "exr_codec", "quality", "compression"):
        if key in image_settings:
            setattr(image, key, image_settings[key])


def render(scene, command):
    render_settings = scene.render
    border = command.get("border")
    render_settings.use_border = border is not None
    render_settings.use_crop_to_border = border is not None
    if border is not None:
        (
            render_settings.border_min_x,
            render_settings.border_max_x,
            render_settings.border_min_y,
            render_settings.border_max_y,
        ) = border
    apply_image(scene, command["image"])
    scene.frame_set(command["frame"])
    folder = command["dir"]
    os.makedirs(folder, exist_ok=True)
    before = set(os.listdir(folder))
    render_settings.use_file_extension = True
    render_settings.filepath = os.path.join(folder, command["name"])
    started = time.monotonic()
    bpy.ops.render.render(write_still=True)
    written = sorted(set(os.listdir(folder)) - before)
    if len(written) != 1:
        raise RuntimeError(f"Blender wrote {written or 'nothing'} for frame {command['frame']}")
    return {"path": os.path.join(folder, written[0]), "seconds": time.monotonic() - started}


# The data-blocks that name a file, and the property that names it (Blender lets Python point a
# linked data-block's file elsewhere: a library's absolute paths are remapped too).
ID_PATHS = (
    ("images", "filepath"),
    ("movieclips", "filepath"),
    ("sounds", "filepath"),
    ("fonts", "filepath"),
    ("cache_files", "filepath"),
    ("volumes", "filepath"),
)
# Files and folders named by modifiers and sequencer strips: (type, property path).
MODIFIER_PATHS = (
    ("MESH_CACHE", "filepath"),
    ("OCEAN", "filepath"),
    ("FLUID", "domain_settings.cache_directory"),
)
STRIP_PATHS = (("IMAGE", "directory"), ("MOVIE", "filepath"))
_DRIVE = re.compile(r"[A-Za-z]:[\\/]")


def scene_cache():
    """workers/scene_cache.py, imported by path (it is standard library only): its ``mirrored``
    is the one mapping the node's tree was built with."""
    name = "farm_scene_cache"
    if name not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scene_cache.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules[name]


def is_absolute(path):
    """A POSIX, Windows drive or UNC absolute path; ``//…`` is Blender's relative to the .blend."""
    if not path or path.startswith("//"):
        return False
    return path.startswith(("/", "\\\\")) or _DRIVE.match(path) is not None


def external_caches(modifier):
    """The point caches of ``modifier`` kept in a folder of their own (``use_external``): one
    named by an absolute path is remapped; the others live in ``//blendcache_*`` beside their
    .blend, in the tree already."""
    owner = modifier
    if modifier.type == "PARTICLE_SYSTEM":
        owner = modifier.particle_system
    owners = [owner] if modifier.type in {"CLOTH", "SOFT_BODY", "PARTICLE_SYSTEM"} else []
    if modifier.type == "DYNAMIC_PAINT" and modifier.canvas_settings is not None:
        owners = list(modifier.canvas_settings.canvas_surfaces)
    return [c for o in owners for c in o.point_cache.point_caches if c.use_external]


def remap(root):
    """Rewrite each absolute path the data names (linked data too) to ``mirrored(root, path)``
    and reload the libraries moved; relative paths resolve in the tree already (the scene is
    opened from it)."""
    if not os.path.isabs(root):
        raise ValueError(f"remap root must be absolute: {root!r}")
    mirrored = scene_cache().mirrored
    moved, missing, libraries = [], [], []

    def move(owner, attribute):
        *path, name = attribute.split(".")
        for step in path:
            owner = getattr(owner, step, None)
        original = getattr(owner, name, "") if owner is not None else ""
        if not is_absolute(original):
            return False
        target = str(mirrored(root, original))
        if original[-1] in "/\\":  # a folder (a strip's images, a bake) keeps its trailing slash
            target += os.sep
        setattr(owner, name, target)
        moved.append(target)
        if "<" not in target and not os.path.exists(target):  # <UDIM>, <UVTILE> name many
            missing.append(target)
        return True

    for library in list(bpy.data.libraries):
        if move(library, "filepath") and os.path.exists(library.filepath):
            libraries.append(library)
    for library in libraries:
        library.reload()
    for collection, attribute in ID_PATHS:
        for block in getattr(bpy.data, collection, ()):
            if getattr(block, "packed_file", None) is None:
                move(block, attribute)
    for block in bpy.data.objects:
        for modifier in block.modifiers:
            for kind, attribute in MODIFIER_PATHS:
                if modifier.type == kind:
                    move(modifier, attribute)
            for cache in external_caches(modifier):
                move(cache, "filepath")
    for block in bpy.data.scenes:
        editor = block.sequence_editor if block.library is None else None
        strips = getattr(editor, "sequences_all", None) or getattr(editor, "strips_all", ())
        for strip in strips:
            for kind, attribute in STRIP_PATHS:
                if strip.type == kind:
                    move(strip, attribute)
    return {"paths": len(moved), "missing": missing}


def main():
    scene = bpy.context.scene
    reply(op="hello", info=scene_info(scene))
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        try:
            if command["op"] == "quit":
                break
            if command["op"] == "remap":
                reply(op="remapped", **remap(command["root"]))
            elif command["op"] == "configure":
                configure(scene, command["settings"])
                reply(op="configured", info=scene_info(scene))
            elif command["op"] == "render":
                reply(op="rendered", **render(scene, command))
            else:
                raise ValueError(f"unknown command {command['op']!r}")
        except Exception as error:
            reply(
                op="error", error=f"{type(error).__name__}: {error}", trace=traceback.format_exc()
            )


main()
