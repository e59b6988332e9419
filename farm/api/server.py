"""``farm server``: the store, the scheduler and the API in one process on the head node.

It joins the Ray cluster this machine belongs to (``ray start --head`` first), or starts a local
Ray when there is none. On start it takes up every unfinished job in the store: attempts that were
running when the last server stopped are recorded as lost and run again, and frames already on disk
are not rendered again.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import ray
import uvicorn

from farm.api.app import create_app
from farm.config import private_folder, store_url
from farm.errors import FarmError
from farm.ray_token import reachable, token_for, use_token
from farm.scheduler.connect import ensure_ray, last_cluster
from farm.scheduler.fairshare import HALF_LIFE
from farm.scheduler.loop import Scheduler
from farm.store.tables import open_store


def join_ray(address: str | None, token_file: Path | None = None) -> str:
    """Join the cluster at ``address`` (``auto``: the one this machine started last), carrying the
    cluster's token; with ``auto`` and no live cluster, start a local one. Returns how it went,
    for the start-up line."""
    if address in (None, "", "local"):
        # "local", never None: ray.init() with no address joins the cluster this machine last
        # started (/tmp/ray/ray_current_cluster), which is not the local Ray asked for.
        ensure_ray("local")
        return "a local Ray started by the server"
    if address == "auto":
        found = last_cluster()
        if found is None:
            ensure_ray("local")
            return "a local Ray started by the server (no cluster was running on this machine)"
        address, origin = found
        if reachable(address, timeout=2):  # a head that died without cleaning up
            ensure_ray("local")
            return (
                f"a local Ray started by the server: the cluster in {origin}, {address}, "
                "is not running"
            )
    elif why := reachable(address):
        raise FarmError(f"cannot join the Ray cluster at {address}: {why}")
    token = token_for(address, token_file)
    if token:
        use_token(token)
    try:
        ensure_ray(address)
    except (ConnectionError, RuntimeError) as error:
        raise FarmError(f"cannot join the Ray cluster at {address}: {error}") from None
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"the Ray cluster at {address} ({nodes} node{'s' if nodes != 1 else ''})"


def serve(
    host: str,
    port: int,
    data_dir: Path,
    db: str | None,
    ray_address: str | None,
    half_life: float = HALF_LIFE,
    ray_token: Path | None = None,
) -> None:
    """Run until interrupted (Ctrl-C or SIGTERM); ``half_life``: fair share's, in seconds."""
    private_folder(data_dir)
    url = db or store_url(data_dir)
    engine = open_store(url)
    joined = join_ray(ray_address, ray_token)
    scheduler = Scheduler(
        engine,
        half_life=half_life,
        storage=data_dir / "train",
        uploads=data_dir.absolute() / "files",
    )
    scheduler.start()
    app = create_app(engine, scheduler, data_dir.absolute())
    where = url if "@" not in url else url.split("@", 1)[1]  # never print a password
    print(f"farm server on http://{host}:{port} (store: {where}; {joined})", flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server, "should_exit", True))
    logging.getLogger("farm").setLevel(logging.INFO)
    try:
        server.run()
    finally:
        scheduler.stop()
        ray.shutdown()
