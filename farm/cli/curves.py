"""How a training run's reported metrics are shown: one line a report, and curves in a PNG."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from farm.errors import FarmError

NOT_PLOTTED = ("step", "epoch", "time", "checkpoint")


def describe(row: dict[str, Any]) -> str:
    """A reported row in one line: step and epoch first, then the other values."""
    first = [k for k in ("step", "epoch") if k in row]
    rest = sorted(k for k in row if k not in (*first, "time", "checkpoint"))
    parts = []
    for key in [*first, *rest]:
        value = row[key]
        if isinstance(value, float) and math.isfinite(value):
            value = f"{value:.4g}"
        parts.append(f"{key} {value}")
    if row.get("checkpoint"):
        parts.append("(checkpoint)")
    return "  ".join(parts)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> list[str]:
    """Each numeric metric against the step (or the report's index), one panel each; returns the
    metrics drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(
        {
            k
            for row in rows
            for k, v in row.items()
            if k not in NOT_PLOTTED and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    if not names:
        raise FarmError("the run reported no numbers to plot yet")
    figure, axes = plt.subplots(len(names), 1, figsize=(8, 2.6 * len(names)), sharex=True)
    axes = [axes] if len(names) == 1 else list(axes)
    for axis, name in zip(axes, names, strict=True):
        points = [
            (row.get("step", i), row[name])
            for i, row in enumerate(rows)
            if isinstance(row.get(name), (int, float))
        ]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker=".")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[0].set_title(title)
    axes[-1].set_xlabel("step")
    figure.tight_layout()
    save_plot(figure, path)
    return names


def save_plot(figure: Any, path: Path) -> None:
    """Write a matplotlib figure as a PNG and close it; a path that cannot be written is a
    one-line refusal."""
    import matplotlib.pyplot as plt

    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise FarmError(f"cannot write the plot {path}: {error}") from None
    finally:
        plt.close(figure)
