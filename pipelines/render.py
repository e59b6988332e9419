"""The render job type: validate a submission and expand it into frame, chunk and tile tasks.

Pure functions of the submission and of what Blender reports about the scene; no rendering here.
Validation happens in two steps, both before anything renders: :func:`validate` checks what can be
checked without Blender (files, frame lists, patterns, numbers), :func:`plan` what needs the scene
(its resolution against the tile grid, its frame range, its output format).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import FarmError
from farm.frames import OutputPattern, first_last_middle, parse_frames
from farm.tiling.plan import TileMode, TilePlan, blender_border, parse_tiles

FORMATS = {".exr": "exr", ".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
EXTENSIONS = {"exr": ".exr", "png": ".png", "jpeg": ".jpg"}
EXR_CODECS = ("NONE", "PXR24", "ZIP", "PIZ", "RLE", "ZIPS", "B44", "B44A", "DWAA", "DWAB")
DEVICES = ("CPU", "CUDA", "OPTIX", "HIP", "ONEAPI", "METAL")
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_EEVEE_NEXT", "BLENDER_WORKBENCH")
# Blender 3.0+ may save compressed .blend files: gzip (old) or zstd (3.0 and later).
BLEND_MAGICS = (b"BLENDER", b"\x1f\x8b", b"\x28\xb5\x2f\xfd")


@dataclass(frozen=True)
class RenderRequest:
    """A render submission as the user typed it (CLI options or API fields)."""

    scene: str
    frames: str | None = None
    chunk: int = 1
    tiles: str = "auto"
    overscan: int = 0
    output: str | None = None
    format: str | None = None
    samples: int | None = None
    seed: int | None = None
    resolution: str | None = None
    engine: str | None = None
    device: str = "CPU"
    compression: str | None = None
    allow_scripts: bool = False
    retries: int = 2


@dataclass(frozen=True)
class RenderSpec:
    """A validated submission."""

    scene: Path
    frames: tuple[int, ...] | None  # None: the scene's own frame range
    chunk: int
    tiles: TileMode
    overscan: int
    output: OutputPattern
    format: str
    resolution: tuple[int, int] | None
    overrides: dict[str, Any] = field(default_factory=dict)
    compression: str | None = None
    allow_scripts: bool = False
    retries: int = 2

    def as_json(self) -> dict[str, Any]:
        """The spec as the store keeps it."""
        return {
            "scene": str(self.scene),
            "frames": list(self.frames) if self.frames is not None else None,
            "chunk": self.chunk,
            "tiles": str(self.tiles),
            "overscan": self.overscan,
            "output": self.output.pattern,
            "format": self.format,
            "overrides": self.overrides,
            "compression": self.compression,
            "allow_scripts": self.allow_scripts,
            "retries": self.retries,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderSpec:
        """The spec the store kept (:meth:`as_json`), validated when it was submitted."""
        overrides = dict(data["overrides"])
        resolution = overrides.get("resolution")
        return cls(
            scene=Path(data["scene"]),
            frames=tuple(data["frames"]) if data["frames"] is not None else None,
            chunk=data["chunk"],
            tiles=parse_tiles(data["tiles"]),
            overscan=data["overscan"],
            output=OutputPattern(data["output"]),
            format=data["format"],
            resolution=(resolution[0], resolution[1]) if resolution else None,
            overrides=overrides,
            compression=data["compression"],
            allow_scripts=data["allow_scripts"],
            retries=data["retries"],
        )


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and value < minimum:
        raise FarmError(f"--{name} must be at least {minimum}, got {value}")


def _resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise FarmError(f"--resolution {text!r}: expected WIDTHxHEIGHT like 1920x1080") from None
    if not (1 <= width <= 65536 and 1 <= height <= 65536):
        raise FarmError(f"--resolution {text!r}: sides must be between 1 and 65536 pixels")
    return width, height


def user_path(what: str, text: str) -> Path:
    """A path the user typed, ``~`` expanded; one line naming it when it cannot be a path."""
    if "\x00" in text:
        raise FarmError(f"{what} {text!r} contains a NUL character")
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~someone with no such user (or no home)
        raise FarmError(f"{what} {text!r}: {text.split('/')[0]} is no user's home folder") from None


def _check_blend(path: Path) -> None:
    if not path.exists():
        raise FarmError(f"scene file {path} does not exist")
    if not path.is_file():
        raise FarmError(f"scene {path} is not a file")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise FarmError(f"scene file {path} cannot be read: {error.strerror}") from None
    if not head.startswith(BLEND_MAGICS):
        raise FarmError(f"{path} is not a Blender .blend file")


def validate(request: RenderRequest) -> RenderSpec:
    """Everything that can be refused without starting Blender, refused with one clear line."""
    scene = user_path("scene", request.scene)
    _check_blend(scene)
    frames = tuple(parse_frames(request.frames)) if request.frames is not None else None
    _positive("chunk", request.chunk)
    _positive("overscan", request.overscan, 0)
    _positive("samples", request.samples)
    _positive("seed", request.seed, 0)
    _positive("retries", request.retries, 0)
    tiles = parse_tiles(request.tiles)
    if request.chunk > 1 and tiles.kind in ("grid", "size"):
        raise FarmError("--chunk and --tiles split work in opposite ways: use one of them")
    if request.chunk > 1 and tiles.kind == "auto":
        tiles = TileMode("none")

    fmt = request.format.lower() if request.format else None
    if fmt == "jpg":
        fmt = "jpeg"
    if fmt is not None and fmt not in EXTENSIONS:
        raise FarmError(f"--format {request.format!r}: use exr, png or jpeg")
    pattern = request.output or f"renders/{scene.stem}_####{EXTENSIONS[fmt or 'exr']}"
    suffix = Path(pattern).suffix.lower()
    if suffix not in FORMATS:
        if suffix and "#" not in suffix:
            raise FarmError(
                f"output {pattern!r}: unknown image type {suffix!r}; use .exr, .png or .jpg"
            )
        pattern += EXTENSIONS[fmt or "exr"]
        suffix = Path(pattern).suffix.lower()
    if fmt is not None and FORMATS[suffix] != fmt:
        raise FarmError(f"output {pattern!r} does not end in {EXTENSIONS[fmt]} for --format {fmt}")
    user_path("output", pattern)
    output = OutputPattern(pattern)
    if not output.has_frame and (frames is None or len(frames) > 1):
        raise FarmError(
            f"output {pattern!r} has no # for the frame number; several frames would overwrite it"
        )
    output.check_writable()

    overrides: dict[str, Any] = {"device": request.device.upper()}
    if overrides["device"] not in DEVICES:
        raise FarmError(f"--device {request.device!r}: use one of {', '.join(DEVICES)}")
    if request.engine:
        overrides["engine"] = request.engine.upper()
        if overrides["engine"] not in ENGINES:
            raise FarmError(f"--engine {request.engine!r}: use one of {', '.join(ENGINES)}")
    if request.samples is not None:
        overrides["samples"] = request.samples
    if request.seed is not None:
        overrides["seed"] = request.seed
    resolution = _resolution(request.resolution) if request.resolution else None
    if resolution:
        overrides["resolution"] = list(resolution)
    compression = request.compression.upper() if request.compression else None
    if compression is not None and compression not in EXR_CODECS:
        raise FarmError(
            f"--compression {request.compression!r}: use one of {', '.join(EXR_CODECS)}"
        )
    return RenderSpec(
        scene=scene,
        frames=frames,
        chunk=request.chunk,
        tiles=tiles,
        overscan=request.overscan,
        output=output,
        format=FORMATS[suffix],
        resolution=resolution,
        overrides=overrides,
        compression=compression,
        allow_scripts=request.allow_scripts,
        retries=request.retries,
    )


@dataclass(frozen=True)
class ImageFormat:
    """Blender image settings for whole frames and for tiles, and how the farm writes assemblies."""

    frame: dict[str, Any]  # what Blender writes for a whole frame: the job's final format
    tile: dict[str, Any]  # lossless and cheap to decode: what Blender writes for a tile
    compression: str | None  # OIIO compression for assembled EXR frames
    quality: int | None  # JPEG quality for assembled frames
    eight_bit: bool


def image_format(spec: RenderSpec, info: dict[str, Any]) -> ImageFormat:
    """The output format: the job's file type with the .blend's depth, channels and codec kept.

    Tiles travel as uncompressed EXR (float outputs) or PNG (8/16-bit outputs) so a tile decodes to
    exactly the pixels Blender would have put in the frame.
    """
    blend_format, depth, mode = info["file_format"], info["color_depth"], info["color_mode"]
    if spec.format == "exr":
        keep = blend_format in ("OPEN_EXR", "OPEN_EXR_MULTILAYER")
        codec = spec.compression or (info.get("exr_codec") or "ZIP")
        frame = {
            "file_format": blend_format if keep else "OPEN_EXR",
            "color_depth": depth if depth in ("16", "32") else "32",
            "color_mode": mode if keep else "RGBA",
            "exr_codec": codec,
        }
        tile = {**frame, "exr_codec": "NONE"}
        return ImageFormat(frame, tile, codec.lower(), None, eight_bit=False)
    keep_mode = mode if mode in ("BW", "RGB", "RGBA") else "RGBA"
    if spec.format == "png":
        bits = depth if blend_format == "PNG" and depth in ("8", "16") else "8"
        frame = {"file_format": "PNG", "color_depth": bits, "color_mode": keep_mode}
        tile = {**frame, "compression": 0}
        return ImageFormat(frame, tile, None, None, eight_bit=bits == "8")
    quality = int(info.get("quality") or 90)
    jpeg_mode = "RGB" if keep_mode == "RGBA" else keep_mode
    frame = {"file_format": "JPEG", "color_mode": jpeg_mode, "quality": quality}
    tile = {"file_format": "PNG", "color_depth": "8", "color_mode": jpeg_mode, "compression": 0}
    return ImageFormat(frame, tile, None, quality, eight_bit=True)


@dataclass(frozen=True)
class RenderTask:
    """One unit of work for a render slot: a chunk of whole frames, or one tile of one frame."""

    key: str
    frames: tuple[int, ...]
    image: dict[str, Any]  # Blender image settings for what this task writes
    tile: int | None = None
    border: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class JobPlan:
    """A validated job against its scene: frames in render order, formats, and how to tile."""

    spec: RenderSpec
    frames: tuple[int, ...]
    width: int
    height: int
    image: ImageFormat
    settings: dict[str, Any]  # job overrides sent to every Blender session

    def output(self, frame: int) -> Path:
        return self.spec.output.path(frame)

    def chunks(self) -> list[RenderTask]:
        """Whole-frame tasks, ``chunk`` consecutive frames each, first/last/middle chunk first."""
        size = self.spec.chunk
        ordered = sorted(self.frames)
        groups = [tuple(ordered[i : i + size]) for i in range(0, len(ordered), size)]
        return [self.frame_task(groups[i]) for i in first_last_middle(groups)]

    def frame_task(self, frames: tuple[int, ...]) -> RenderTask:
        key = f"f{frames[0]}" if len(frames) == 1 else f"f{frames[0]}-{frames[-1]}"
        return RenderTask(key, frames, self.image.frame)

    def tile_plan(self, count: int | None = None) -> TilePlan:
        """The job's tile plan, or about ``count`` near-square tiles for ``--tiles auto``."""
        if count is not None:
            return TilePlan.split(self.width, self.height, count, self.spec.overscan)
        return self.spec.tiles.plan(self.width, self.height, self.spec.overscan)

    def tile_tasks(self, frame: int, plan: TilePlan) -> list[RenderTask]:
        return [
            RenderTask(
                f"f{frame}.t{tile.index}",
                (frame,),
                self.image.tile,
                tile.index,
                blender_border(tile.region, self.width, self.height),
            )
            for tile in plan.tiles
        ]


def auto_tile_count(frames_left: int, free_slots: int) -> int:
    """``--tiles auto``: tiles for the next frame so the last few frames still fill every free slot.

    While at least as many frames wait as slots are free, frames render whole (1); once fewer
    remain, each is split so that together they occupy the free slots.
    """
    if frames_left <= 0 or frames_left >= free_slots:
        return 1
    return math.ceil(free_slots / frames_left)


def plan(spec: RenderSpec, info: dict[str, Any], slots: int) -> JobPlan:
    """Check the job against the scene Blender opened, and fix its formats and frames."""
    if not info.get("has_camera"):
        raise FarmError(f"scene {spec.scene} has no active camera")
    width, height = spec.resolution or (info["width"], info["height"])
    if spec.frames is not None:
        frames = spec.frames
    else:
        frames = tuple(range(info["frame_start"], info["frame_end"] + 1, info["frame_step"] or 1))
        if not frames:
            raise FarmError(f"scene {spec.scene} has an empty frame range")
        if not spec.output.has_frame and len(frames) > 1:
            raise FarmError(
                f"output {spec.output.pattern!r} has no # for the frame number, and the scene has "
                f"{len(frames)} frames"
            )
    spec.tiles.plan(width, height, spec.overscan)  # refuses grids larger than the frame
    image = image_format(spec, info)
    return JobPlan(
        spec, frames, width, height, image, blender_settings(spec, image.eight_bit, slots)
    )


def blender_settings(spec: RenderSpec, eight_bit: bool, slots: int) -> dict[str, Any]:
    """The overrides every Blender of the job gets.

    Blender's dither noise follows each buffer's own pixel coordinates, so a dithered tile differs
    from the same pixels of a dithered frame; 8-bit outputs that may be tiled (a grid, or ``auto``
    with more than one slot) render without dither so every frame of the job is the frame Blender
    would write.
    """
    settings = dict(spec.overrides)
    may_tile = spec.tiles.kind in ("grid", "size") or (spec.tiles.kind == "auto" and slots > 1)
    if eight_bit and may_tile:
        settings["dither"] = 0.0
    return settings
