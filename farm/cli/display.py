"""The live view of a running job: frames done of total, tiles in flight, ETA; retries as they happen."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from farm.embedded.render import RunSummary
from farm.scheduler.kinds.base import Event


def _count(number: int, one: str, many: str = "") -> str:
    return f"{number} {one if number == 1 else many or one + 's'}"


class JobDisplay:
    """A rich progress bar on stderr, fed by the scheduler's events."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("frames  {task.fields[tiles]} tiles in flight  {task.fields[sample]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=4,
            transient=False,
        )
        self._task: TaskID | None = None
        self._running: dict[str, float] = {}

    def __enter__(self) -> JobDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if event.kind == "planned" and event.plan is not None:
            plan = event.plan
            self._task = self.progress.add_task(
                f"{plan.spec.scene.name} {plan.width}x{plan.height}",
                total=len(plan.frames),
                tiles=0,
                sample="",
            )
            return
        if self._task is None:
            return
        if event.kind == "started":
            self._running[event.key] = 0.0
        elif event.kind == "progress":
            if event.key in self._running:
                self._running[event.key] = event.value
        elif event.kind == "done":
            self._running.pop(event.key, None)
        elif event.kind == "written":
            self.progress.advance(self._task)
            if not self.console.is_terminal:
                self.console.print(f"wrote {event.message}")
        elif event.kind == "retry":
            self._running.pop(event.key, None)
            reason = event.message.splitlines()[0]
            self.console.print(f"[yellow]retrying {event.key}[/]: {reason}")
        elif event.kind == "failed":
            self._running.pop(event.key, None)
            self.console.print(f"[red]failed {event.key or event.frame}[/]: {event.message}")
        tiles = sum(1 for key in self._running if ".t" in key)
        mean = sum(self._running.values()) / len(self._running) if self._running else 0.0
        sample = f"{mean:4.0%} rendered" if self._running else ""
        self.progress.update(self._task, tiles=tiles, sample=sample)

    def summary(self, summary: RunSummary) -> None:
        """The closing line: what was written, how fast, and what failed."""
        count = len(summary.written)
        rate = summary.seconds / max(1, count)
        folders = sorted(
            {str(p.rsplit("/", 1)[0]) if "/" in p else "." for p in summary.written.values()}
        )
        where = folders[0] if len(folders) == 1 else f"{len(folders)} folders"
        self.console.print(
            f"job {summary.job}: [green]{count} of {len(summary.frames)} frames written[/] to {where} in "
            f"{summary.seconds:.1f} s ({rate:.2f} s/frame; {_count(summary.slots, 'slot')} × "
            f"{_count(summary.threads, 'thread')}; {_count(summary.retries, 'retry', 'retries')})"
        )
        for frame, reason in sorted(summary.failed.items()):
            self.console.print(f"[red]frame {frame} failed[/]: {reason}")
