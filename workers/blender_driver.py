"""Runs inside Blender: keeps one scene open and renders frames and regions on command.

The farm starts ``blender -b SCENE --python blender_driver.py`` and talks to this script over
stdin/stdout, one JSON object a line. Replies start with ``@@farm `` so they stand out from
Blender's own output (render progress, warnings), which the farm parses for progress and keeps
for error reports. Only the standard library and ``bpy`` are used, and only API that exists from
Blender 3.4 to 5.x, so any Blender a lab node has can be driven.

Commands:
  {"op": "configure", "settings": {...}}   apply job overrides once; replies with the scene info
  {"op": "render", "frame": N, "border": [min_x, max_x, min_y, max_y] | null,
   "image": {...}, "dir": "/tmp/...", "name": "unique_"}
                                           render one frame or region; replies with the file written
  {"op": "quit"}
"""

import json
import os
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
            if command["op"] == "configure":
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
