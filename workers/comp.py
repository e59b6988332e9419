"""Comp tasks on lab nodes: make one frame of a comp, or its review.

A frame task reads every input's frame (the layer's channels of a multilayer EXR, a plate), brings
each into the working colour space, runs the spec's ops in order, writes the linear EXR in the
output space and the 8-bit preview through the job's baked display/view transform. Files are read
and written where the job's paths point: on several nodes they are on storage every node mounts.
"""

from __future__ import annotations

import functools
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


def read_source(source: Source, frame: int, config: Any, working: str) -> np.ndarray:
    """The input's pixels for ``frame`` as premultiplied float32 in the working space."""
    path = OutputPattern(source.pattern).path(frame)
    image = read_pixels(path, as_float=True)
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


def make_frame(plan: CompPlan, frame: int, preview: color.Preview | None) -> list[str]:
    """Make and write one frame (EXR, and the preview if asked); returns the paths written."""
    spec = plan.spec
    config = color.load_config(spec.config)
    images = {s.name: read_source(s, frame, config, spec.working) for s in plan.sources}
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
    out.parent.mkdir(parents=True, exist_ok=True)
    write_frame(out, Pixels(linear.astype(depth), channels), spec.compression)
    written = [str(out)]
    shown = plan.preview(frame)
    if shown is not None:
        shown.parent.mkdir(parents=True, exist_ok=True)
        if preview is None:  # a job too small to repay a bake: OCIO's own processor
            assert spec.display is not None and spec.view is not None
            rgb = color.display_exact(result[:, :, :3], config, space, spec.display, spec.view)
        else:
            rgb = preview.apply(result)[:, :, :3]  # premultiplied: the comp as if over black
        write_frame(shown, Pixels(np.ascontiguousarray(rgb), ("R", "G", "B")), quality=92)
        written.append(str(shown))
    return written


def bake_preview(config: str, src: str, display: str, view: str) -> color.Preview:
    """The Ray task that bakes a job's preview transform, once, for all its frames."""
    return color.Preview.bake(color.load_config(config), src, display, view)


def make_review(plan: CompPlan) -> list[str]:
    """Write the contact sheet and the movie of the job's previews; returns the paths written."""
    spec = plan.spec
    frames = [(f, p) for f in plan.frames if (p := plan.preview(f)) is not None]
    written = []
    if spec.contact_sheet:
        sheet = Path(spec.contact_sheet)
        sheet.parent.mkdir(parents=True, exist_ok=True)
        written.append(str(review.contact_sheet(frames, sheet)))
    if spec.movie:
        movie = Path(spec.movie)
        movie.parent.mkdir(parents=True, exist_ok=True)
        written.append(str(review.movie(frames, movie, spec.fps)))
    return written


def _attempt(what: str, frame: int | None, work: Callable[[], list[str]]) -> dict[str, Any]:
    """Run one comp task's work: what it wrote, the node and when it began (for the ledger); a
    failure names both."""
    import ray

    began = time.time()
    node = ray.get_runtime_context().get_node_id()
    try:
        written = work()
    except (OSError, FarmError, ValueError) as error:
        raise CompFailure(f"{what}: {error}", node, began) from None
    return {"node": node, "began": began, "frame": frame, "paths": written}


def frame_task(
    spec_json: dict[str, Any], plan_json: dict[str, Any], frame: int, preview: Any
) -> dict[str, Any]:
    """The Ray task of one frame."""
    plan = CompPlan.from_json(CompSpec.from_json(spec_json), plan_json)
    return _attempt(f"frame {frame}", frame, lambda: make_frame(plan, frame, preview))


def review_task(spec_json: dict[str, Any], plan_json: dict[str, Any]) -> dict[str, Any]:
    """The Ray task of the review: the contact sheet and the movie of the previews."""
    plan = CompPlan.from_json(CompSpec.from_json(spec_json), plan_json)
    return _attempt("review", None, lambda: make_review(plan))
