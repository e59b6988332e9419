"""The farm's HTTP API against a real ``farm server`` process (its own Ray and store, no mocks):
fuzzed against its own OpenAPI spec, its refusals, what jobs do over it, many clients at once, and
the ``farm`` CLI as its client. Probe jobs stand in for renders: they need no Blender.

Schemathesis drives the fuzzing through its Python API (``APIOperation.as_strategy`` under a bounded
Hypothesis run) rather than ``schemathesis.pytest.from_fixture``, whose lazy parametrisation needs a
pytest internal (``Item._nodeid``) that pytest 9 no longer has.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from pydantic import ValidationError
from ray.cluster_utils import Cluster
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from farm.api.models import ProbeSubmission, TrainSubmission
from farm.api.server import join_ray
from tests.conftest import FarmServer, free_port

STATES = {"queued", "running", "paused", "held", "done", "failed", "cancelled"}
FINISHED = {"done", "failed", "cancelled"}
PREFIX = "/api/v1"


# Helpers: one client, and the few questions every test asks of a job.


@pytest.fixture(scope="module")
def api(farm_server) -> httpx.Client:
    with farm_server.client() as client:
        yield client


def submit_probe(api: httpx.Client, **body: Any) -> int:
    response = api.post("/jobs/probe", json=body)
    assert response.status_code == 201, response.text
    answer = response.json()
    assert answer["state"] == "queued" and isinstance(answer["id"], int), answer
    return answer["id"]


def status(api: httpx.Client, job: int) -> dict[str, Any]:
    response = api.get(f"/jobs/{job}")
    assert response.status_code == 200, response.text
    info = response.json()
    assert info["state"] in STATES, info
    assert set(info["tasks"]) == STATES and all(n >= 0 for n in info["tasks"].values()), info
    return info


def wait_until(
    api: httpx.Client,
    job: int,
    done: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        info = status(api, job)
        if done(info):
            return info
        assert time.monotonic() < deadline, f"job {job} never {what} in {timeout} s: {info}"
        time.sleep(0.05)


def finished(api: httpx.Client, job: int, timeout: float = 60.0) -> dict[str, Any]:
    return wait_until(api, job, lambda i: i["state"] in FINISHED, "finished", timeout)


def change(api: httpx.Client, job: int, verb: str, task: str | None = None) -> str:
    response = api.post(f"/jobs/{job}/{verb}", json={"task": task} if task else None)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def refusal(response: httpx.Response, code: int, *words: str) -> str:
    """Assert a clean refusal: ``code``, a JSON ``detail`` of one line naming every word."""
    assert response.status_code == code, (response.status_code, response.text[:500])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.strip(), detail
    assert "\n" not in detail and "\r" not in detail and len(detail) <= 1000, detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


def job_ids(api: httpx.Client) -> list[int]:
    response = api.get("/jobs", params={"limit": 10_000})
    assert response.status_code == 200, response.text
    return [job["id"] for job in response.json()]


# 1. Fuzzing against the spec. Every answer is below 500; every refusal a 4xx whose detail is one
# line; and every response fits the spec (status codes, content types, schemas), as schemathesis's
# own checks hold it. A valid request may still be refused (cancel of a finished job is a 400), so
# its "valid data must be accepted" check is left out.


@pytest.fixture(scope="module")
def farm_server(tmp_path_factory: pytest.TempPathFactory):
    """The module's farm server (and its own local Ray), started while another Ray cluster runs
    on this machine, as a ``ray start`` beside a server leaves one: the server must not join it
    (test_a_local_server_starts_its_own_ray_even_beside_another_cluster)."""
    beside = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # one node, no CPUs
    try:
        server = FarmServer(tmp_path_factory.mktemp("server") / "data").start()
    finally:
        beside.shutdown()
    yield server
    server.stop()


EXAMPLES = 15  # per operation and mode: about 400 requests, some 15 s


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )


def _check_answer(case: Any, response: Any) -> None:
    request = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.300}"
    assert response.status_code < 500, f"{request} → {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail.strip(), f"{request} → {response.text[:500]}"
        assert "\n" not in detail and "\r" not in detail, f"{request} → {detail!r}"
        assert len(detail) <= 1000, f"{request} → a detail of {len(detail)} characters"
    case.validate_response(response, excluded_checks=[positive_data_acceptance])


SUBMISSIONS = {"/api/v1/jobs/probe": ProbeSubmission, "/api/v1/jobs/train": TrainSubmission}
"""Submissions of real work the farm accepts whenever their body is valid (a training script is
checked only when it runs): with the fuzzer's own token, such a body would start work."""


def _refusable(operation: Any, case: Any) -> bool:
    """Whether a generated submission of real work is one the server must refuse, so that
    sending it costs nothing and stores nothing. A negative case may be invalid only in its
    ``Authorization`` header, which the fuzzer replaces with its own token: its valid body, or a
    probe the spec accepts that asks for a million tasks of a day each, would then be real work.
    Those few are skipped, never sent (the API's own model judges; probes the farm should run
    are fuzzed by the next test, kept cheap)."""
    model = SUBMISSIONS.get(operation.path)
    if model is None or not isinstance(case.body, dict):
        return True
    try:
        model.model_validate(case.body)
    except ValidationError:
        return True
    return False


def _fuzz(
    server: FarmServer, operation: Any, mode: GenerationMode, examples: int, **fixed: Any
) -> int:
    """Run ``examples`` generated requests of ``operation``; returns how many were sent."""
    sent = 0

    @_fuzz_settings(examples)
    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    def run(case: Any) -> None:
        nonlocal sent
        if not _refusable(operation, case):
            return
        # The admin's token, unless a negative case left the header out on purpose (a 401 then).
        generated = case.headers or {}
        auth = server.headers if mode.is_positive or "Authorization" in generated else None
        response = case.call(base_url=server.url, timeout=60, headers=auth)
        sent += 1
        _check_answer(case, response)

    try:
        run()
    except Unsatisfiable:  # nothing of this operation can be made invalid (no parameters)
        assert mode is GenerationMode.NEGATIVE
    return sent


def test_fuzzing_the_api_against_its_spec_finds_no_server_error(farm_server, api):
    # Two finished jobs for generated requests to act on: one done, one whose task failed (a retry
    # sends it round again, so cancel, pause and resume meet it in every state).
    done = submit_probe(api, tasks=1)
    failing = submit_probe(api, tasks=2, fail_first=9, retries=0)
    assert finished(api, done)["state"] == "done"
    assert finished(api, failing)["state"] == "failed"
    before = job_ids(api)

    # The fuzzer acts as an admin of its own, and may revoke only a spare token: revoking the
    # fixture's token or its own would turn every later request into a 401.
    spare = api.post("/admin/tokens", json={"user": "admin"}).json()["id"]
    assert api.post("/admin/users", json={"name": "fuzzer", "role": "admin"}).status_code == 201
    fuzzer = FarmServer(farm_server.data)
    fuzzer.url, fuzzer.token = (
        farm_server.url,
        api.post("/admin/tokens", json={"user": "fuzzer"}).json()["token"],
    )
    schema = schemathesis.openapi.from_url(farm_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /api/v1/jobs/probe", "GET /api/v1/jobs/{job_id}"} <= labels, labels
    assert len(operations) >= 12, labels
    sent = 0
    for operation in operations:
        for mode in GenerationMode:
            # Schema-valid probe and training submissions are real work that the farm accepts
            # (a training script is checked when it runs): the next test fuzzes probes, cheaply.
            if mode.is_positive and operation.path in SUBMISSIONS:
                continue
            fixed = (
                {"path_parameters": {"token_id": spare}} if "{token_id}" in operation.path else {}
            )
            sent += _fuzz(fuzzer, operation, mode, EXAMPLES, **fixed)
        if "{job_id}" in operation.path:  # and on jobs that exist, not only on unknown ids
            for job in (done, failing):
                fixed = {"path_parameters": {"job_id": job}}
                sent += _fuzz(fuzzer, operation, GenerationMode.POSITIVE, 10, **fixed)
    assert sent > 200, f"only {sent} requests were sent"

    # Refused submissions recorded nothing: the store holds exactly the jobs it held before.
    assert job_ids(api) == before
    # Whatever the generated commands left the failing job in, it can still be ended cleanly.
    if status(api, failing)["state"] not in FINISHED:
        api.post(f"/jobs/{failing}/cancel")
    info = finished(api, failing)
    events = [
        (e["kind"], e["task"], e["message"]) for e in api.get(f"/jobs/{failing}/events").json()
    ]
    assert info["tasks"]["running"] == info["tasks"]["queued"] == 0, json.dumps(
        [info, events], indent=1
    )


def _largest_node_cpus(api: httpx.Client) -> float:
    nodes = api.get("/nodes").json()
    return max(node["cpus"] for node in nodes if node["alive"])


@st.composite
def probe_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Schema-valid probe submissions that are cheap to run: a few short tasks."""
    optional = {
        "priority": st.integers(0, 100),
        "seconds": st.floats(0, 0.05),
        "cpus": st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 64.0]),
        "fail_first": st.integers(0, 1),
        "retries": st.integers(1, 3),
    }
    return draw(st.fixed_dictionaries({"tasks": st.integers(1, 3)}, optional=optional))


def test_valid_probe_submissions_run_or_are_refused_naming_the_cpus(api):
    largest = _largest_node_cpus(api)

    @settings(
        max_examples=12, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(body=probe_bodies())
    def run(body: dict[str, Any]) -> None:
        response = api.post("/jobs/probe", json=body)
        if body.get("cpus", 1.0) > largest:
            refusal(response, 400, f"no node has {body['cpus']:g} CPUs", f"{largest:g} CPUs")
            return
        assert response.status_code == 201, (body, response.text)
        job = response.json()["id"]
        info = finished(api, job)
        assert info["state"] == "done", (body, info)
        assert info["tasks"]["done"] == body["tasks"] == sum(info["tasks"].values()), info
        assert info["priority"] == body.get("priority", 50), info
        assert info["owner"] == "admin", info

    run()


# 2. Refusals: the status code and the one line a user reads.


@pytest.fixture(scope="module")
def done_job(api) -> int:
    job = submit_probe(api, tasks=1)
    assert finished(api, job)["state"] == "done"
    return job


UNKNOWN = 987_654_321


BAD_PROBES = [
    ({"tasks": 1, "colour": "red"}, ["colour", "Extra inputs are not permitted"]),
    ({"tasks": -1}, ["tasks", "greater than or equal to 1"]),
    ({"seconds": -0.5}, ["seconds", "greater than or equal to 0"]),
    ({"priority": -5}, ["priority", "greater than or equal to 0"]),
    ({"priority": 101}, ["priority", "less than or equal to 100"]),
    ({"tasks": 1_000_001}, ["tasks", "less than or equal to 1000000"]),
    ({"retries": -1}, ["retries", "greater than or equal to 0"]),
    ({"after": [-3]}, ["after.0", "greater than or equal to 1"]),
    ({"tasks": "3"}, ["tasks", "valid integer"]),
    ({"tasks": True}, ["tasks", "valid integer"]),
    ({"tasks": 1.5}, ["tasks", "valid integer"]),
    ({"seconds": "1"}, ["seconds", "valid number"]),
    ({"after": 3}, ["after", "valid list"]),
    ({"after": ["x"]}, ["after.0", "valid integer"]),
    (["tasks", 1], ["request body must be a JSON object"]),
    ({"seconds": float("nan")}, ["seconds"]),
]


@pytest.mark.parametrize(("body", "words"), BAD_PROBES, ids=[json.dumps(b) for b, _ in BAD_PROBES])
def test_a_bad_probe_submission_is_refused_with_422_naming_the_field(api, body, words):
    before = job_ids(api)
    response = api.post(
        "/jobs/probe", content=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    refusal(response, 422, *words)
    assert job_ids(api) == before  # nothing recorded


def test_bodies_that_are_not_json_objects_are_refused_in_one_line(api):
    response = api.post("/jobs/probe")
    refusal(response, 422, "request body is missing")
    response = api.post(
        "/jobs/probe", content=b"{tasks: 3", headers={"Content-Type": "application/json"}
    )
    refusal(response, 422, "not valid JSON")
    response = api.post(
        "/jobs/probe", content=b'{"tasks": 3}', headers={"Content-Type": "text/plain"}
    )
    refusal(response, 422, "JSON object")


def test_a_huge_scene_path_is_refused_quickly_without_echoing_it(api):
    scene = "/renders/" + "x" * 100_000 + ".blend"
    started = time.monotonic()
    response = api.post("/jobs/render", json={"scene": scene})
    detail = refusal(response, 422, "scene", "at most 4096 characters")
    assert len(detail) < 200
    assert time.monotonic() - started < 10
    response = api.post("/jobs/render", json={"scene": 42})
    refusal(response, 422, "scene", "valid string")


def test_a_render_of_a_missing_scene_is_refused_naming_the_file(api, tmp_path):
    before = job_ids(api)
    missing = tmp_path / "missing.blend"
    refusal(
        api.post("/jobs/render", json={"scene": str(missing)}), 400, str(missing), "does not exist"
    )
    not_blend = tmp_path / "notes.blend"
    not_blend.write_text("not a scene")
    refusal(
        api.post("/jobs/render", json={"scene": str(not_blend)}), 400, "not a Blender .blend file"
    )
    response = api.post("/jobs/render", json={"scene": "~nosuchuser123/shot.blend"})
    refusal(response, 400, "~nosuchuser123", "no user's home folder")
    response = api.post("/jobs/render", json={"scene": "shot\nrm -rf.blend"})
    refusal(response, 400, "does not exist")  # one line even when the path is not
    assert job_ids(api) == before


@pytest.mark.parametrize("job", [UNKNOWN, 0, -3, 10**30])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs/{}"),
        ("GET", "/jobs/{}/tasks"),
        ("GET", "/jobs/{}/logs"),
        ("GET", "/jobs/{}/events"),
        ("POST", "/jobs/{}/cancel"),
        ("POST", "/jobs/{}/pause"),
        ("POST", "/jobs/{}/resume"),
        ("POST", "/jobs/{}/retry"),
    ],
)
def test_an_unknown_job_is_a_404_naming_it(api, method, path, job):
    response = api.request(method, path.format(job))
    assert refusal(response, 404) == f"no job {job}"


def test_a_query_parameter_given_twice_is_a_422(api, done_job):
    response = api.get(f"/jobs/{done_job}/logs", params=[("task", "p0"), ("task", "p1")])
    refusal(response, 422, "task: query parameter given more than once")


def test_a_job_id_that_is_not_a_number_is_a_422(api):
    refusal(api.get("/jobs/abc"), 422, "job_id", "valid integer")
    refusal(api.post("/jobs/1.5/cancel"), 422, "job_id", "valid integer")


def test_changing_a_finished_job_is_refused(api, done_job):
    for verb in ("cancel", "pause", "resume"):
        refusal(api.post(f"/jobs/{done_job}/{verb}"), 400, f"job {done_job} is done")
    refusal(api.post(f"/jobs/{done_job}/retry"), 400, "no failed or cancelled tasks")
    refusal(api.post(f"/jobs/{done_job}/retry", json={"task": "p7"}), 400, "has no task 'p7'")
    refusal(api.post(f"/jobs/{done_job}/cancel", json={"task": 3}), 422, "task", "valid string")
    refusal(api.get(f"/jobs/{done_job}/logs", params={"task": "nope"}), 400, "no task 'nope'")
    assert status(api, done_job)["state"] == "done"


def test_work_no_node_can_run_is_refused_naming_it(api):
    largest = _largest_node_cpus(api)
    before = job_ids(api)
    response = api.post("/jobs/probe", json={"tasks": 1, "cpus": 512})
    refusal(response, 400, "no node has 512 CPUs", f"the largest has {largest:g} CPUs")
    response = api.post("/jobs/probe", json={"tasks": 1, "gpus": 4})
    refusal(response, 400, "4 GPUs", "most GPUs on one node is 0")
    response = api.post("/jobs/probe", json={"tasks": 1, "memory": 2**45})
    refusal(response, 400, "no node has 3.28e+04 GiB of memory for Ray")
    assert job_ids(api) == before


def test_a_probe_that_reserves_memory_runs_holding_it(api):
    job = submit_probe(api, tasks=2, memory=64 * 2**20)
    assert finished(api, job)["state"] == "done"
    logs = api.get(f"/jobs/{job}/logs").json()
    assert [(a["status"], a["resources"]) for a in logs] == [
        ("done", {"CPU": 1.0, "memory": 64.0 * 2**20})
    ] * 2


def test_after_a_missing_job_is_refused(api, done_job):
    before = job_ids(api)
    response = api.post("/jobs/probe", json={"tasks": 1, "after": [done_job, UNKNOWN]})
    refusal(response, 400, str(UNKNOWN), "no such job")
    assert job_ids(api) == before


# 3. What jobs do over the API.


def test_submit_answers_at_once_and_status_counts_the_tasks(api):
    started = time.monotonic()
    job = submit_probe(api, tasks=3, seconds=0.3)
    assert time.monotonic() - started < 5, "a submission waits for nothing but the store"
    info = status(api, job)
    assert info["id"] == job and info["kind"] == "probe" and info["state"] in STATES
    assert sum(info["tasks"].values()) == 3, info
    tasks = api.get(f"/jobs/{job}/tasks").json()
    assert [t["task"] for t in tasks] == ["p0", "p1", "p2"], tasks
    info = finished(api, job)
    assert info["state"] == "done" and info["tasks"]["done"] == 3, info
    assert info["started_at"] and info["ended_at"] and info["submitted_at"] <= info["ended_at"]
    assert any(job_["id"] == job for job_ in api.get("/jobs").json())
    logs = api.get(f"/jobs/{job}/logs").json()
    assert sorted((a["task"], a["status"]) for a in logs) == [(f"p{i}", "done") for i in range(3)]
    assert all(a["node"] for a in logs), logs


def _event_ids(api: httpx.Client, job: int, kind: str) -> list[int]:
    events = api.get(f"/jobs/{job}/events").json()
    return [e["id"] for e in events if e["kind"] == kind and e["task"] is None]


def test_a_dependent_job_is_held_until_its_dependency_is_done(api):
    first = submit_probe(api, tasks=2, seconds=1)
    second = submit_probe(api, tasks=1, after=[first])
    held = wait_until(api, second, lambda i: i["state"] == "held", "held", timeout=10)
    assert held["after"] == [first] and f"waiting for job {first}" in held["message"], held
    assert status(api, first)["state"] in ("queued", "running"), "held only while it runs"
    assert held["tasks"]["running"] == held["tasks"]["done"] == 0, held
    assert finished(api, first)["state"] == "done"
    info = finished(api, second)
    assert info["state"] == "done" and info["tasks"]["done"] == 1, info
    # Event ids are the farm's one clock: the second job ran only after the first was done.
    (first_done,) = _event_ids(api, first, "done")
    (second_ran,) = _event_ids(api, second, "running")
    assert first_done < second_ran, (first_done, second_ran)
    # A dependency already done holds nothing.
    third = submit_probe(api, tasks=1, after=[first])
    assert finished(api, third)["state"] == "done"
    assert _event_ids(api, third, "held") == []


def test_a_job_after_a_failed_one_stays_held_saying_why_and_runs_once_it_is_retried(api):
    first = submit_probe(api, tasks=1, fail_first=1, retries=0)
    second = submit_probe(api, tasks=1, after=[first])
    assert finished(api, first)["state"] == "failed"
    held = wait_until(api, second, lambda i: "retried and done" in i["message"], "why", timeout=10)
    assert held["state"] == "held" and f"job {first} ended failed" in held["message"], held
    assert change(api, first, "retry") == "1 task(s) queued again"
    assert finished(api, first)["state"] == "done"
    assert finished(api, second)["state"] == "done"


def test_pause_holds_queued_tasks_while_running_ones_finish_and_resume_finishes(api):
    job = submit_probe(api, tasks=8, seconds=0.5)
    wait_until(api, job, lambda i: i["tasks"]["running"] > 0, "running", timeout=20)
    assert change(api, job, "pause") == "paused"
    paused = status(api, job)
    assert paused["state"] == "paused" and paused["tasks"]["queued"] == 0, paused
    assert paused["tasks"]["paused"] > 0, paused
    settled = wait_until(api, job, lambda i: i["tasks"]["running"] == 0, "settled", timeout=20)
    assert settled["state"] == "paused", settled
    time.sleep(1.0)  # nothing starts while paused
    still = status(api, job)
    assert still["tasks"] == settled["tasks"] and still["state"] == "paused", (settled, still)
    assert still["tasks"]["paused"] + still["tasks"]["done"] == 8, still
    refusal(api.post(f"/jobs/{job}/pause"), 400, "already paused")
    assert change(api, job, "resume") == "queued"
    info = finished(api, job)
    assert info["state"] == "done" and info["tasks"]["done"] == 8, info


def test_cancel_of_a_running_job_stops_it_and_leaves_nothing_queued_or_running(api):
    job = submit_probe(api, tasks=20, seconds=1)
    wait_until(api, job, lambda i: i["tasks"]["running"] > 0, "running", timeout=20)
    started = time.monotonic()
    assert change(api, job, "cancel") == "cancelled"
    assert status(api, job)["state"] == "cancelled"
    info = wait_until(api, job, lambda i: i["tasks"]["running"] == 0, "stopped", timeout=15)
    assert time.monotonic() - started < 10, "running attempts are stopped, not waited for"
    tasks = info["tasks"]
    assert tasks["queued"] == tasks["paused"] == tasks["held"] == tasks["failed"] == 0, info
    assert tasks["cancelled"] + tasks["done"] == 20 and tasks["cancelled"] >= 16, info
    time.sleep(1.0)
    assert status(api, job)["tasks"] == tasks, "nothing ran after the cancel"
    assert info["state"] == "cancelled" and info["ended_at"], info
    refusal(api.post(f"/jobs/{job}/cancel"), 400, f"job {job} is cancelled")


def test_retry_requeues_failed_tasks_and_the_job_finishes_done(api):
    job = submit_probe(api, tasks=2, fail_first=2, retries=1)
    info = finished(api, job)
    assert info["state"] == "failed" and info["tasks"]["failed"] == 2, info
    assert info["message"] == "2 of 2 tasks failed", info
    logs = api.get(f"/jobs/{job}/logs").json()
    assert sorted((a["task"], a["attempt"], a["status"]) for a in logs) == [
        (t, n, "failed") for t in ("p0", "p1") for n in (1, 2)
    ]
    assert "probe failed on purpose (attempt 1 of 2)" in logs[0]["error"], logs[0]
    assert change(api, job, "retry") == "2 task(s) queued again"
    info = finished(api, job)
    assert info["state"] == "done" and info["tasks"]["done"] == 2, info
    logs = api.get(f"/jobs/{job}/logs").json()
    assert sorted((a["task"], a["attempt"], a["status"]) for a in logs if a["attempt"] == 3) == [
        ("p0", 3, "done"),
        ("p1", 3, "done"),
    ]
    events = [(e["kind"], e["message"]) for e in api.get(f"/jobs/{job}/events").json()]
    job_events = [e for e in api.get(f"/jobs/{job}/events").json() if e["task"] is None]
    assert [e["kind"] for e in job_events] == ["running", "failed", "queued", "running", "done"]
    assert ("queued", "retried") in events and ("retry", "") not in events, events


def test_retry_of_a_finished_job_gives_each_task_its_retries_again(api):
    # fail_first=3, retries=1: attempts 1 and 2 fail (failed); after the retry, attempt 3 fails and
    # is retried, attempt 4 succeeds, as `farm retry` promises ("earlier failures no longer count").
    job = submit_probe(api, tasks=1, fail_first=3, retries=1)
    assert finished(api, job)["state"] == "failed"
    assert change(api, job, "retry") == "1 task(s) queued again"
    info = finished(api, job)
    attempts = [(a["attempt"], a["status"]) for a in api.get(f"/jobs/{job}/logs").json()]
    assert info["state"] == "done", (info, attempts)
    assert attempts == [(1, "failed"), (2, "failed"), (3, "failed"), (4, "done")], attempts


def test_a_higher_priority_job_starts_before_an_earlier_lower_one(api):
    low = submit_probe(api, tasks=10, seconds=0.5, priority=10)
    wait_until(api, low, lambda i: i["tasks"]["running"] > 0, "running", timeout=20)
    high = submit_probe(api, tasks=2, seconds=0.1, priority=90)
    done = finished(api, high)
    low_then = status(api, low)
    assert done["state"] == "done", done
    # In submission order the high job would wait until every low task had started.
    assert low_then["tasks"]["queued"] > 0, (done, low_then)
    assert low_then["state"] == "running", low_then
    low_done = finished(api, low)
    assert low_done["state"] == "done" and done["ended_at"] <= low_done["ended_at"]
    (high_ran,) = _event_ids(api, high, "running")
    (low_done_event,) = _event_ids(api, low, "done")
    assert high_ran < low_done_event


# 4. Many clients at once.

CLIENTS = 20
EACH = 10


def test_many_clients_submitting_at_once_lose_nothing(farm_server, api):
    barrier = threading.Barrier(CLIENTS)
    answers: list[tuple[int, Any]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with farm_server.client() as http:
            barrier.wait()
            for _ in range(EACH):
                try:
                    response = http.post("/jobs/probe", json={"tasks": 1, "seconds": 0})
                except httpx.HTTPError as error:  # a dropped or refused connection
                    with lock:
                        errors.append(repr(error))
                    continue
                with lock:
                    answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:5]
    assert len(answers) == CLIENTS * EACH
    for code, body in answers:
        assert code == 201 or (400 <= code < 500 and "\n" not in body["detail"]), (code, body)
    accepted = [body["id"] for code, body in answers if code == 201]
    assert len(accepted) == len(set(accepted)), "ids are unique"
    assert len(accepted) == CLIENTS * EACH, [a for a in answers if a[0] != 201][:5]

    deadline = time.monotonic() + 90
    while True:
        jobs = {j["id"]: j for j in api.get("/jobs", params={"limit": 10_000}).json()}
        missing = [i for i in accepted if i not in jobs]
        assert not missing, f"accepted but not stored: {missing[:10]}"
        waiting = [i for i in accepted if jobs[i]["state"] != "done"]
        if not waiting:
            break
        assert time.monotonic() < deadline, f"{len(waiting)} jobs never finished: {waiting[:10]}"
        time.sleep(0.2)
    assert all(jobs[i]["tasks"]["done"] == 1 for i in accepted)


# 5. The CLI as the server's client.


def farm(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """No saved login (a temp XDG_CONFIG_HOME) and an empty embedded store."""
    env = {k: v for k, v in os.environ.items() if k not in ("FARM_URL", "RAY_ADDRESS")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["FARM_HOME"] = str(tmp_path / "farm-home")
    return env


def test_the_cli_submits_watches_and_controls_jobs_on_the_server(farm_server, cli_env, tmp_path):
    env = {**cli_env, "FARM_URL": farm_server.url, "FARM_TOKEN": farm_server.token}
    done = farm(["submit", "probe", "--tasks", "3", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)["id"]
    assert isinstance(job, int)

    done = farm(["watch", str(job)], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"job {job}: done" in done.stderr

    done = farm(["status", str(job), "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["id"] == job and info["state"] == "done" and info["state"] in STATES, info
    assert info["tasks"] == {**dict.fromkeys(STATES, 0), "done": 3}, info

    done = farm(["cancel", str(job)], env, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"job {job} is done" in one_error_line(done)

    done = farm(["submit", "render", "~nosuchuser123/shot.blend"], env, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "~nosuchuser123 is no user's home folder" in one_error_line(done)

    done = farm(["nodes", "--json"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    nodes = json.loads(done.stdout)
    assert len(nodes) == 1 and nodes[0]["alive"] and nodes[0]["cpus"] >= 1, nodes


def test_the_cli_without_a_server_says_it_needs_one(cli_env, tmp_path):
    done = farm(["cancel", "1"], cli_env, tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    line = one_error_line(done)
    assert "farm cancel needs a farm server" in line and "FARM_URL" in line, line


# 6. The server's own Ray.


def test_a_local_server_starts_its_own_ray_even_beside_another_cluster(farm_server):
    """``farm server --ray-address local`` (what the fixture runs) must not join the cluster this
    machine last started: ``ray.init()`` with no address does (/tmp/ray/ray_current_cluster), so a
    server beside a ``ray start`` or a test's ``Cluster`` ran its work there and died with it. The
    module's server was started beside a cluster of one node with no CPUs, since shut down."""
    with farm_server.client() as http:
        nodes = http.get("/nodes").json()
    assert len(nodes) == 1 and nodes[0]["cpus"] >= 1, nodes  # its own Ray has this machine's CPUs


def test_auto_beside_a_dead_heads_address_file_says_so_and_uses_a_local_ray(
    ray_local, tmp_path, monkeypatch
):
    """A head whose Ray died without cleaning up leaves its address in ray_current_cluster:
    ``farm server --ray-address auto`` must not wait on it (``ray.init`` would, for minutes), but
    say so and start a Ray of its own (here, this worker's own is already up)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    try:
        (ray_tmp / "ray").mkdir()
        dead = f"127.0.0.1:{free_port()}"  # nothing listens there
        (ray_tmp / "ray" / "ray_current_cluster").write_text(dead)
        monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        started = time.monotonic()
        joined = join_ray("auto")
        assert time.monotonic() - started < 5
        cluster_file = ray_tmp / "ray" / "ray_current_cluster"
        assert joined == (
            f"a local Ray started by the server: the cluster in {cluster_file}, {dead}, "
            "is not running"
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
