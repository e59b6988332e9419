"""What travels as files: the scenes uploaded for renders (``/scenes/<sha256>``), every file they
use (``/files/<sha256>``: only what the server lacks is sent), and the frames a job wrote, for
``farm fetch``."""

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as Path_
from fastapi.responses import FileResponse

from farm.accounts.access import readable
from farm.api.deps import Db, Files, Me, Scenes
from farm.api.models import FileList, Missing, Scene, StoredFile, refusals
from farm.errors import NotFound
from farm.store.queries import job_outputs
from farm.store.scenes import PREFIX as SCENE_PREFIX
from farm.store.scenes import ContentStore, Upload

router = APIRouter()

Digest = Annotated[str, Path_(max_length=64)]


@router.put("/scenes/{digest}", status_code=201, responses=refusals(400, 422))
async def upload_scene(digest: Digest, request: Request, _: Me, scenes: Scenes) -> Scene:
    """Store a .blend under its sha256 (the body is the file); the same bytes twice are one."""
    return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=await _store(scenes, digest, request))


@router.post("/files/missing", responses=refusals(400, 422))
def missing_files(body: FileList, _: Me, files: Files) -> Missing:
    """Which of a scene's files the server lacks: the client sends only those."""
    return Missing(missing=files.missing(body.digests))


@router.put("/files/{digest}", status_code=201, responses=refusals(400, 422))
async def upload_file(digest: Digest, request: Request, _: Me, files: Files) -> StoredFile:
    """Store a file a scene uses under its sha256 (the body is the file)."""
    return StoredFile(file=digest, bytes=await _store(files, digest, request))


async def _store(store: ContentStore, digest: str, request: Request) -> int:
    """Keep the request's body under ``digest`` unless the store has it; returns its size."""
    if store.path(digest).is_file():
        return store.path(digest).stat().st_size
    upload: Upload = store.upload(digest)
    try:
        async for chunk in request.stream():
            upload.add(chunk)
        return upload.finish()
    except BaseException:
        upload.abort()
        raise


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
