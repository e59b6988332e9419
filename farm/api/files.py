"""What travels as files: the scenes uploaded for renders (``/scenes/<sha256>``), every file they
use and every file of a training dataset (``/files/<sha256>``: only what the server lacks is
sent), datasets as manifests of such files (``/datasets``), and what a job wrote, for
``farm fetch``."""

import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as Path_
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from farm.accounts.access import Caller, readable
from farm.api.deps import Db, Files, Me, Scenes, Sched
from farm.api.models import Dataset, DatasetFiles, FileList, Missing, Scene, StoredFile, refusals
from farm.errors import FarmError, NotFound
from farm.scheduler.kinds.train import run_name
from farm.store.queries import comp_outputs, written_frames
from farm.store.scenes import PREFIX as SCENE_PREFIX
from farm.store.scenes import ContentStore, Upload
from workers.scene_cache import dataset_id, dataset_layout, dataset_manifest

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


@router.post("/datasets", status_code=201, responses=refusals(400, 422))
def put_dataset(body: DatasetFiles, _: Me, files: Files) -> Dataset:
    """Name a dataset whose files were uploaded: its manifest is kept by its own sha256, the
    name a training run gives as its data (``farm data put FOLDER`` does all of it)."""
    if not body.files:
        raise FarmError("a dataset needs at least one file")
    try:
        dataset_layout(body.files)
    except ValueError as error:
        raise FarmError(f"the dataset's files: {error}") from None
    files.require(body.files)
    digest = dataset_id(body.files)
    manifest = files.path(digest)
    if not manifest.is_file():
        upload = files.upload(digest)
        upload.add(dataset_manifest(body.files))
        upload.finish()
    size = sum(files.path(d).stat().st_size for d in set(body.files.values()))
    return Dataset(data=f"{SCENE_PREFIX}{digest}", files=len(body.files), bytes=size)


@router.get("/scenes/{digest}", responses=refusals(400, 404, 422))
def scene(digest: Digest, _: Me, scenes: Scenes) -> Scene:
    path = scenes.path(digest)
    if not path.is_file():
        raise NotFound(f"no uploaded scene {SCENE_PREFIX}{digest}")
    return Scene(scene=f"{SCENE_PREFIX}{digest}", bytes=path.stat().st_size)


@router.get("/jobs/{job_id}/outputs", responses=refusals(404, 422))
def outputs(job_id: int, db: Db, me: Me, sched: Sched) -> list[dict[str, Any]]:
    """What the job has written and is on disk, for `farm fetch`: a render's frames; a comp's
    frames, previews, contact sheet and movie; a training run's checkpoints, TensorBoard files
    and Ray Train's state. Each ``name`` is its path under the folder that holds them all."""
    listed = []
    for name, (path, frame) in _named(db, me, job_id, sched.storage).items():
        if path.is_file():
            size = path.stat().st_size
            listed.append({"name": name, "frame": frame, "path": str(path), "bytes": size})
    return listed


@router.get("/jobs/{job_id}/outputs/{name:path}", responses=refusals(404, 422))
def output(job_id: int, name: str, db: Db, me: Me, sched: Sched) -> FileResponse:
    path, _ = _named(db, me, job_id, sched.storage).get(name, (None, None))
    if path is None or not path.is_file():
        raise NotFound(f"job {job_id} has no output {name[:200]!r} on disk")
    return FileResponse(path, filename=path.name)


def _named(
    db: Session, me: Caller, job_id: int, storage: Path
) -> dict[str, tuple[Path, int | None]]:
    """What the job made (its path and frame, if a frame) by name: its path under the folder
    that holds all it recorded."""
    job = readable(db, me, job_id)
    made: dict[Path, int | None] = {}
    if job.kind == "train":
        run = storage / run_name(job.id)
        made = {p: None for p in sorted(run.rglob("*")) if p.is_file()} if run.is_dir() else {}
    else:
        made = {Path(path): frame for frame, path in sorted(written_frames(db, job.id).items())}
    if job.kind == "comp":
        review = comp_outputs(db, job.id)
        extra = [*review["previews"], review["contact_sheet"], review["movie"]]
        made.update((Path(path), None) for path in extra if path)
    if not made:
        return {}
    top = Path(os.path.commonpath([p.parent for p in made]))
    return {p.relative_to(top).as_posix(): (p, frame) for p, frame in made.items()}
