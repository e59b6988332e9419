"""Warm render slots shared by every job of the same scene and settings.

A slot is a :class:`~workers.render_slot.RenderSlot` actor with one Blender open on one scene. The
pool keeps slots across jobs: a trainee who renders the same shot again, or a second job on the same
scene, finds Blender already open and pays no start-up. Slots are keyed by a :class:`SlotProfile`;
Blender's settings accumulate inside a session, so only jobs with the very same settings share one.
A slot is *opening* until Ray has placed it and Blender has opened the scene, *ready* after; it gets
work only when ready, so a slot Ray cannot place (its node gone, no room elsewhere) strands nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from farm.labs import LAB_SHARE, avoiding, lab_resource
from workers.blender_session import SessionOptions
from workers.render_slot import RenderSlot
from workers.scene_cache import Bundle


@dataclass(frozen=True)
class SlotProfile:
    """What makes two jobs' slots interchangeable."""

    scene: str
    stamp: str  # the scene file's size and mtime: an edited scene needs fresh slots
    threads: int
    gpu: bool
    allow_scripts: bool
    stall_timeout: float
    settings: str  # the job's Blender overrides, as canonical JSON
    lab: str | None = None
    bundle: Bundle | None = None  # an uploaded scene and its files: each node lays them out
    memory: int = 0  # bytes the slot reserves (0: none asked)

    @classmethod
    def of(
        cls,
        scene: Path,
        threads: int,
        settings: dict[str, Any],
        allow_scripts: bool,
        stall_timeout: float,
        lab: str | None,
        bundle: Bundle | None = None,
        memory: int = 0,
    ) -> SlotProfile:
        stat = scene.stat()
        return cls(
            scene=str(scene),
            stamp=f"{stat.st_size}:{stat.st_mtime_ns}",
            threads=threads,
            gpu=settings.get("device", "CPU") != "CPU",
            allow_scripts=allow_scripts,
            stall_timeout=stall_timeout,
            settings=json.dumps(settings, sort_keys=True),
            lab=lab,
            bundle=bundle,
            memory=memory,
        )

    @property
    def resources(self) -> dict[str, float]:
        """What one slot holds while it lives."""
        held = {"CPU": float(self.threads)}
        if self.gpu:
            held["GPU"] = 1.0
        if self.lab:
            held[lab_resource(self.lab)] = LAB_SHARE
        if self.memory:
            held["memory"] = float(self.memory)
        return held


@dataclass(eq=False)
class Slot:
    """One warm Blender on one node."""

    actor: Any
    profile: SlotProfile
    opening: Any  # the ObjectRef of its open() call while opening, else None
    node: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    load: int = 0  # tasks sent to it and not yet back
    idle_since: float = field(default_factory=time.monotonic)
    freed: float = 0.0  # when (epoch seconds) its last task ended: the next one began then

    @property
    def ready(self) -> bool:
        return self.opening is None


class SlotPool:
    """Every slot the scheduler holds, by profile."""

    def __init__(self, blender: str, progress: Any, uploads: Path | None = None) -> None:
        self.blender = blender
        self.progress = progress
        self.slots: list[Slot] = []
        self.shipments = Shipments(uploads)

    def create(self, profile: SlotProfile, avoid: set[str] | frozenset[str] = frozenset()) -> Slot:
        """Start a slot (placed by Ray, never on a node in ``avoid``); it opens in the background."""
        session = SessionOptions(
            blender=self.blender,
            scene=Path(profile.scene),
            threads=profile.threads,
            allow_scripts=profile.allow_scripts,
            stall_timeout=profile.stall_timeout,
        )
        options: dict[str, Any] = {
            "num_cpus": profile.threads,
            "num_gpus": 1 if profile.gpu else 0,
        }
        if profile.lab:
            options["resources"] = {lab_resource(profile.lab): LAB_SHARE}
        if profile.memory:
            options["memory"] = profile.memory
        if avoid:
            options["label_selector"] = avoiding(avoid)
        shipped = self.shipments.put(profile) if profile.bundle else None
        actor = (
            ray.remote(RenderSlot)
            .options(**options)
            .remote(session, json.loads(profile.settings), self.progress, profile.bundle, shipped)
        )
        slot = Slot(actor, profile, opening=actor.open.remote())
        self.slots.append(slot)
        return slot

    def opened(self, slot: Slot, info: dict[str, Any]) -> None:
        slot.opening, slot.info, slot.node = None, info, info["node"]
        slot.idle_since = time.monotonic()

    def remove(self, slot: Slot, graceful: bool = False) -> None:
        """End a slot; gracefully lets an idle Blender quit and tidy up (a busy one dies with its
        worker anyway)."""
        if slot in self.slots:
            self.slots.remove(slot)
            self.shipments.keep({s.profile.bundle for s in self.slots})
        if graceful and slot.ready:
            ray.wait([slot.actor.close.remote()], timeout=5)
        ray.kill(slot.actor)

    def usable(self, profile: SlotProfile, avoid: set[str], depth: int) -> list[Slot]:
        """Ready slots of ``profile`` off the nodes in ``avoid`` with room in their queue."""
        return [
            s
            for s in self.slots
            if s.profile == profile and s.ready and s.load < depth and s.node not in avoid
        ]

    def of(self, profile: SlotProfile) -> list[Slot]:
        return [s for s in self.slots if s.profile == profile]

    def close_all(self, graceful: bool = True) -> None:
        idle = [s for s in self.slots if s.ready and s.load == 0] if graceful else []
        if idle:
            ray.wait([s.actor.close.remote() for s in idle], num_returns=len(idle), timeout=5)
        for slot in list(self.slots):
            self.remove(slot)


class Shipments:
    """Uploaded files in Ray's object store: each put once, from the server's folder, and held
    while a slot may still fetch it (a slot on a new node, a slot restarted)."""

    def __init__(self, uploads: Path | None) -> None:
        self.uploads = uploads  # <data-dir>/files: what the scenes use
        self.refs: dict[str, Any] = {}

    def put(self, profile: SlotProfile) -> dict[str, Any]:
        """The ObjectRefs of ``profile``'s bundle by sha256 (the scene is the profile's own file)."""
        assert profile.bundle is not None
        for original, digest in profile.bundle.files:
            if digest not in self.refs:
                if original == profile.bundle.scene:
                    path = Path(profile.scene)
                elif self.uploads is None:
                    raise RuntimeError("a bundle's files need the server's uploads folder")
                else:
                    path = self.uploads / digest
                self.refs[digest] = ray.put(path.read_bytes())
        return {digest: self.refs[digest] for _, digest in profile.bundle.files}

    def keep(self, bundles: set[Bundle | None]) -> None:
        """Let Ray free what no bundle in ``bundles`` uses."""
        used = {digest for b in bundles if b is not None for _, digest in b.files}
        for digest in set(self.refs) - used:
            del self.refs[digest]
