"""The CLI's side of the API: where the server is, and one-line errors for everything that fails.

The server is ``$FARM_URL``, else the one ``farm login URL`` saved in ``~/.config/farm/client.json``;
with neither, the CLI runs the embedded farm.
"""

from __future__ import annotations

import getpass
import json
import os
from pathlib import Path
from typing import Any

import httpx

from farm.errors import FarmError
from farm.scenes import digest_of

TIMEOUT = 30.0
PREFIX = "/api/v1"  # the API's version 1
USER_HEADER = "X-Farm-User"  # who submits, until the farm has accounts and tokens


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "farm" / "client.json"


def server_url() -> str | None:
    """The configured server, or None for the embedded farm."""
    if os.environ.get("FARM_URL"):
        return os.environ["FARM_URL"].rstrip("/")
    try:
        return json.loads(config_file().read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None


class Client:
    """Calls to one farm server as this OS user."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.url + PREFIX,
            timeout=TIMEOUT,
            headers={USER_HEADER: getpass.getuser()},
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise FarmError(f"cannot reach the farm server at {self.url}: {error}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            if response.status_code >= 500 or not detail:
                detail = f"the farm server at {self.url} answered {response.status_code}"
            raise FarmError(str(detail))
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, json=body)

    def upload_scene(self, path: Path) -> str:
        """Send a .blend to the server unless it has it already; returns its ``sha256:`` name."""
        if not path.is_file():
            raise FarmError(f"scene file {path} does not exist")
        digest = digest_of(path)
        try:
            return self.get(f"/scenes/{digest}")["scene"]
        except FarmError as error:
            if "no uploaded scene" not in str(error):
                raise
        with path.open("rb") as data:
            return self.call("PUT", f"/scenes/{digest}", content=data)["scene"]

    def download(self, path: str, target: Path) -> None:
        """Save what ``path`` serves into ``target``, atomically."""
        temp = target.with_name(f".{target.name}.part")
        try:
            with self.http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise FarmError(
                        response.json().get("detail") or f"{path}: {response.status_code}"
                    )
                with temp.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
            temp.replace(target)
        except httpx.HTTPError as error:
            raise FarmError(f"cannot reach the farm server at {self.url}: {error}") from None
        finally:
            temp.unlink(missing_ok=True)


def login(url: str) -> str:
    """Check that ``url`` is a farm server and remember it for later commands."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise FarmError(f"{url!r} is not a server address: give one like http://head-node:8765")
    health = Client(url).get("/health")
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"url": url}) + "\n")
    return str(health.get("version", "?"))
