"""What travels as files: the scenes uploaded for renders (``/scenes/<sha256>``), and the frames a
job wrote, for ``farm fetch``."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as Path_
from fastapi.responses import FileResponse

from farm.accounts.access import readable
from farm.api.deps import Db, Me, Scenes
from farm.api.models import Scene, refusals
from farm.errors import NotFound
from farm.store.queries import job_outputs
from farm.store.scenes import PREFIX as SCENE_PREFIX

router = APIRouter()

Digest = Annotated[str, Path_(max_length=64)]


@router.put("/scenes/{digest}", status_code=201, responses=refusals(400, 422))
async def upload_scene(digest: Digest, request: Request, _: Me, scenes: Scenes) -> Scene:
    """Store a .blend under its sha256 (the body is the file); the same bytes twice are one."""
    if scenes.path(digest).is_file():
        return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=scenes.path(digest).stat().st_size)
    upload = scenes.upload(digest)
    try:
        async for chunk in request.stream():
            upload.add(chunk)
        size = upload.finish()
    except BaseException:
        upload.abort()
        raise
    return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=size)


@router.get("/scenes/{digest}", responses=refusals(400, 404, 422))
def scene(digest: Digest, _: Me, scenes: Scenes) -> Scene:
    path = scenes.path(digest)
    if not path.is_file():
        raise NotFound(f"no uploaded scene {SCENE_PREFIX}{digest}")
    return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=path.stat().st_size)


@router.get("/jobs/{job_id}/outputs", responses=refusals(404, 422))
def outputs(job_id: int, db: Db, me: Me) -> list[dict[str, Any]]:
    """The frames the job has written, for `farm fetch`."""
    return job_outputs(db, readable(db, me, job_id).id)


@router.get("/jobs/{job_id}/outputs/{frame}", responses=refusals(404, 422))
def output(job_id: int, frame: int, db: Db, me: Me) -> FileResponse:
    for written in job_outputs(db, readable(db, me, job_id).id):
        if written["frame"] == frame:
            return FileResponse(written["path"], filename=Path(written["path"]).name)
    raise NotFound(f"job {job_id} has no frame {frame} on disk")
