"""Usage: ``farm admin usage`` (charged hours by user, programme or cohort, with a plot) and
``farm usage`` (your own enrolment and quota)."""

from __future__ import annotations

import csv
import datetime as dt
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from farm.cli.curves import save_plot
from farm.cli.options import day, echo_json, json_option, print_table
from farm.cli.views import remote


@click.command("usage")
@click.option(
    "--by", type=click.Choice(["user", "programme", "cohort"]), default="user", show_default=True
)
@click.option("--since", callback=day, help="From this day (default: ever).")
@click.option("--until", callback=day, help="Before this day.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw GPU- and CPU-hours per day and cohort into this PNG.",
)
@json_option
def admin_usage(
    by: str,
    since: str | None,
    until: str | None,
    as_csv: bool,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Charged GPU- and CPU-hours by user, programme or cohort (failed attempts included)."""
    client = remote("farm admin").client
    rows = client.get("/admin/usage", by=by, since=since, until=until)
    if plot is not None:
        start = since or (dt.date.today() - dt.timedelta(days=30)).isoformat()
        draw_usage(client.get("/admin/usage/daily", since=start), plot)
    if as_json:
        echo_json(rows)
    elif as_csv:
        columns = [by, "gpu_hours", "cpu_hours", "attempts", "jobs"]
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        span = f" since {since}" if since else ""
        print_table(
            f"usage by {by}{span}", rows, [by, "gpu_hours", "cpu_hours", "attempts", "jobs"]
        )
    if plot is not None and not as_json:
        click.echo(f"plot: {plot}", err=as_csv)


def draw_usage(days: list[dict[str, Any]], path: Path) -> None:
    """Cumulative GPU- and CPU-hours per cohort over time, one line per cohort."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[dt.date, float, float]]] = defaultdict(list)
    for row in days:
        series[row["cohort"]].append(
            (dt.date.fromisoformat(row["day"]), row["gpu_hours"], row["cpu_hours"])
        )
    figure, (gpu_axis, cpu_axis) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for cohort, points in sorted(series.items()):
        points.sort()
        days_, gpu, cpu = zip(*points, strict=True)
        gpu_axis.step(days_, _cumulative(gpu), where="post", label=cohort)
        cpu_axis.step(days_, _cumulative(cpu), where="post", label=cohort)
    gpu_axis.set_ylabel("GPU-hours (cumulative)")
    cpu_axis.set_ylabel("CPU-hours (cumulative)")
    gpu_axis.set_title("Farm usage per cohort")
    if series:
        gpu_axis.legend(loc="upper left", fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    save_plot(figure, path)


def _cumulative(values: tuple[float, ...]) -> list[float]:
    total, out = 0.0, []
    for value in values:
        total += value
        out.append(total)
    return out


@click.command()
@json_option
def usage(as_json: bool) -> None:
    """Your enrolment and quota: used, remaining, and when the period ends."""
    me = remote("farm usage").client.get("/me")
    if as_json:
        echo_json(me)
        return
    limits = me["limits"]
    enrolment = me["enrolment"]
    lines = [f"{me['user']} ({me['role']})"]
    if enrolment:
        lines.append(
            f"enrolment: {enrolment['programme']}/{enrolment['cohort']}, {enrolment['from']} to "
            f"{enrolment['until']} ({enrolment['status']})"
        )
    for what in ("gpu", "cpu"):
        quota_ = limits[f"{what}_hours"]
        used = me[f"{what}_hours_used"]
        if quota_ is None:
            lines.append(f"{what.upper()}-hours: {used:.3f} used (no quota)")
        else:
            left = me[f"{what}_hours_left"]
            lines.append(
                f"{what.upper()}-hours: {used:.3f} used of {quota_:g}, {left:.3f} left "
                f"(period: {limits['period']}, ends {me['period_end'] or 'never'})"
            )
    if limits["max_gpus"] is not None:
        lines.append(f"GPUs at once: {limits['max_gpus']:g}")
    if limits["max_priority"] is not None:
        lines.append(f"highest priority: {limits['max_priority']}")
    if limits["labs"] is not None:
        lines.append(f"labs: {', '.join(limits['labs'])}")
    lines.append(f"may run work: {me['may_run']}")
    click.echo("\n".join(lines))
