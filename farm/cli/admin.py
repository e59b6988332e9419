"""``farm admin …`` (users, tokens, enrolment, quotas, usage) and ``farm usage``.

Everything but ``farm admin init`` goes through the farm server's admin API with an admin's
token. ``init`` runs on the head node against the server's store and prints the first admin's
token, once.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

import click

from farm.cli.client import Client
from farm.cli.options import day, echo_json, json_option, print_table
from farm.cli.usage import admin_usage, usage
from farm.cli.views import remote
from farm.errors import FarmError


def _client() -> Client:
    return remote("farm admin").client


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
    from farm.config import private_folder, store_url
    from farm.store.tables import User, open_store, session

    name = name or getpass.getuser()
    private_folder(data_dir)
    url = db or store_url(data_dir)
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
        echo_json({"user": name, "role": "admin", "token": token})
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
        echo_json(answer)
    else:
        click.echo(f"user {name} added as {role}")


USER_COLUMNS = ["name", "role", "disabled", "programme", "cohort", "from", "until", "status"]


@user.command("list")
@json_option
def user_list(as_json: bool) -> None:
    """Every user with their current enrolment."""
    rows = _client().get("/admin/users")
    if as_json:
        echo_json(rows)
    else:
        print_table("users", rows, USER_COLUMNS)


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
        echo_json(answer)
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
        echo_json(answer)
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
        echo_json(rows)
    else:
        columns = ["id", "user", "hint", "created_at", "expires_at", "revoked_at"]
        print_table("tokens", rows, columns)


@token.command("revoke")
@click.argument("token_id", type=int)
@json_option
def token_revoke(token_id: int, as_json: bool) -> None:
    """Revoke token TOKEN_ID (see farm admin token list): it stops working at once."""
    answer = _client().post(f"/admin/tokens/{token_id}/revoke")
    if as_json:
        echo_json(answer)
    else:
        click.echo(f"token {token_id} of {answer['user']} revoked")


@admin.command()
@click.argument("user_name", metavar="USER|import")
@click.argument("roster", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--programme", type=click.Choice(["culturepreneurs", "work40", "staff"]))
@click.option("--cohort")
@click.option("--from", "starts", callback=day, help="First day, e.g. 2026-09-01.")
@click.option("--until", "ends", callback=day, help="Last day, e.g. 2027-06-30.")
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
            echo_json(counts)
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
        echo_json(answer)
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
        echo_json(answer)
    else:
        print_table("policy", [answer], POLICY_COLUMNS)


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
        echo_json(rows)
    else:
        print_table("policies", rows, POLICY_COLUMNS)


admin.add_command(admin_usage)
COMMANDS = [admin, usage]
