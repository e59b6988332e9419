"""Comp tasks on lab nodes: make one frame of a comp, or its review.

A frame task reads every input's frame (the layer's channels of a multilayer EXR, a plate), brings
each into the working colour space, runs the spec's ops in order, writes the linear EXR in the
output space and the 8-bit preview through the job's baked display/view transform.

No shared drive is needed: the scheduler (beside the server's folders) reads every file a task
needs and ships its bytes through Ray's object store; the task lays them out in a private folder
of its node (a :class:`Scratch`, each file keeping its extension: OIIO picks its reader by it),
makes its outputs there and returns their bytes with the path each belongs at on the server, where
the scheduler writes them. The folder is removed when the task ends, failed or not, and a failure
names files as the server sees them. :class:`InPlace` reads and writes where the job's paths point
(one machine's own files, for code and tests that call :func:`make_frame` directly).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import OpenImageIO as oiio

from farm import color
from farm.errors import FarmError
from farm.frames import OutputPattern
from farm.tiling.imagefile import Pixels, read_pixels, write_frame
from pipelines.comp import CompPlan, CompSpec, Op, Source
from workers import comp_ops, review


class CompFailure(RuntimeError):
    """A frame or review that could not be made, naming the node and when the attempt began."""

    def __init__(self, message: str, node: str, began: float) -> None:
        super().__init__(message)
        self.node = node
        self.began = began

    def __reduce__(self):  # Ray pickles the cause: keep the node and start through it
        return (CompFailure, (str(self), self.node, self.began))


def header(path: Path) -> tuple[int, int, tuple[str, ...], bool]:
    """An image's size, channel names and whether it stores floats, from its header alone."""
    image = oiio.ImageInput.open(str(path))
    if image is None:
        raise OSError(oiio.geterror().strip() or "not an image OpenImageIO can read")
    try:
        spec = image.spec()
        is_float = spec.format.basetype in (oiio.FLOAT, oiio.HALF, oiio.DOUBLE)
        return spec.width, spec.height, tuple(spec.channelnames), is_float
    finally:
        image.close()


class InPlace:
    """Files where the job's paths point: read there, written there."""

    def source(self, path: Path) -> Path:
        """Where to read the input the job names ``path``."""
        return path

    def target(self, path: Path) -> Path:
        """Where to write the output the job names ``path`` (its folder made)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def named(self, message: str) -> str:
        """``message`` with the files named as the job names them."""
        return message


class Scratch(InPlace):
    """A task's private folder on its node: the inputs shipped to it, keyed by their paths on the
    server, and the outputs it makes, to be returned by the same keys. A key shipped as a string
    instead of bytes is an input the server could not read: the string says why."""

    def __init__(self, inputs: dict[str, bytes | str]) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="farm-comp-"))
        self.unreadable: dict[str, str] = {}
        self.local: dict[str, Path] = {}  # the job's path → its file here
        self.outputs: dict[str, Path] = {}
        try:
            (self.root / "in").mkdir()
            (self.root / "out").mkdir()
            for index, (path, data) in enumerate(inputs.items()):
                if isinstance(data, str):
                    self.unreadable[path] = data
                    continue
                local = self.root / "in" / f"{index}{Path(path).suffix}"
                local.write_bytes(data)
                self.local[path] = local
        except BaseException:
            self.close()
            raise

    def source(self, path: Path) -> Path:
        if str(path) in self.unreadable:
            raise OSError(self.unreadable[str(path)])
        if str(path) not in self.local:
            raise OSError(f"cannot read {path}: the farm did not send it to this node")
        return self.local[str(path)]

    def target(self, path: Path) -> Path:
        local = self.root / "out" / f"{len(self.outputs)}{path.suffix}"
        self.local[str(path)] = self.outputs[str(path)] = local
        return local

    def named(self, message: str) -> str:
        for path, local in sorted(self.local.items(), key=lambda p: -len(str(p[1]))):
            message = message.replace(str(local), path)
        return message

    def results(self) -> list[tuple[str, bytes]]:
        """Each output's path on the server and its bytes."""
        return [(path, local.read_bytes()) for path, local in self.outputs.items()]

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def read_source(
    source: Source, frame: int, config: Any, working: str, files: InPlace | None = None
) -> np.ndarray:
    """The input's pixels for ``frame`` as premultiplied float32 in the working space."""
    path = OutputPattern(source.pattern).path(frame)
    image = read_pixels((files or InPlace()).source(path), as_float=True)
    height, width, _ = image.data.shape
    if (width, height) != (source.width, source.height):
        raise OSError(
            f"{path} is {width}×{height}, not {source.width}×{source.height} "
            "like the frame the job was planned on"
        )
    try:
        index = [image.channels.index(c) for c in source.channels]
    except ValueError:
        raise OSError(f"{path} lacks the channels {', '.join(source.channels)}") from None
    pixels = np.ascontiguousarray(image.data[:, :, index], dtype=np.float32)
    if source.colorspace != working:
        pixels = color.convert(pixels, config, source.colorspace, working)
    if source.straight_alpha:  # 8/16-bit files keep straight alpha: ops need it premultiplied
        pixels[:, :, :3] *= pixels[:, :, 3:4]
    return pixels


def apply(op: Op, images: dict[str, np.ndarray], spec: CompSpec, config: Any) -> np.ndarray:
    """One op of the spec on the images made so far."""
    first = images[op.inputs[0]]
    p = op.params
    if op.op == "over":
        return comp_ops.over(first, images[op.inputs[1]])
    if op.op == "add":
        return functools.reduce(comp_ops.add, (images[n] for n in op.inputs))
    if op.op == "grade":
        luma = color.luma(spec.config, spec.space_of(op.inputs[0]))
        return comp_ops.grade(first, p.get("exposure", 0.0), p.get("saturation", 1.0), luma=luma)
    if op.op == "crop":
        return comp_ops.crop(first, p.get("x", 0), p.get("y", 0), p["width"], p["height"])
    if op.op == "resize":
        return comp_ops.resize(first, p["width"], p["height"])
    if op.op == "convert":
        return color.convert(first, config, spec.space_of(op.inputs[0]), p["to"])
    raise FarmError(f"unknown op {op.op!r}")


def make_frame(
    plan: CompPlan, frame: int, preview: color.Preview | None, files: InPlace | None = None
) -> list[str]:
    """Make and write one frame (EXR, and the preview if asked) through ``files`` (default: where
    the job's paths point); returns the job's paths of what it wrote."""
    files = files or InPlace()
    spec = plan.spec
    config = color.load_config(spec.config)
    images = {s.name: read_source(s, frame, config, spec.working, files) for s in plan.sources}
    for op in spec.ops:
        images[op.name] = apply(op, images, spec, config)
    result = images[spec.result]
    space = spec.space_of(spec.result)
    linear = result
    if spec.output_colorspace != space:
        linear = color.convert(result, config, space, spec.output_colorspace)
    channels = ("R", "G", "B", "A")[: result.shape[2]]
    depth = np.float16 if spec.depth == "half" else np.float32
    out = plan.output(frame)
    write_frame(files.target(out), Pixels(linear.astype(depth), channels), spec.compression)
    written = [str(out)]
    shown = plan.preview(frame)
    if shown is not None:
        if preview is None:  # a job too small to repay a bake: OCIO's own processor
            assert spec.display is not None and spec.view is not None
            rgb = color.display_exact(result[:, :, :3], config, space, spec.display, spec.view)
        else:
            rgb = preview.apply(result)[:, :, :3]  # premultiplied: the comp as if over black
        rgb = np.ascontiguousarray(rgb)
        write_frame(files.target(shown), Pixels(rgb, ("R", "G", "B")), quality=92)
        written.append(str(shown))
    return written


def bake_preview(config: str, src: str, display: str, view: str) -> color.Preview:
    """The Ray task that bakes a job's preview transform, once, for all its frames."""
    return color.Preview.bake(color.load_config(config), src, display, view)


def frame_inputs(plan: CompPlan, frame: int) -> list[Path]:
    """The files (the job's paths) a frame reads: each input's file for ``frame``, once each."""
    paths = (OutputPattern(s.pattern).path(frame) for s in plan.sources)
    return list(dict.fromkeys(paths))


def review_inputs(plan: CompPlan) -> list[Path]:
    """The files (the job's paths) the review reads: every frame's preview."""
    return [p for f in plan.frames if (p := plan.preview(f)) is not None]


def make_review(plan: CompPlan, files: InPlace | None = None) -> list[str]:
    """Write the contact sheet and the movie of the job's previews through ``files`` (default:
    where the job's paths point); returns the job's paths of what it wrote."""
    files = files or InPlace()
    spec = plan.spec
    frames = [(f, files.source(p)) for f in plan.frames if (p := plan.preview(f)) is not None]
    written = []
    if spec.contact_sheet:
        review.contact_sheet(frames, files.target(Path(spec.contact_sheet)))
        written.append(spec.contact_sheet)
    if spec.movie:
        review.movie(frames, files.target(Path(spec.movie)), spec.fps)
        written.append(spec.movie)
    return written


def _attempt(
    what: str,
    frame: int | None,
    shipped: dict[str, Any],
    work: Callable[[InPlace], list[str]],
) -> dict[str, Any]:
    """Run one comp task's work in a :class:`Scratch` of the ``shipped`` inputs (the job's path →
    an ObjectRef of the file's bytes, or why the server could not read it): the node, when it
    began (for the ledger), and each output's path and bytes (``files``). A failure names the node
    and the start, and the files as the server sees them; nothing is left on the node."""
    import ray

    began = time.time()
    node = ray.get_runtime_context().get_node_id()
    refs = {path: ref for path, ref in shipped.items() if not isinstance(ref, str)}
    fetched = dict(zip(refs, ray.get(list(refs.values())), strict=True))
    files: Scratch | None = None
    try:
        files = Scratch({path: fetched.get(path, ref) for path, ref in shipped.items()})
        written = work(files)
        results = files.results()
    except (OSError, FarmError, ValueError) as error:
        message = files.named(str(error)) if files is not None else str(error)
        raise CompFailure(f"{what}: {message}", node, began) from None
    finally:
        if files is not None:
            files.close()
    return {"node": node, "began": began, "frame": frame, "paths": written, "files": results}


def frame_task(
    spec_json: dict[str, Any],
    plan_json: dict[str, Any],
    frame: int,
    preview: Any,
    shipped: dict[str, Any],
) -> dict[str, Any]:
    """The Ray task of one frame; ``shipped``: the files of :func:`frame_inputs`."""
    plan = CompPlan.from_json(CompSpec.from_json(spec_json), plan_json)
    return _attempt(
        f"frame {frame}", frame, shipped, lambda files: make_frame(plan, frame, preview, files)
    )


def review_task(
    spec_json: dict[str, Any], plan_json: dict[str, Any], shipped: dict[str, Any]
) -> dict[str, Any]:
    """The Ray task of the review (the contact sheet and the movie of the previews);
    ``shipped``: the files of :func:`review_inputs`."""
    plan = CompPlan.from_json(CompSpec.from_json(spec_json), plan_json)
    return _attempt("review", None, shipped, lambda files: make_review(plan, files))
