"""Runs inside Blender: lists every external file the open .blend uses, as Blender itself sees it.

``blender -b --factory-startup SCENE --python blend_files.py -- OUT.json`` writes a JSON list,
one entry a file: ``{"path": absolute and normalised, "block": "image 'wood'", "library": the
absolute path of the library the data-block comes from, or null}``. A farm whose nodes share no
drive with the submitter must carry each of these files along (``farm/scene_files.py``).

Why Blender and not a parser of .blend files: Blender resolves what only it knows, and this
script checked on Blender 3.4 what it stores:

* an image sequence (source ``SEQUENCE``) and a movie clip of frames store ONE frame's file name
  (``frame_0001.png``), and ``blend_paths`` names only that one; the frame number is the last run
  of digits before the extension. A volume or cache file with ``is_sequence`` follows the same
  rule in Blender's source (Debian's 3.4 writes neither VDB nor Alembic to try it). Every file of
  that folder with the same head and tail and digits in the number's place is listed (none: the
  stored file, which does not exist);
* a UDIM set (source ``TILED``) stores the ``<UDIM>`` token (``udim.<UDIM>.png``) and its tiles
  in ``image.tiles``: one entry a tile (older files: a 1001-style number; ``<UVTILE>`` too);
* a ``//`` path of a linked data-block is relative to its library's folder, and the path of an
  indirectly linked library is stored relative to the open .blend (Blender rewrites it on load);
* text data-blocks keep their content in the .blend: their files are not listed. An ocean's bake
  folder is not listed (it is an output until baked); a fluid domain's cache folder is listed
  file by file where it exists, and so is each point cache kept on disk (cloth, soft body,
  particles, dynamic paint), as Blender names its ``.bphys`` files (:func:`baked_files`): a baked
  simulation travels with the scene. ``bpy.utils.blend_paths`` (whose ``packed=False`` leaves packed
  files out in 3.4, whatever its docstring says) is the net for the rest: what it names and this
  walk did not attribute is listed as ``unknown data-block``.

Only the standard library and ``bpy``, and only API that exists from Blender 3.4 to 4.x.
"""

import functools
import json
import os
import re
import sys

import bpy

# A frame file name: head, the frame number (digits, or a run of # standing for them), tail.
_FRAME = re.compile(r"(.*?)(#+|\d+)([^\d#]*)$")
_NO_FILE = {"RENDER_RESULT", "COMPOSITING"}  # images Blender makes itself
_TILE = re.compile(r"(?<!\d)1\d{3}(?!\d)")  # a 1001-style UDIM number in an older file's name


def absolute(path, library=None):
    """``path`` as the file system has it: a ``//`` path against the .blend (or ``library``)."""
    return os.path.normpath(bpy.path.abspath(path, library=library))


def library_path(library):
    """The absolute path of ``library``: Blender stores it relative to the open .blend."""
    return absolute(library.filepath) if library is not None else None


def sequence_files(path):
    """Every file of ``path``'s folder that is a frame of the same sequence, else ``[path]``."""
    folder, name = os.path.split(path)
    stem, dot, extension = name.rpartition(".")
    if not dot:
        stem, extension = name, ""
    match = _FRAME.match(stem)
    if match is None:
        return [path]
    tail = match[3] + dot + extension
    frame = re.compile(re.escape(match[1]) + r"\d+" + re.escape(tail) + "$")
    try:
        names = sorted(n for n in os.listdir(folder) if frame.match(n))
    except OSError:
        names = []
    return [os.path.join(folder, n) for n in names] or [path]


def tile_files(path, numbers):
    """One file a UDIM tile: ``<UDIM>``, ``<UVTILE>`` or an older file's 1001-style number."""
    folder, name = os.path.split(path)

    def named(number):
        if "<UDIM>" in name:
            return name.replace("<UDIM>", str(number))
        if "<UVTILE>" in name:
            u, v = (number - 1001) % 10 + 1, (number - 1001) // 10 + 1
            return name.replace("<UVTILE>", f"u{u}_v{v}")
        found = list(_TILE.finditer(name))
        if not found:
            return name
        last = found[-1]
        return name[: last.start()] + str(number) + name[last.end() :]

    return [os.path.join(folder, named(n)) for n in numbers] or [path]


class Listing:
    """The entries found so far; ``claimed`` also holds the paths as stored (a ``<UDIM>`` name,
    a sequence's one frame, a text's file), so that the ``blend_paths`` net leaves them out."""

    def __init__(self):
        self.entries, self.claimed = [], set()

    def add(self, files, block, library):
        for path in files:
            self.claimed.add(path)
            self.entries.append({"path": path, "block": block, "library": library})

    def block(self, id_block, kind, raw, expand=None):
        """``id_block`` (of ``kind``) uses ``raw``, a path as Blender stores it; ``expand`` turns
        it into the files it names (a sequence's frames, a UDIM set's tiles)."""
        if not raw:
            return
        path = absolute(raw, id_block.library)
        self.claimed.add(path)
        files = expand(path) if expand else [path]
        self.add(files, f"{kind} '{id_block.name}'", library_path(id_block.library))


def folder_files(folder):
    """Every file under ``folder`` (a bake's), in order; none when it does not exist."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders.sort()
        found += [os.path.join(parent, n) for n in sorted(names)]
    return found


def point_caches(obj):
    """``(what, cache)`` for each point cache of ``obj`` kept on disk (cloth, soft body, particles,
    dynamic paint), each of a cache's stack."""
    owners = []
    for modifier in obj.modifiers:
        if modifier.type in {"CLOTH", "SOFT_BODY"}:
            owners.append(
                (f"{modifier.type.lower().replace('_', ' ')} '{modifier.name}'", modifier)
            )
        elif modifier.type == "PARTICLE_SYSTEM":
            owners.append(
                (f"particles '{modifier.particle_system.name}'", modifier.particle_system)
            )
        elif modifier.type == "DYNAMIC_PAINT" and modifier.canvas_settings is not None:
            for surface in modifier.canvas_settings.canvas_surfaces:
                owners.append((f"dynamic paint '{surface.name}'", surface))
    for what, owner in owners:
        for cache in owner.point_cache.point_caches:
            if cache.use_disk_cache or cache.use_external:
                yield f"{what} of object '{obj.name}'", cache


def baked_files(obj, cache):
    """The files of a point cache on disk, as Blender names them: ``<name>_<frame:06>_<index:02>
    .bphys`` (an unnamed cache's name is its object's name in upper-case hex) in
    ``//blendcache_<blend's name>/`` beside the .blend that holds the object, or in the cache's
    own folder (``use_external``). A baked cache without its files lists its first: missing."""
    if cache.use_external:
        folder = absolute(cache.filepath, obj.library)
    else:
        blend = library_path(obj.library) or bpy.data.filepath
        stem = os.path.splitext(os.path.basename(blend))[0]
        folder = os.path.join(os.path.dirname(blend), f"blendcache_{stem}")
    name = cache.name or obj.name.encode("utf-8").hex().upper()
    index = f"_{cache.index:02d}" if cache.index >= 0 else ""
    pattern = re.compile(re.escape(name) + r"_\d{6}" + re.escape(index) + r"\.bphys$")
    try:
        found = sorted(n for n in os.listdir(folder) if pattern.match(n))
    except OSError:
        found = []
    if found or not cache.is_baked:
        return [os.path.join(folder, n) for n in found]
    return [os.path.join(folder, f"{name}_{cache.frame_start:06d}{index}.bphys")]  # missing


def packed(block):
    """Packed into the .blend: nothing to carry."""
    if getattr(block, "packed_file", None) is not None:
        return True
    return len(getattr(block, "packed_files", ())) > 0


def walk(listing):
    """Every data-block kind that names files, in the order a user thinks of them."""
    for image in bpy.data.images:
        if image.source in {"GENERATED", "VIEWER"} or image.type in _NO_FILE or packed(image):
            continue
        expand = None
        if image.source == "SEQUENCE":
            expand = sequence_files
        elif image.source == "TILED":
            expand = functools.partial(tile_files, numbers=[tile.number for tile in image.tiles])
        listing.block(image, "image", image.filepath, expand)
    for library in bpy.data.libraries:
        if not packed(library):
            block = f"library '{library.name}'"
            listing.add([library_path(library)], block, library_path(library.parent))
    for clip in bpy.data.movieclips:
        files = sequence_files if clip.source == "SEQUENCE" else None
        listing.block(clip, "movie clip", clip.filepath, files)
    for sound in bpy.data.sounds:
        if not packed(sound):
            listing.block(sound, "sound", sound.filepath)
    for font in bpy.data.fonts:
        if font.filepath != "<builtin>" and not packed(font):
            listing.block(font, "font", font.filepath)
    for cache in bpy.data.cache_files:
        listing.block(
            cache, "cache file", cache.filepath, sequence_files if cache.is_sequence else None
        )
        for layer in getattr(cache, "layers", ()):  # Alembic layers (3.3 on): files of their own
            listing.block(cache, "cache file", layer.filepath)
    for volume in bpy.data.volumes:
        if not packed(volume):
            files = sequence_files if volume.is_sequence else None
            listing.block(volume, "volume", volume.filepath, files)
    for block in bpy.data.objects:
        for modifier in block.modifiers:
            if modifier.type == "MESH_CACHE":
                listing.block(block, "object", modifier.filepath)
            elif modifier.type == "OCEAN":  # a bake folder: not listed, not "unknown" either
                listing.claimed.add(absolute(modifier.filepath, block.library))
            elif modifier.type == "FLUID" and modifier.fluid_type == "DOMAIN":
                folder = absolute(modifier.domain_settings.cache_directory, block.library)
                listing.claimed.add(folder)
                name = f"fluid domain '{modifier.name}' of object '{block.name}'"
                listing.add(folder_files(folder), name, library_path(block.library))
        for name, cache in point_caches(block):
            listing.add(baked_files(block, cache), name, library_path(block.library))
    for scene in bpy.data.scenes:
        editor = scene.sequence_editor
        strips = getattr(editor, "sequences_all", None) or getattr(editor, "strips_all", ())
        for strip in strips:
            name = f"strip '{strip.name}' of scene"
            if strip.type == "IMAGE":
                files = [os.path.join(strip.directory, e.filename) for e in strip.elements]
                for raw in files:
                    listing.block(scene, name, raw)
            elif strip.type == "MOVIE":
                listing.block(scene, name, strip.filepath)
    for text in bpy.data.texts:  # the .blend holds the text itself
        if text.filepath:
            listing.claimed.add(absolute(text.filepath, text.library))
    for brush in bpy.data.brushes:  # an icon of the user interface, not of the render
        if getattr(brush, "icon_filepath", ""):
            listing.claimed.add(absolute(brush.icon_filepath, brush.library))


def list_files():
    """The walk, then what Blender's own list names that the walk did not attribute."""
    listing = Listing()
    walk(listing)
    for path in bpy.utils.blend_paths(absolute=True, packed=False, local=False):
        if not path:  # a point cache in the .blend's own folder names none
            continue
        path = os.path.normpath(path)
        if path not in listing.claimed:
            listing.add([path], "unknown data-block", None)
    return listing.entries


def main():
    args = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    if len(args) != 1:
        raise SystemExit("usage: blender -b SCENE --python blend_files.py -- OUT.json")
    if not bpy.data.filepath:
        raise SystemExit("blend_files.py: Blender opened no .blend file")
    partial = args[0] + ".part"
    with open(partial, "w", encoding="utf-8") as out:
        json.dump(list_files(), out, indent=1)
    os.replace(partial, args[0])


main()
