"""The CLI's side of the API: where the server is, and one-line errors for everything that fails.

The server is ``$FARM_URL``, else the one ``farm login URL`` saved in ``~/.config/farm/client.json``;
with neither, the CLI runs the embedded farm. The token is ``$FARM_TOKEN``, else the one saved by
``farm login URL --token TOKEN`` (the file is readable by its owner only).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import httpx

from farm.api import PREFIX
from farm.errors import BY_STATUS, FarmError, NotFound
from farm.scene_files import scene_files
from farm.store.scenes import digest_of

TIMEOUT = 30.0


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "farm" / "client.json"


def _saved() -> dict[str, Any]:
    try:
        saved = json.loads(config_file().read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def server_url() -> str | None:
    """The configured server, or None for the embedded farm."""
    if os.environ.get("FARM_URL"):
        return os.environ["FARM_URL"].rstrip("/")
    return _saved().get("url")


def token() -> str | None:
    return os.environ.get("FARM_TOKEN") or _saved().get("token")


class Client:
    """Calls to one farm server with the configured token (or ``token``)."""

    def __init__(self, url: str, token_: str | None = None) -> None:
        self.url = url.rstrip("/")
        secret = token_ or token()
        self.http = httpx.Client(
            base_url=self.url + PREFIX,
            timeout=TIMEOUT,
            headers={"Authorization": f"Bearer {secret}"} if secret else {},
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
            raise BY_STATUS.get(response.status_code, FarmError)(str(detail))
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, json=body)

    def put(self, path: str, body: dict[str, Any]) -> Any:
        return self.call("PUT", path, json=body)

    @property
    def on_this_machine(self) -> bool:
        """Whether the server runs here, where it can read the user's files as they are."""
        host = httpx.URL(self.url).host
        return host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), socket.getfqdn())

    def uploads(self, upload: bool | None) -> bool:
        """Whether files named here travel to the server: ``--upload``/``--no-upload`` as given,
        else when the server is on another machine (it cannot read them where they are)."""
        return upload if upload is not None else not self.on_this_machine

    def upload_shot(self, scene: Path) -> dict[str, Any]:
        """Send a .blend and every file it uses (Blender lists them here, where they are) to the
        server, each only if the server lacks it; returns what a render submission names them by.
        A file the scene uses that is missing here is refused before anything is sent."""
        if not scene.is_file():
            raise FarmError(f"scene file {scene} does not exist")
        files = {dep.path: digest_of(Path(dep.path)) for dep in scene_files(scene)}
        sent = self.upload_files(files)
        name, size = self.upload_scene(scene)
        sent = {
            "files": sent["files"] + (size > 0),
            "bytes": sent["bytes"] + size,
            "of": len(files) + 1,
        }
        origin = str(scene.absolute())
        return {"scene": name, "name": scene.name, "origin": origin, "files": files, "sent": sent}

    def upload_files(self, files: dict[str, str]) -> dict[str, int]:
        """Send each file (path → sha256) the server lacks, once a digest; returns what was sent."""
        missing = set(
            self.post("/files/missing", {"digests": sorted(set(files.values()))})["missing"]
        )
        sent = {"files": 0, "bytes": 0, "of": len(files)}
        for path, digest in sorted(files.items()):
            if digest in missing:
                with open(path, "rb") as data:
                    sent["bytes"] += self.call("PUT", f"/files/{digest}", content=data)["bytes"]
                sent["files"] += 1
                missing.discard(digest)
        return sent

    def upload_dataset(self, folder: Path) -> dict[str, Any]:
        """Send every file under ``folder`` the server lacks and name them a dataset; returns its
        name (``sha256:…``, what a run gives as its data), size and what was sent."""
        if not folder.is_dir():
            raise FarmError(f"dataset folder {folder} does not exist")
        paths = sorted(p for p in folder.rglob("*") if p.is_file())
        if not paths:
            raise FarmError(f"dataset folder {folder} holds no file")
        return self.upload_named({p.relative_to(folder).as_posix(): str(p) for p in paths})

    def upload_named(self, names: dict[str, str]) -> dict[str, Any]:
        """Send files (name in the dataset → path here) the server lacks and name them a dataset."""
        digests = {path: digest_of(Path(path)) for path in names.values()}
        sent = self.upload_files(digests)
        files = {name: digests[path] for name, path in names.items()}
        return {**self.post("/datasets", {"files": files}), "sent": sent}

    def upload_scene(self, path: Path) -> tuple[str, int]:
        """Send a .blend to the server unless it has it already; returns its ``sha256:`` name and
        the bytes sent."""
        digest = digest_of(path)
        try:
            return self.get(f"/scenes/{digest}")["scene"], 0
        except NotFound:
            pass
        with path.open("rb") as data:
            stored = self.call("PUT", f"/scenes/{digest}", content=data)
        return stored["scene"], stored["bytes"]

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


def login(url: str, token_: str | None) -> dict[str, Any]:
    """Check that ``url`` is a farm server that takes the token (``token_``, else the configured
    one) and remember both for later commands; returns who the token belongs to."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise FarmError(f"{url!r} is not a server address: give one like http://head-node:8765")
    client = Client(url, token_)
    version = client.get("/health").get("version", "?")
    me = client.get("/me")
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    saved = {"url": url, "token": token_ or token()}
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(saved) + "\n")
    temp.chmod(0o600)  # the token is a password
    temp.replace(path)
    return {"url": url, "version": version, "user": me["user"], "role": me["role"]}
