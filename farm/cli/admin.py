"""``farm admin …`` (users, tokens, enrolment, quotas, usage) and ``farm usage``.

Everything but ``farm admin init`` goes through the farm server's admin API with an admin's
token. ``init`` runs on the head node against the server's store and prints the first admin's
token, once.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from farm.cli.client import Client
from farm.cli.options import json_option
from farm.cli.views import remote
from farm.errors import FarmError


def _client() -> Client:
    return remote("farm admin").client


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column.replace("_", " "))
    for row in rows:
        table.add_row(*("" if row.get(c) is None else _cell(row[c]) for c in columns))
    Console().print(table)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


@click.group()
def admin() -> None:
    """Manage users, tokens, enrolment, quotas; read usage (admins only)."""


@admin.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The server's data folder (the --data-dir of farm server).",
)
@click.option("--db", help="The server's store URL, if it is not DATA_DIR/farm.db.")
@click.option("--name", default=None, help="The admin's user name (default: yours).")
@json_option
def init(data_dir: Path, db: str | None, name: str | None, as_json: bool) -> None:
    """Create the first admin of a farm and print their token (shown only this once)."""
    from farm.accounts.auth import add_user, issue
    from farm.store.tables import User, open_store, session

    name = name or getpass.getuser()
    data_dir.mkdir(parents=True, exist_ok=True)
    url = db or f"sqlite:///{(data_dir / 'farm.db').absolute()}"
    with session(open_store(url)) as store:
        existing = store.query(User).filter(User.role == "admin").first()
        if existing is not None:
            raise FarmError(
                f"this farm already has an admin ({existing.name}): ask them for a token "
                "(farm admin token create USER)"
            )
        user = add_user(store, name, "admin")
        _, token = issue(store, user, None)
        store.commit()
    if as_json:
        _echo_json({"user": name, "role": "admin", "token": token})
        return
    click.echo(f"admin {name} created. Their token (shown only now; keep it secret):")
    click.echo(token)
    click.echo("Use it with: farm login URL --token TOKEN (or export FARM_TOKEN=TOKEN)")


@admin.group()
def user() -> None:
    """Add, list, disable or enable users."""


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["trainee", "instructor", "admin"]),
    default="trainee",
    show_default=True,
)
@json_option
def user_add(name: str, role: str, as_json: bool) -> None:
    """Add a user (then give them a token: farm admin token create NAME)."""
    answer = _client().post("/admin/users", {"name": name, "role": role})
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"user {name} added as {role}")


USER_COLUMNS = ["name", "role", "disabled", "programme", "cohort", "from", "until", "status"]


@user.command("list")
@json_option
def user_list(as_json: bool) -> None:
    """Every user with their current enrolment."""
    rows = _client().get("/admin/users")
    if as_json:
        _echo_json(rows)
    else:
        _table("users", rows, USER_COLUMNS)


@user.command("disable")
@click.argument("name")
@json_option
def user_disable(name: str, as_json: bool) -> None:
    """Disable a user: their tokens stop working and their queued work is held."""
    _user_action(name, "disable", as_json)


@user.command("enable")
@click.argument("name")
@json_option
def user_enable(name: str, as_json: bool) -> None:
    """Enable a disabled user again."""
    _user_action(name, "enable", as_json)


def _user_action(name: str, action: str, as_json: bool) -> None:
    answer = _client().post(f"/admin/users/{name}/{action}")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"user {name} {action}d")


@admin.group()
def token() -> None:
    """Create, list or revoke API tokens."""


@token.command("create")
@click.argument("name")
@click.option("--days", type=float, default=90, show_default=True, help="Days until it expires.")
@click.option("--no-expiry", is_flag=True, help="A token that lives until revoked.")
@json_option
def token_create(name: str, days: float, no_expiry: bool, as_json: bool) -> None:
    """Create a token for user NAME; it is shown only this once."""
    answer = _client().post("/admin/tokens", {"user": name, "days": None if no_expiry else days})
    if as_json:
        _echo_json(answer)
        return
    expires = answer["expires_at"] or "never"
    click.echo(f"token {answer['id']} for {name} (expires: {expires}); shown only now:")
    click.echo(answer["token"])


@token.command("list")
@click.argument("name", required=False)
@json_option
def token_list(name: str | None, as_json: bool) -> None:
    """Tokens (of user NAME), without the secrets."""
    rows = [t for t in _client().get("/admin/tokens") if name is None or t["user"] == name]
    if as_json:
        _echo_json(rows)
    else:
        columns = ["id", "user", "hint", "created_at", "expires_at", "revoked_at"]
        _table("tokens", rows, columns)


@token.command("revoke")
@click.argument("token_id", type=int)
@json_option
def token_revoke(token_id: int, as_json: bool) -> None:
    """Revoke token TOKEN_ID (see farm admin token list): it stops working at once."""
    answer = _client().post(f"/admin/tokens/{token_id}/revoke")
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"token {token_id} of {answer['user']} revoked")


def _date(_: Any, __: Any, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2026-09-01") from None


@admin.command()
@click.argument("user_name", metavar="USER|import")
@click.argument("roster", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--programme", type=click.Choice(["culturepreneurs", "work40", "staff"]))
@click.option("--cohort")
@click.option("--from", "starts", callback=_date, help="First day, e.g. 2026-09-01.")
@click.option("--until", "ends", callback=_date, help="Last day, e.g. 2027-06-30.")
@click.option(
    "--status",
    type=click.Choice(["active", "completed", "withdrawn"]),
    default="active",
    show_default=True,
)
@json_option
def enrol(
    user_name: str,
    roster: Path | None,
    programme: str | None,
    cohort: str | None,
    starts: str | None,
    ends: str | None,
    status: str,
    as_json: bool,
) -> None:
    """Enrol USER in a programme's cohort, or `import roster.csv` (columns user, programme,
    cohort, from, until, and optionally status and role): idempotent, all rows or none."""
    client = _client()
    if user_name == "import":
        if roster is None:
            raise FarmError("farm admin enrol import needs the roster file: import roster.csv")
        try:
            text = roster.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise FarmError(f"cannot read the roster {roster}: {error}") from None
        counts = client.post("/admin/enrolments/import", {"csv": text})
        if as_json:
            _echo_json(counts)
        else:
            click.echo(
                f"{roster}: {counts['added']} enrolments added, {counts['updated']} updated, "
                f"{counts['unchanged']} unchanged; {counts['users_added']} users added"
            )
        return
    if roster is not None:
        raise FarmError(f"unexpected argument {roster}: give USER and the options")
    missing = [
        flag
        for flag, value in (
            ("--programme", programme),
            ("--cohort", cohort),
            ("--from", starts),
            ("--until", ends),
        )
        if value is None
    ]
    if missing:
        raise FarmError(f"farm admin enrol {user_name} needs {', '.join(missing)}")
    body = {
        "user": user_name,
        "programme": programme,
        "cohort": cohort,
        "from": starts,
        "until": ends,
        "status": status,
    }
    answer = client.post("/admin/enrolments", body)
    if as_json:
        _echo_json(answer)
    else:
        click.echo(f"{user_name} in {programme}/{cohort}, {starts} to {ends}: {answer['result']}")


@admin.group()
def quota() -> None:
    """Set or show quotas and output roots (per programme, cohort or user)."""


@quota.command("set")
@click.option("--programme", type=click.Choice(["culturepreneurs", "work40", "staff"]))
@click.option("--cohort", help="With --programme: that cohort's policy.")
@click.option("--user", "user_name", help="One user's policy (overrides their cohort's).")
@click.option("--gpu-hours", type=float, help="GPU-hours per period.")
@click.option("--cpu-hours", type=float, help="CPU-hours per period.")
@click.option("--period", type=click.Choice(["week", "month", "enrolment"]))
@click.option("--max-gpus", type=float, help="GPUs in use at once.")
@click.option("--max-priority", type=int, help="The highest --priority allowed.")
@click.option("--labs", help="Allowed labs, comma-separated, e.g. film,ml.")
@click.option("--output-root", help="Folder under which each user writes ROOT/USER.")
@click.option("--clear", multiple=True, help="Unset a field (e.g. gpu_hours); repeatable.")
@json_option
def quota_set(
    programme: str | None,
    cohort: str | None,
    user_name: str | None,
    gpu_hours: float | None,
    cpu_hours: float | None,
    period: str | None,
    max_gpus: float | None,
    max_priority: int | None,
    labs: str | None,
    output_root: str | None,
    clear: tuple[str, ...],
    as_json: bool,
) -> None:
    """Set fields of a programme's, cohort's or user's policy; others stay as they were."""
    if cohort and not programme:
        raise FarmError("--cohort needs --programme")
    body: dict[str, Any] = {
        "programme": programme or "",
        "cohort": cohort or "",
        "user": user_name or "",
        "gpu_hours": gpu_hours,
        "cpu_hours": cpu_hours,
        "period": period,
        "max_gpus": max_gpus,
        "max_priority": max_priority,
        "labs": [lab.strip() for lab in labs.split(",") if lab.strip()] if labs else None,
        "output_root": output_root,
        "clear": [c.replace("-", "_") for c in clear],
    }
    answer = _client().put("/admin/policies", {k: v for k, v in body.items() if v is not None})
    if as_json:
        _echo_json(answer)
    else:
        _table("policy", [answer], POLICY_COLUMNS)


POLICY_COLUMNS = [
    "programme",
    "cohort",
    "user",
    "gpu_hours",
    "cpu_hours",
    "period",
    "max_gpus",
    "max_priority",
    "labs",
    "output_root",
]


@quota.command("show")
@json_option
def quota_show(as_json: bool) -> None:
    """Every policy."""
    rows = _client().get("/admin/policies")
    if as_json:
        _echo_json(rows)
    else:
        _table("policies", rows, POLICY_COLUMNS)


@admin.command("usage")
@click.option(
    "--by", type=click.Choice(["user", "programme", "cohort"]), default="user", show_default=True
)
@click.option("--since", callback=_date, help="From this day (default: ever).")
@click.option("--until", callback=_date, help="Before this day.")
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
    client = _client()
    rows = client.get("/admin/usage", by=by, since=since, until=until)
    if plot is not None:
        start = since or (dt.date.today() - dt.timedelta(days=30)).isoformat()
        draw_usage(client.get("/admin/usage/daily", since=start), plot)
    if as_json:
        _echo_json(rows)
    elif as_csv:
        columns = [by, "gpu_hours", "cpu_hours", "attempts", "jobs"]
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        span = f" since {since}" if since else ""
        _table(f"usage by {by}{span}", rows, [by, "gpu_hours", "cpu_hours", "attempts", "jobs"])
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
    try:
        figure.savefig(path, dpi=100)
    except OSError as error:
        raise FarmError(f"cannot write the plot {path}: {error}") from None
    finally:
        plt.close(figure)


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
        _echo_json(me)
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


COMMANDS = [admin, usage]
