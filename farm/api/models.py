"""What the API's calls take and give: the request bodies (strict: an unknown field or a value of
the wrong type is a 422) and the small answers, with the refusals every route lists in its spec."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from farm.labs import LAB_PATTERN
from pipelines import probe, train

Text = Annotated[str, Field(max_length=4096)]
Short = Annotated[str, Field(max_length=64)]
Lab = Annotated[str, Field(pattern=LAB_PATTERN)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Submission(BaseModel):
    """What every job type's submission carries besides its own spec."""

    model_config = ConfigDict(extra="forbid", strict=True)
    priority: int = Field(50, ge=0, le=100, description="Higher runs first.")
    after: list[Annotated[int, Field(ge=1, le=2**62)]] = Field(
        default_factory=list, max_length=100, description="Jobs that must be done first."
    )


class RenderSubmission(Submission):
    """``farm submit render``: the options of ``farm render``; paths as the server sees them."""

    scene: Text
    frames: Text | None = None
    chunk: int = Field(1, ge=1, le=1_000_000)
    tiles: Short = "auto"
    overscan: int = Field(0, ge=0, le=65_536)
    output: Text | None = None
    format: Short | None = None
    samples: int | None = Field(None, ge=1, le=1_000_000)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    resolution: Short | None = None
    engine: Short | None = None
    device: Short = "CPU"
    compression: Short | None = None
    allow_scripts: bool = False
    retries: int = Field(2, ge=0, le=100)
    slots: int | None = Field(None, ge=1, le=4096, description="Most slots the job may hold.")
    threads: int = Field(2, ge=1, le=1024, description="Render threads (CPUs) per slot.")
    memory: int | None = Field(None, ge=1, le=2**50, description="Bytes each slot reserves.")
    stall_timeout: float = Field(600.0, gt=0, le=86_400)
    lab: Lab | None = None
    name: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="The job's name (default: the scene's file name)."
    )
    origin: Text | None = Field(
        None, description="An uploaded scene's path where it was submitted from."
    )
    files: dict[Text, Sha256] = Field(
        default_factory=dict,
        max_length=100_000,
        description="Every file an uploaded scene uses: its path where it was submitted from → "
        "the sha256 it was uploaded as (PUT /files/{digest}).",
    )


class ProbeSubmission(Submission):
    """``farm submit probe``: N tasks that hold a slot for a while and say where they ran."""

    tasks: int = Field(1, ge=1, le=probe.MAX_TASKS)
    seconds: float = Field(0.0, ge=0, le=86_400)
    cpus: float = Field(1.0, gt=0, le=1024)
    gpus: float = Field(0.0, ge=0, le=64)
    memory: int = Field(0, ge=0, le=2**50, description="Bytes each task reserves.")
    fail_first: int = Field(0, ge=0, le=100)
    retries: int = Field(2, ge=0, le=100)


class TrainSubmission(Submission):
    """``farm submit train``: the script travels as text; Ray Train runs it on the cluster."""

    script: Annotated[str, Field(max_length=256)] = Field(description="The script's file name.")
    source: Annotated[str, Field(max_length=train.MAX_SCRIPT)] = Field(
        description="The script: defines train_loop_per_worker(config)."
    )
    workers: int = Field(1, ge=1, le=1024)
    cpus_per_worker: float = Field(1.0, gt=0, le=1024)
    gpus_per_worker: float = Field(0.0, ge=0, le=64)
    max_hours: float | None = Field(None, gt=0, le=8760)
    config: dict[Annotated[str, Field(max_length=128)], Any] = Field(
        default_factory=dict, max_length=256, description="train_loop_config."
    )
    max_failures: int = Field(2, ge=0, le=100)
    data: Annotated[str, Field(max_length=4096)] | None = Field(
        None,
        description="An uploaded dataset (sha256:…, POST /datasets) or a folder every node sees; "
        'the script finds it as config["data"].',
    )
    lab: Lab | None = None


class CompSubmission(Submission):
    """``farm comp``: the spec file's tables as JSON; paths as the server sees them, relative
    ones in the caller's own folder."""

    spec: dict[Annotated[str, Field(max_length=64)], Any] = Field(
        max_length=16, description="The comp spec: inputs, ops, output, review (see the README)."
    )
    lab: Lab | None = None
    name: Annotated[str, Field(max_length=256)] | None = None


class Scene(BaseModel):
    scene: str = Field(description="What a render submission names it by: sha256:<digest>.")
    bytes: int


class FileList(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    digests: list[Sha256] = Field(max_length=100_000, description="sha256 digests of files.")


class Missing(BaseModel):
    missing: list[str] = Field(description="The digests the server lacks: upload these.")


class StoredFile(BaseModel):
    file: str = Field(description="The file's sha256, as a submission's files name it.")
    bytes: int


class DatasetFiles(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    files: dict[Annotated[str, Field(max_length=1024)], Sha256] = Field(
        max_length=100_000,
        description="Each file's name relative to the dataset's folder (POSIX), and its sha256 "
        "(uploaded first: PUT /files/{digest}).",
    )


class Dataset(BaseModel):
    data: str = Field(description='What a training run names it by (its "data"): sha256:<id>.')
    files: int
    bytes: int


class TaskChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    task: Short | None = Field(None, description="One task (e.g. f12.t3); none: the whole job.")


class Accepted(BaseModel):
    id: int
    state: str


class Changed(BaseModel):
    id: int
    result: str


class Problem(BaseModel):
    """Every refusal: ``detail`` is one line naming the problem."""

    detail: str
    errors: int | None = Field(None, description="How many fields were wrong (422 only).")


def refusals(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that may refuse with ``codes`` (and 401: every route but
    ``/health`` needs a token), so that the spec lists each refusal with its ``Problem``."""
    words = {
        400: "Refused: the farm cannot do this (one line says why)",
        401: "No token, or one that does not work (unknown, expired, revoked)",
        403: "The caller's role or quota does not allow this",
        404: "No such job (or not one of the caller's)",
        422: "The request does not fit this spec (one line names the first problem)",
    }
    return {code: {"model": Problem, "description": words[code]} for code in (401, *codes)}
