"""Accounts on a real farm server joined to a real Ray cluster whose node declares 8 GPUs (Ray's
own logical GPUs: probe tasks hold them, none runs CUDA): tokens and who sees what, admission by
enrolment and quota, concurrency caps and GPU-hour quotas under racing submissions, holds when an
enrolment ends or a quota runs out, the ledger, and the admin CLI.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray.cluster_utils import Cluster

from tests.conftest import FarmServer

TODAY = dt.datetime.now(dt.UTC).date()
FINISHED = {"done", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": 8})
    try:
        data = tmp_path_factory.mktemp("accounts") / "data"
        farm = FarmServer(data, ray_address=cluster.address).start()
        yield farm
        farm.stop()
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def admin(server: FarmServer):
    with server.client() as client:
        yield client


def ok(response: httpx.Response, code: int = 200) -> Any:
    assert response.status_code == code, (response.status_code, response.text)
    return response.json()


def refused(response: httpx.Response, code: int, *words: str) -> str:
    assert response.status_code == code, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert "\n" not in detail, detail
    for word in words:
        assert word in detail, (word, detail)
    return detail


def enrolled(
    admin: httpx.Client,
    name: str,
    cohort: str = "c1",
    programme: str = "work40",
    role: str = "trainee",
    until: dt.date | None = None,
) -> str:
    """A user enrolled from a month ago until ``until`` (default: next month); their token."""
    ok(admin.post("/admin/users", json={"name": name, "role": role}), 201)
    enrol(admin, name, cohort, programme, until or TODAY + dt.timedelta(days=30))
    return ok(admin.post("/admin/tokens", json={"user": name}), 201)["token"]


def enrol(admin: httpx.Client, name: str, cohort: str, programme: str, until: dt.date) -> None:
    body = {
        "user": name,
        "programme": programme,
        "cohort": cohort,
        "from": (TODAY - dt.timedelta(days=30)).isoformat(),
        "until": until.isoformat(),
    }
    ok(admin.post("/admin/enrolments", json=body))


def policy(admin: httpx.Client, **fields: Any) -> None:
    ok(admin.put("/admin/policies", json=fields))


def probe(client: httpx.Client, **body: Any) -> int:
    return ok(client.post("/jobs/probe", json=body), 201)["id"]


def wait_for(client: httpx.Client, job: int, check, what: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        info = ok(client.get(f"/jobs/{job}"))
        if check(info):
            return info
        assert time.monotonic() < deadline, f"job {job} never {what}: {info}"
        time.sleep(0.1)


def finished(client: httpx.Client, job: int, timeout: float = 60) -> dict:
    return wait_for(client, job, lambda i: i["state"] in FINISHED, "finished", timeout)


# Tokens and who sees what.


def test_another_users_job_logs_outputs_and_controls_are_refused(server, admin):
    alice = server.client(enrolled(admin, "alice", cohort="sees"))
    bob = server.client(enrolled(admin, "bob", cohort="sees"))
    eve = server.client(enrolled(admin, "eve", cohort="other"))
    teacher = server.client(enrolled(admin, "teacher", cohort="sees", role="instructor"))
    job = probe(alice, tasks=1, seconds=2)

    for stranger in (bob, eve):
        for path in ("", "/tasks", "/logs", "/events", "/outputs", "/outputs/1"):
            refused(stranger.get(f"/jobs/{job}{path}"), 404, f"no job {job}")
        for verb in ("cancel", "pause", "resume", "retry"):
            refused(stranger.post(f"/jobs/{job}/{verb}"), 404, f"no job {job}")
        assert job not in [j["id"] for j in ok(stranger.get("/jobs"))]
    # The cohort's instructor reads it but may not change it.
    assert ok(teacher.get(f"/jobs/{job}"))["owner"] == "alice"
    assert job in [j["id"] for j in ok(teacher.get("/jobs"))]
    refused(teacher.post(f"/jobs/{job}/cancel"), 403, "belongs to alice")
    # Nobody's refusal changed it; its owner's cancel does.
    assert ok(alice.get(f"/jobs/{job}"))["state"] in ("queued", "running")
    assert ok(alice.post(f"/jobs/{job}/cancel"))["result"] == "cancelled"

    for client in (alice, teacher):
        refused(client.get("/admin/users"), 403, "only admins")
        refused(client.post("/admin/tokens", json={"user": "alice"}), 403, "only admins")
        refused(client.put("/admin/policies", json={"user": "alice"}), 403, "only admins")


def test_no_token_a_wrong_one_a_revoked_one_or_an_expired_one_is_a_401(server, admin):
    token = enrolled(admin, "carol")
    with httpx.Client(base_url=f"{server.url}/api/v1") as anonymous:
        refused(anonymous.get("/jobs"), 401, "needs a token", "FARM_TOKEN")
        assert anonymous.get("/health").status_code == 200  # the liveness check stays open
    refused(server.client("farm_not-a-real-token").get("/jobs"), 401, "not known")
    carol = server.client(token)
    assert ok(carol.get("/me"))["user"] == "carol"
    [row] = [t for t in ok(admin.get("/admin/tokens")) if t["user"] == "carol"]
    assert token not in json.dumps(row) and row["hint"].endswith("…")
    ok(admin.post(f"/admin/tokens/{row['id']}/revoke"))
    refused(carol.get("/me"), 401, "revoked")  # at once: the very next call

    short = ok(admin.post("/admin/tokens", json={"user": "carol", "days": 1e-5}), 201)["token"]
    time.sleep(1.2)
    refused(server.client(short).get("/me"), 401, "expired")
    fresh = ok(admin.post("/admin/tokens", json={"user": "carol"}), 201)["token"]
    ok(admin.post("/admin/users/carol/disable"))
    refused(server.client(fresh).get("/me"), 401, "disabled")


# Admission.


def test_submissions_beyond_the_enrolment_or_the_quota_are_refused_saying_why(server, admin):
    policy(admin, programme="culturepreneurs", max_priority=60, labs=["film"], max_gpus=1)
    dan = server.client(enrolled(admin, "dan", "c9", "culturepreneurs"))
    refused(dan.post("/jobs/probe", json={"priority": 70}), 400, "priority 70", "highest, 60")
    refused(dan.post("/jobs/probe", json={"gpus": 2, "cpus": 0.1}), 400, "labs film only", "--lab")
    policy(admin, programme="culturepreneurs", clear=["labs"])
    refused(dan.post("/jobs/probe", json={"gpus": 2, "cpus": 0.1}), 400, "2 GPUs", "1 at once")
    policy(admin, user="dan", gpu_hours=0.001)  # 3.6 GPU-seconds
    refused(
        dan.post("/jobs/probe", json={"gpus": 1, "cpus": 0.1, "seconds": 5}),
        400,
        "needs 0.00",
        "GPU-hours",
        "left in this week",
    )
    withdrawn = {"from": "2026-01-01", "until": "2026-06-30", "status": "withdrawn"}
    body = {"user": "dan", "programme": "culturepreneurs", "cohort": "c9", **withdrawn}
    ok(admin.post("/admin/enrolments", json=body))
    refused(dan.post("/jobs/probe", json={}), 400, "is withdrawn", "no new work")
    # Nothing refused was stored.
    assert ok(dan.get("/jobs")) == []


# Races, caps and quotas.

USERS, EACH = 10, 20
TASK_SECONDS = 0.5
# Ten tasks' booking (length + 5 % + 0.5 s, one GPU each): at most ten jobs a user fit.
QUOTA_HOURS = 10 * (TASK_SECONDS * 1.05 + 0.5) / 3600


def test_racing_submissions_never_exceed_a_gpu_cap_or_a_gpu_hour_quota(server, admin):
    policy(admin, programme="work40", cohort="race", max_gpus=2, gpu_hours=QUOTA_HOURS)
    tokens = {f"racer{i}": enrolled(admin, f"racer{i}", cohort="race") for i in range(USERS)}
    barrier = threading.Barrier(USERS * 2)
    answers: dict[str, list[httpx.Response]] = defaultdict(list)
    lock = threading.Lock()

    def submit(name: str) -> None:
        with server.client(tokens[name]) as client:
            barrier.wait()
            for _ in range(EACH // 2):
                body = {"tasks": 1, "seconds": TASK_SECONDS, "gpus": 1, "cpus": 0.1}
                response = client.post("/jobs/probe", json=body)
                with lock:
                    answers[name].append(response)

    threads = [threading.Thread(target=submit, args=(n,)) for n in tokens for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for name, responses in answers.items():
        assert len(responses) == EACH
        accepted = [r.json()["id"] for r in responses if r.status_code == 201]
        for response in responses:
            if response.status_code != 201:
                refused(response, 400, "GPU-hours", name)
        assert len(accepted) == 10, (name, [r.text for r in responses][:3])
        for job in accepted:
            assert finished(admin, job)["state"] == "done"
        # The cap: never more than 2 GPUs' attempts of the user at once (attempts hold 1 each).
        spans = sorted(
            (attempt["started_at"], attempt["ended_at"])
            for job in accepted
            for attempt in ok(admin.get(f"/jobs/{job}/logs"))
        )
        edges = sorted(
            [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1])
        )
        most = running = 0
        for _, step in edges:
            running += step
            most = max(most, running)
        assert most <= 2, (name, spans)
        used = ok(admin.get(f"/admin/standing/{name}"))
        assert 0 < used["gpu_hours_used"] <= QUOTA_HOURS, used


def test_one_user_alone_may_use_every_gpu(server, admin):
    solo = server.client(enrolled(admin, "solo", cohort="alone"))
    job = probe(solo, tasks=8, seconds=2, gpus=1, cpus=0.1)
    info = finished(admin, job)
    assert info["state"] == "done"
    starts = sorted(a["started_at"] for a in ok(admin.get(f"/jobs/{job}/logs")))
    ends = sorted(a["ended_at"] for a in ok(admin.get(f"/jobs/{job}/logs")))
    assert starts[-1] < ends[0], "all eight ran at once"


# Holds.


def test_an_enrolment_ending_mid_job_holds_the_rest_and_refuses_new_work(server, admin):
    frank = server.client(enrolled(admin, "frank", cohort="ending"))
    job = probe(frank, tasks=12, seconds=1, cpus=4)  # two at a time on the 8-CPU node
    wait_for(frank, job, lambda i: i["tasks"]["done"] >= 2, "ran two tasks")
    enrol(admin, "frank", "ending", "work40", TODAY - dt.timedelta(days=1))
    info = wait_for(frank, job, lambda i: i["state"] == "held", "held")
    assert "ended on" in info["message"], info
    time.sleep(2.5)  # the running ones finish; nothing else starts
    info = ok(frank.get(f"/jobs/{job}"))
    assert info["state"] == "held" and info["tasks"]["running"] == 0, info
    assert info["tasks"]["queued"] >= 4, info
    held_at = info["tasks"]["done"]
    refused(frank.post("/jobs/probe", json={}), 400, "ended on", "no new work")
    time.sleep(1.5)
    assert ok(frank.get(f"/jobs/{job}"))["tasks"]["done"] == held_at
    enrol(admin, "frank", "ending", "work40", TODAY + dt.timedelta(days=30))
    assert finished(frank, job)["state"] == "done"


def test_a_spent_quota_holds_queued_work_and_a_raised_one_releases_it(server, admin):
    grace = server.client(enrolled(admin, "grace", cohort="spent"))
    # 1.5 CPU-seconds: a 0.3 s task is booked at 0.815 s, so one runs at a time, and a task
    # starts only while what is left covers its booking: about three run, the rest are held.
    policy(admin, user="grace", cpu_hours=1.5 / 3600)
    job = probe(grace, tasks=5, seconds=0.3, cpus=1)
    info = wait_for(grace, job, lambda i: i["state"] == "held", "held", 30)
    assert "CPU-hours" in info["message"] and "grace" in info["message"], info
    time.sleep(1)
    info = ok(grace.get(f"/jobs/{job}"))
    done = info["tasks"]["done"]
    assert 1 <= done <= 4 and info["tasks"]["queued"] == 5 - done, info
    me = ok(grace.get("/me"))
    assert 0 < me["cpu_hours_used"] <= 1.5 / 3600, me  # never past the quota
    assert me["limits"]["cpu_hours"] == pytest.approx(1.5 / 3600), me
    policy(admin, user="grace", cpu_hours=1.0)
    assert finished(grace, job)["state"] == "done"


# The ledger.


def test_every_attempt_failed_ones_too_is_charged_its_wall_time_times_what_it_held(server, admin):
    heidi = server.client(enrolled(admin, "heidi", cohort="ledger"))
    job = probe(heidi, tasks=2, seconds=1, cpus=2, gpus=1, fail_first=1)
    assert finished(heidi, job)["state"] == "done"
    attempts = ok(heidi.get(f"/jobs/{job}/logs"))
    assert sorted(a["status"] for a in attempts) == ["done", "done", "failed", "failed"]
    [row] = [
        r for r in ok(admin.get("/admin/usage", params={"by": "user"})) if r["user"] == "heidi"
    ]
    assert row["attempts"] == 4 and row["jobs"] == 1, row
    # Each attempt slept 1 s holding 1 GPU and 2 CPUs: 4 GPU-seconds and 8 CPU-seconds at least,
    # and not much more (the probe's own start-up, Ray's hand-over).
    assert 4 / 3600 <= row["gpu_hours"] <= 4.8 / 3600, row
    assert row["cpu_hours"] == pytest.approx(2 * row["gpu_hours"], rel=1e-3), row
    cohorts = {r["cohort"]: r for r in ok(admin.get("/admin/usage", params={"by": "cohort"}))}
    assert cohorts["work40/ledger"]["attempts"] == 4


# The admin CLI.


def farm(args: list[str], server: FarmServer, tmp_path: Path, token: str | None = None):
    env = {
        **os.environ,
        "FARM_URL": server.url,
        "FARM_TOKEN": server.token if token is None else token,
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_roster_imports_idempotently_and_a_bad_row_writes_nothing(server, admin, tmp_path):
    good = tmp_path / "roster.csv"
    good.write_text(
        "user,programme,cohort,from,until,role\n"
        "ioana,culturepreneurs,cp-2026,2026-09-01,2027-06-30,trainee\n"
        "mihai,culturepreneurs,cp-2026,2026-09-01,2027-06-30,\n"
        "radu,work40,w40-a,2026-10-01,2027-03-31,instructor\n"
    )
    done = farm(["admin", "enrol", "import", str(good), "--json"], server, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"added": 3, "updated": 0, "unchanged": 0, "users_added": 3}
    done = farm(["admin", "enrol", "import", str(good), "--json"], server, tmp_path)
    assert json.loads(done.stdout) == {"added": 0, "updated": 0, "unchanged": 3, "users_added": 0}

    before = ok(admin.get("/admin/users"))
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "user,programme,cohort,from,until\n"
        "sorin,work40,w40-a,2026-10-01,2027-03-31\n"
        "ioana,culturepreneurs,cp-2026,2026-09-01,2027-07-31\n"
        "vlad,work40,w40-a,2026-10-01,31/03/2027\n"
    )
    done = farm(["admin", "enrol", "import", str(bad)], server, tmp_path)
    assert done.returncode == 2, done.stdout
    assert done.stderr.strip() == (
        "error: line 4: until '31/03/2027' is not a date like 2026-09-01"
    )
    assert ok(admin.get("/admin/users")) == before  # neither sorin nor ioana's new date
    huge_field = "user,programme,cohort,from,until\n" + "x" * 200_000  # past csv's field limit
    not_csv = admin.post("/admin/enrolments/import", json={"csv": huge_field})
    refused(not_csv, 400, "not CSV")
    refused(admin.post("/admin/enrolments/import", json={"csv": "\r0"}), 400, "line 1", "columns")


def test_the_admin_cli_makes_users_tokens_quotas_and_reads_usage(server, admin, tmp_path):
    done = farm(["admin", "user", "add", "judy", "--json"], server, tmp_path)
    assert done.returncode == 0, done.stderr
    done = farm(
        [
            "admin",
            "enrol",
            "judy",
            "--programme",
            "work40",
            "--cohort",
            "cli",
            "--from",
            str(TODAY),
            "--until",
            str(TODAY + dt.timedelta(days=7)),
        ],
        server,
        tmp_path,
    )
    assert done.returncode == 0 and "added" in done.stdout, done.stderr
    done = farm(["admin", "token", "create", "judy", "--json"], server, tmp_path)
    token = json.loads(done.stdout)["token"]
    assert token.startswith("farm_")
    done = farm(
        ["admin", "quota", "set", "--user", "judy", "--gpu-hours", "2", "--period", "month"],
        server,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr

    done = farm(["submit", "probe", "--tasks", "2", "--json"], server, tmp_path, token)
    job = json.loads(done.stdout)["id"]
    assert finished(admin, job)["state"] == "done"
    done = farm(["usage"], server, tmp_path, token)
    assert done.returncode == 0, done.stderr
    assert "judy (trainee)" in done.stdout and "GPU-hours: 0.000 used of 2" in done.stdout
    assert "period: month" in done.stdout

    done = farm(["admin", "usage", "--by", "cohort", "--csv", "--plot", "u.png"], server, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "cohort,gpu_hours,cpu_hours,attempts,jobs"
    assert any(line.startswith("work40/cli,") for line in lines), lines
    assert (tmp_path / "u.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # farm login keeps the token, readable by its owner only, for commands without FARM_TOKEN.
    done = farm(["login", server.url, "--token", token], server, tmp_path, "")
    assert done.returncode == 0, done.stderr
    assert "as judy (trainee)" in done.stdout
    saved = tmp_path / "config" / "farm" / "client.json"
    assert saved.stat().st_mode & 0o777 == 0o600
    done = farm(["usage", "--json"], server, tmp_path, "")
    assert json.loads(done.stdout)["user"] == "judy", done.stderr
    done = farm(["login", server.url, "--token", "farm_wrong"], server, tmp_path, "")
    assert done.returncode == 2 and "not known" in done.stderr, done.stderr

    done = farm(["admin", "user", "list"], server, tmp_path, token)
    assert done.returncode == 2 and "only admins" in done.stderr, done.stderr
    done = farm(["admin", "enrol", "judy", "--programme", "work40"], server, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: farm admin enrol judy needs --cohort, --from, --until"


# Outputs stay in the owner's folder.


def test_outputs_and_scenes_outside_the_users_folder_are_refused(server, admin, tmp_path):
    # The server's folder (store, uploads, every user's outputs) is the server's user's alone.
    assert server.data.stat().st_mode & 0o777 == 0o700
    kim = server.client(enrolled(admin, "kim", cohort="paths"))
    root = server.data / "outputs" / "kim"
    root.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    scene = root / "shot.blend"
    scene.write_bytes(b"not read before the refusal")
    for output in ("../bob/x_####.exr", str(outside / "x_####.exr"), "link/x_####.exr"):
        body = {"scene": str(scene), "output": output}
        refused(kim.post("/jobs/render", json=body), 403, "outside your folder", str(root))
    refused(kim.post("/jobs/render", json={"scene": str(tmp_path / "s.blend")}), 403, "scene")
    body = {"scene": str(scene), "allow_scripts": True}
    refused(kim.post("/jobs/render", json=body), 403, "scripts")
    assert ok(kim.get("/jobs")) == []
