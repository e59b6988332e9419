"""A render slot: a Ray actor that owns one warm Blender session on a lab node.

The slot renders a task (a chunk of frames or one tile), then decodes what Blender wrote on the node
that rendered it: a tile becomes a pixel array, a whole frame stays Blender's own file bytes. Either
goes back through Ray's object store, so outputs need no shared filesystem. Progress goes through
the job's one channel (:mod:`workers.progress`, drained by the driver), a few updates a second at most.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from farm.tiling.imagefile import Pixels, read_pixels
from pipelines.render import RenderTask
from workers.blender_session import BlenderSession, SessionOptions
from workers.scene_cache import Bundle, materialize, node_cache, tree_path

PROGRESS_INTERVAL = 0.5  # seconds between progress updates of one slot


@dataclass
class FrameOutput:
    """One rendered frame or tile: encoded file bytes (whole frame) or decoded pixels (tile)."""

    frame: int
    tile: int | None
    data: bytes | None = None
    pixels: Pixels | None = None
    seconds: float = 0.0


@dataclass
class TaskResult:
    key: str
    outputs: list[FrameOutput] = field(default_factory=list)
    node: str = ""


class RenderSlot:
    """Keeps Blender open on the job's scene between tasks; restarts it after a crash."""

    def __init__(
        self,
        options: SessionOptions,
        settings: dict[str, Any],
        progress: Any = None,
        bundle: Bundle | None = None,
        shipped: dict[str, Any] | None = None,
    ) -> None:
        if not options.blender:  # each lab node may have its own Blender
            from farm.config import find_blender

            options = replace(options, blender=find_blender())
        self.session = BlenderSession(options)
        self.settings = settings
        self.progress = progress
        self.bundle = bundle  # an uploaded scene and its files: laid out on this node first
        self.shipped = shipped or {}  # their ObjectRefs by sha256, fetched only where missing
        self.folder = Path(tempfile.mkdtemp(prefix="farm-slot-"))

    def open(self, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Start Blender on the scene if it is not running, and apply the job's settings."""
        changed = settings is not None and settings != self.settings
        if settings is not None:
            self.settings = settings
        if not self.session.alive:
            if self.bundle is not None:
                self._lay_out(self.bundle)
            self.session.start()
            self.session.configure(self._device_settings())
        elif changed:
            self.session.configure(self._device_settings())
        import ray

        return {**self.session.info, "node": ray.get_runtime_context().get_node_id()}

    def _lay_out(self, bundle: Bundle) -> None:
        """The uploaded scene and its files into this node's cache (each fetched once a node, by
        whichever slot comes first), and Blender pointed at them there."""
        import ray

        cache = node_cache()
        scene = materialize(bundle, lambda digest: ray.get(self.shipped[digest]), cache)
        root = tree_path(cache, bundle.id)
        self.session.options = replace(self.session.options, scene=scene, remap_root=str(root))

    def _device_settings(self) -> dict[str, Any]:
        """GPU devices render on GPUs only where Ray gave this slot some; else the CPU."""
        import ray

        settings = dict(self.settings)
        if settings.get("device", "CPU") != "CPU" and not ray.get_gpu_ids():
            settings["device"] = "CPU"
        return settings

    def render(self, task: RenderTask, channel: str = "") -> TaskResult:
        """Render the task; its progress and Blender's output go to the channel under
        ``channel + task.key``, a few times a second at most."""
        import ray

        self.open()
        result = TaskResult(task.key, node=ray.get_runtime_context().get_node_id())
        key = channel + task.key
        lines: list[str] = []
        last = 0.0

        def flush() -> None:
            if self.progress is not None and lines:
                chunk = lines[:]
                del lines[: len(chunk)]
                self.progress.log.remote(key, chunk)

        def report(fraction: float) -> None:
            nonlocal last
            now = time.monotonic()
            if self.progress is not None and (now - last >= PROGRESS_INTERVAL or fraction >= 1):
                last = now
                self.progress.report.remote(key, fraction)
                flush()

        try:
            for frame in task.frames:
                result.outputs.append(self._render_frame(task, frame, report, lines.append))
        finally:
            flush()
        return result

    def _render_frame(
        self,
        task: RenderTask,
        frame: int,
        report: Callable[[float], None],
        output: Callable[[str], None],
    ) -> FrameOutput:
        started = time.monotonic()
        path = self.session.render(frame, task.border, task.image, self.folder, report, output)
        try:
            rendered = FrameOutput(frame, task.tile)
            if task.tile is None:
                rendered.data = path.read_bytes()
            else:
                rendered.pixels = read_pixels(path)
        finally:
            path.unlink(missing_ok=True)
        rendered.seconds = time.monotonic() - started
        return rendered

    def close(self) -> None:
        self.session.close()
        shutil.rmtree(self.folder, ignore_errors=True)
