"""Every external file a .blend uses, listed by Blender itself at submission.

The farm's nodes share no drive with a trainee's laptop: every texture, image sequence, UDIM tile,
linked library (and what it uses in turn), cache, volume, font, sound and movie clip must travel
with the scene. Only Blender knows what a .blend names and how it resolves each path (a ``//``
path of a linked data-block is relative to its library, a sequence names one frame, a UDIM set a
token), so :func:`scene_files` runs ``workers/blend_files.py`` inside the submitter's Blender and
checks its answer here, before anything is sent: a missing file is refused now, in one line that
names the file and the data-block that uses it, not found on a node after the job has queued.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.config import find_blender
from farm.errors import FarmError

SCRIPT = Path(__file__).resolve().parent.parent / "workers" / "blend_files.py"
# Opening a large scene with many libraries takes a while; a hung Blender must not hang a submit.
TIMEOUT_S = 300.0
# Blender's error lines that say only that a script failed, not why.
_NOISE = re.compile(r"Python: Traceback|script failed, file:")


@dataclass(frozen=True)
class Dependency:
    """One file a scene uses: where it is, which data-block uses it (``image 'wood'``) and, for a
    data-block linked from a library, that library's absolute path."""

    path: str
    block: str
    library: str | None


def scene_files(scene: Path, blender: str | None = None) -> list[Dependency]:
    """The files ``scene`` uses, once each, sorted by path, the scene itself left out.

    Refused with :class:`FarmError` when Blender cannot open the scene or when any of them does
    not exist (a sequence none of whose frames is there counts as missing)."""
    scene = Path(os.path.abspath(scene))
    if not scene.is_file():
        raise FarmError(f"{scene}: no such file")
    entries = _ask_blender(scene, find_blender(blender))
    own = os.path.normpath(scene)
    found: dict[str, Dependency] = {}
    for entry in entries:
        dependency = _dependency(scene, entry)
        if dependency.path != own:
            found.setdefault(dependency.path, dependency)
    listed = sorted(found.values(), key=lambda d: d.path)
    missing = [d for d in listed if not os.path.exists(d.path)]
    if missing:
        first = missing[0]
        origin = f" (from library {first.library})" if first.library else ""
        more = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise FarmError(
            f"{scene.name}: {first.block}{origin} uses {first.path}, which does not exist{more}"
        )
    return listed


def _ask_blender(scene: Path, blender: str) -> list[object]:
    """Run the listing script in a Blender of its own; its failure is the scene's, in one line."""
    with tempfile.TemporaryDirectory(prefix="farm-scene-files-") as folder:
        out = Path(folder) / "files.json"
        command = [blender, "-b", "--factory-startup", "--disable-autoexec", str(scene)]
        command += ["--python-exit-code", "1", "--python", str(SCRIPT), "--", str(out)]
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, errors="replace", timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise FarmError(
                f"{scene.name}: Blender did not list its files within {TIMEOUT_S:.0f} s"
            ) from None
        if done.returncode != 0 or not out.is_file():
            reason = _reason(done.stdout + "\n" + done.stderr) or f"exit status {done.returncode}"
            raise FarmError(f"{scene.name}: Blender could not list its files: {reason}")
        try:
            entries = json.loads(out.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            message = f"{scene.name}: Blender's list of its files is unreadable: {error}"
            raise FarmError(message) from None
    if not isinstance(entries, list):
        raise FarmError(f"{scene.name}: Blender's list of its files is not a list")
    return entries


def _reason(output: str) -> str:
    """Blender's own error line (``Error: File format is not supported``), else its last line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lines = [line for line in lines if line != "Blender quit" and not line.startswith("Blender ")]
    errors = [line for line in lines if line.startswith("Error:") and not _NOISE.search(line)]
    chosen = errors[-1].removeprefix("Error:").strip() if errors else (lines[-1] if lines else "")
    return chosen[:300]


def _dependency(scene: Path, entry: object) -> Dependency:
    """One JSON entry as a :class:`Dependency`; anything else is a broken script, named."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        raise FarmError(f"{scene.name}: Blender's list of its files has a bad entry: {entry!r}")
    library = entry.get("library")
    return Dependency(
        path=os.path.normpath(entry["path"]),
        block=str(entry.get("block") or "unknown data-block"),
        library=os.path.normpath(library) if isinstance(library, str) else None,
    )
