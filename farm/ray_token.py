"""The Ray cluster's token: Ray (from 2.59 on) refuses any node or driver that does not carry it.

``ray start --head`` turns token authentication on and keeps the token in ``~/.ray/auth_token``.
Every other process of the cluster (``farm node join``, ``farm server``) must name the same token
and say that authentication is on (``RAY_AUTH_MODE=token``): Ray itself does not switch it on for
a process that connects by address. The token is passed by file path (``RAY_AUTH_TOKEN_PATH``),
never on a command line, where ``ps`` would show it to every user of the machine.

A lab that insists on a cluster without a token starts every Ray process with
``RAY_AUTH_MODE=disabled``; the farm then carries none.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import FarmError

MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
_HEX = frozenset("0123456789abcdefABCDEF")


def default_path() -> Path:
    """Where ``ray start --head`` keeps the token, and where Ray looks when nothing else is named."""
    return Path.home() / ".ray" / "auth_token"


@dataclass(frozen=True)
class ClusterToken:
    """A token found for this machine, and what a process needs in its environment to use it."""

    source: str  # where it was found, for messages
    env: dict[str, str] = field(default_factory=dict)

    def environ(self) -> dict[str, str]:
        """This process's environment with the token in it (a token named by file wins over a
        ``$RAY_AUTH_TOKEN`` inherited from the shell, which Ray would read first)."""
        base = {k: v for k, v in os.environ.items() if not (TOKEN_PATH in self.env and k == TOKEN)}
        return {**base, **self.env}


def disabled() -> bool:
    return os.environ.get(MODE, "").lower() == "disabled"


def find_token(token_file: Path | None = None) -> ClusterToken | None:
    """The token this machine carries: ``token_file``, else ``$RAY_AUTH_TOKEN``, else
    ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; None where the lab turned tokens off."""
    if disabled():
        return None
    if token_file is None and os.environ.get(TOKEN):
        return ClusterToken(f"${TOKEN}", {MODE: "token"})
    if token_file is None and os.environ.get(TOKEN_PATH):
        token_file = Path(os.environ[TOKEN_PATH])
    path = token_file or default_path()
    if not path.is_file():
        raise FarmError(
            f"no Ray cluster token at {path}: copy the head node's ~/.ray/auth_token to this "
            "machine and name it with --token-file (or set RAY_AUTH_TOKEN_PATH)"
        )
    _check_file(path)
    return ClusterToken(str(path), {MODE: "token", TOKEN_PATH: str(path.absolute())})


def _check_file(path: Path) -> None:
    try:
        text = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise FarmError(f"cannot read the Ray cluster token {path}: {error}") from None
    if not text or len(text) > 1024 or not set(text) <= _HEX:
        raise FarmError(f"{path} is not a Ray cluster token (one line of hex digits)")


def make_token(path: Path | None = None) -> Path:
    """The head's token: the one already at ``path`` (default ``~/.ray/auth_token``), else a new
    one of 256 random bits, readable by its owner only."""
    path = path or default_path()
    if path.is_file():
        _check_file(path)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def reachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at ``host:port`` (a TCP connect), or None when something does."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or address, int(port or 6379)), timeout=timeout).close()
    except (OSError, ValueError) as error:
        return str(error) or type(error).__name__
    return None


# Asks the cluster's GCS for its id, as every Ray process does first: first without a token, then
# (where that is refused and the parent named one in FARM_TOKEN_ENV) with it. Ray reads its auth
# mode when it loads, and again when told to, as use_token does.
_CHECK = """
import json, os, sys
carried = json.loads(os.environ.pop("FARM_TOKEN_ENV", "null"))
for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
    os.environ.pop(name, None)
os.environ["RAY_AUTH_MODE"] = "disabled"
from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
from ray.exceptions import AuthenticationError
def ask():
    GcsClient(address=sys.argv[1]).internal_kv_get(b"farm", None)
try:
    try:
        ask()
        sys.exit(0)
    except AuthenticationError:
        if carried is None:
            sys.exit(3)
    os.environ.update(carried)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
    ask()
    sys.exit(5)
except AuthenticationError:
    sys.exit(3)
except Exception as error:
    print(str(error).splitlines()[0] if str(error) else type(error).__name__, file=sys.stderr)
    sys.exit(4)
"""
TAKES_NONE, TAKES_TOKEN, REFUSED = 0, 5, 3


def use_token(token: ClusterToken) -> None:
    """Carry ``token`` in this process's own Ray calls from now on. Ray reads its auth mode and
    token once, when it loads: tell it to read them again, as its own ``ray.init`` does when it
    turns authentication on."""
    if TOKEN_PATH in token.env:
        os.environ.pop(TOKEN, None)
    os.environ.update(token.env)
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def token_for(address: str, token_file: Path | None = None) -> ClusterToken | None:
    """The token to carry to the cluster at ``address``, checked there; None for a cluster that
    takes none (a head started with ``RAY_AUTH_MODE=disabled``). A process that carries a token
    to such a cluster refuses the cluster's own calls back to it: the GCS then takes it for dead
    and destroys every actor it makes. Refuses in one line when the cluster will not take it."""
    token, missing = None, None
    if not disabled():
        try:
            token = find_token(token_file)
        except FarmError as error:
            missing = error
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN, TOKEN_PATH)}
    if token:
        value = {} if TOKEN_PATH in token.env else {TOKEN: os.environ[TOKEN]}
        env["FARM_TOKEN_ENV"] = json.dumps({**value, **token.env})
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, address],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    if done.returncode == TAKES_NONE:
        return None
    if done.returncode == TAKES_TOKEN:
        return token
    if done.returncode == REFUSED and missing:
        raise missing
    if done.returncode == REFUSED:
        carried = f"the token in {token.source}" if token else "no token (RAY_AUTH_MODE=disabled)"
        raise FarmError(
            f"the Ray cluster at {address} refused {carried}: use the head node's "
            "~/.ray/auth_token (`ray get-auth-token` on the head prints it)"
        )
    last = (done.stderr.strip().splitlines() or ["no answer"])[-1]
    raise FarmError(f"cannot talk to the Ray cluster at {address}: {last}")
