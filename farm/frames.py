"""Frame lists and ``#``-padded output patterns, shared by every job type that writes sequences."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.errors import FarmError

_PART = re.compile(r"^(\d+)(?:-(\d+)(?:x(\d+))?)?$")
MAX_FRAMES = 1_000_000


def parse_frames(text: str) -> list[int]:
    """Parse ``1-24``, ``1-100x5`` (every 5th) or ``1,5,10-12`` into ascending unique frames."""
    if not text or not text.strip():
        raise FarmError("--frames is empty: give frames like 1-24, 1-100x5 or 1,5,10-12")
    frames: list[int] = []
    for raw in text.split(","):
        part = raw.strip().replace(" ", "")
        match = _PART.match(part)
        if not match:
            raise FarmError(
                f"--frames {text!r}: cannot read {raw.strip()!r}; use 1-24, 1-100x5 or 1,5,10-12"
            )
        start = int(match[1])
        end = int(match[2]) if match[2] is not None else start
        step = int(match[3]) if match[3] is not None else 1
        if end < start:
            raise FarmError(f"--frames {text!r}: range {part!r} runs backwards")
        if step < 1:
            raise FarmError(f"--frames {text!r}: step in {part!r} must be at least 1")
        if (end - start) // step + 1 + len(frames) > MAX_FRAMES:
            raise FarmError(f"--frames {text!r}: more than {MAX_FRAMES:,} frames")
        frames.extend(range(start, end + 1, step))
    if len(set(frames)) != len(frames):
        twice = sorted({f for f in frames if frames.count(f) > 1})[:5]
        raise FarmError(f"--frames {text!r}: frame {twice[0]} is listed more than once")
    return sorted(frames)


def first_last_middle(items: list[int]) -> list[int]:
    """Indices in the order first, last, middle, then the rest: errors and look show early."""
    if len(items) <= 1:
        return list(range(len(items)))
    head = list(dict.fromkeys([0, len(items) - 1, (len(items) - 1) // 2]))
    return head + [i for i in range(len(items)) if i not in head]


@dataclass(frozen=True)
class OutputPattern:
    """An output path whose last run of ``#`` becomes the zero-padded frame number."""

    pattern: str

    @property
    def has_frame(self) -> bool:
        return "#" in self.pattern

    def path(self, frame: int) -> Path:
        if not self.has_frame:
            return Path(self.pattern)
        match = list(re.finditer(r"#+", self.pattern))[-1]
        number = f"{frame:0{len(match[0])}d}"
        return Path(self.pattern[: match.start()] + number + self.pattern[match.end() :])

    def check_writable(self) -> None:
        """Refuse a folder that cannot be created or written, before anything renders.

        The nearest existing folder is probed with a real file (created and removed at once):
        permission bits say nothing about root, read-only mounts or full quotas.
        """
        folder = Path(self.pattern).expanduser().absolute().parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise FarmError(f"output folder {folder} cannot be created: {probe} is not a folder")
        try:
            tempfile.TemporaryFile(dir=probe).close()
        except OSError as error:
            raise FarmError(f"output folder {probe} is not writable: {error.strerror}") from None
