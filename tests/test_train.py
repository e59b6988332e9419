"""Training runs on Ray Train, for real, through the ``farm`` CLI or a real farm server: scripts
that cannot run, a cancelled run resumed, a run past its time limit. (Two DDP workers, one killed
mid-run, resuming from the checkpoint the server kept: tests/test_lab_machines.py, on a lab.)"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, FarmServer

DIGITS = ROOT / "examples" / "train_digits.py"
STEPS_ALONE = 47  # one worker: all 1,500 digits a epoch


def farm(args: list[str], home: Path, **extra: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FARM_URL", "RAY_ADDRESS")}
    env.update(FARM_HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), **extra)
    return subprocess.Popen(
        [sys.executable, "-m", "farm", *args],
        env=env,
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"farm train did not finish in {timeout} s:\n{err[-3000:]}") from None
    return process.returncode, out, err


def _train_workers(farm_pid: int) -> list[psutil.Process]:
    """Ray Train's worker processes (Ray titles each after its actor class) under the farm process
    ``farm_pid`` (whose Ray is its own child): never another test's, running beside."""
    found = []
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in psutil.Process(farm_pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "RayTrainWorker" in " ".join(process.cmdline()):
                    found.append(process)
    return found


BAD_SCRIPTS = {
    "syntax": ("def train_loop_per_worker(config)\n    pass\n", "SyntaxError"),
    "no_entry": ("def train(config):\n    pass\n", "defines no train_loop_per_worker(config)"),
    "raises": (
        "import ray.train\n\n"
        "def train_loop_per_worker(config):\n"
        "    for epoch in range(5):\n"
        "        if epoch == 2:\n"
        "            raise ValueError('the data ran out in epoch 2')\n"
        "        ray.train.report({'epoch': epoch, 'loss': 1.0 / (epoch + 1)})\n",
        "ValueError: the data ran out in epoch 2",
    ),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    farm_server = FarmServer(tmp_path_factory.mktemp("train") / "data").start()
    yield farm_server
    farm_server.stop()


def test_scripts_that_cannot_run_fail_with_their_traceback_and_the_farm_keeps_serving(
    server, tmp_path
):
    api = server.client()
    jobs = {}
    for name, (source, _) in BAD_SCRIPTS.items():
        body = {"script": f"{name}.py", "source": source, "max_failures": 0}
        response = api.post("/jobs/train", json=body)
        assert response.status_code == 201, response.text
        jobs[name] = response.json()["id"]
    for name, job in jobs.items():
        deadline = time.monotonic() + 120
        while (info := api.get(f"/jobs/{job}").json())["state"] not in ("done", "failed"):
            assert time.monotonic() < deadline, info
            time.sleep(0.3)
        assert info["state"] == "failed", (name, info)
        assert info["message"].startswith("the run failed: "), info
        if name != "no_entry":  # its status names the script's own error
            assert BAD_SCRIPTS[name][1].split(":")[0] in info["message"], info
        [attempt] = api.get(f"/jobs/{job}/logs").json()
        expected = BAD_SCRIPTS[name][1]
        assert attempt["status"] == "failed" and expected in attempt["log"], (name, attempt)
        if name != "no_entry":
            assert "Traceback" in attempt["log"] and f"{name}.py" in attempt["log"], attempt
    # The raising script reported its first two epochs before it failed.
    assert [r["epoch"] for r in api.get(f"/jobs/{jobs['raises']}/metrics").json()] == [0, 1]
    # And the farm goes on serving.
    probe = api.post("/jobs/probe", json={"tasks": 2}).json()["id"]
    deadline = time.monotonic() + 60
    while api.get(f"/jobs/{probe}").json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.2)


def _wait_state(api, job: int, states: set[str], timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while (info := api.get(f"/jobs/{job}").json())["state"] not in states:
        assert time.monotonic() < deadline, info
        time.sleep(0.3)
    return info


def test_a_cancelled_run_resumes_from_its_latest_checkpoint_and_each_attempt_is_charged(server):
    admin = server.client()
    assert admin.post("/admin/users", json={"name": "ml"}).status_code == 201
    enrolment = {"programme": "work40", "cohort": "w1", "from": "2026-01-01", "until": "2099-01-01"}
    assert admin.post("/admin/enrolments", json={"user": "ml", **enrolment}).status_code == 200
    api = server.client(admin.post("/admin/tokens", json={"user": "ml"}).json()["token"])
    config = {"epochs": 4, "seconds_per_epoch": 1.5}
    body = {"script": "train_digits.py", "source": DIGITS.read_text(), "config": config}
    job = api.post("/jobs/train", json=body).json()["id"]
    deadline = time.monotonic() + 180
    while len(api.get(f"/jobs/{job}/metrics").json()) < 2:
        assert time.monotonic() < deadline, api.get(f"/jobs/{job}").json()
        time.sleep(0.3)
    assert api.post(f"/jobs/{job}/cancel").json()["result"] == "cancelled"
    _wait_state(api, job, {"cancelled"})
    deadline = time.monotonic() + 30
    assert server.process is not None
    while _train_workers(server.process.pid):  # the run's workers die with its launcher
        assert time.monotonic() < deadline, "Ray Train workers outlived the cancel"
        time.sleep(0.5)
    before = api.get(f"/jobs/{job}/metrics").json()
    # The attempt's end may be recorded a moment after its workers die: until then a retry is
    # refused, saying why.
    while (retried := api.post(f"/jobs/{job}/retry")).status_code != 200:
        assert "still stopping its cancelled tasks" in retried.json()["detail"], retried.json()
        assert time.monotonic() < deadline, api.get(f"/jobs/{job}/tasks").json()
        time.sleep(0.2)
    assert "queued again" in retried.json()["result"]
    assert _wait_state(api, job, {"done", "failed"})["state"] == "done"
    rows = api.get(f"/jobs/{job}/metrics").json()
    assert rows[: len(before)] == before
    after = rows[len(before) :]
    assert after and after[0]["epoch"] == before[-1]["epoch"] + 1, rows  # not from epoch 0
    assert [r["step"] for r in rows] == [STEPS_ALONE * (r["epoch"] + 1) for r in rows]
    assert rows[-1]["epoch"] == 3

    # The ledger: each attempt (the cancelled one too) is 1 worker × 1 CPU × its wall time.
    attempts = api.get(f"/jobs/{job}/logs").json()
    assert [a["status"] for a in attempts] == ["cancelled", "done"], attempts
    assert all(a["resources"] == {"CPU": 1.0} for a in attempts), attempts
    walls = sum(_seconds(a["ended_at"]) - _seconds(a["started_at"]) for a in attempts)
    usage = {r["user"]: r for r in admin.get("/admin/usage").json()}["ml"]
    assert usage["gpu_hours"] == 0 and usage["attempts"] == 2, usage
    assert abs(usage["cpu_hours"] * 3600 - walls) <= 2 * 1.0, (usage, walls)


def test_a_run_past_its_max_hours_is_stopped_and_fails_saying_so(server):
    api = server.client()
    config = {"epochs": 100, "seconds_per_epoch": 2}
    body = {
        "script": "train_digits.py",
        "source": DIGITS.read_text(),
        "config": config,
        "max_hours": 8 / 3600,
    }
    job = api.post("/jobs/train", json=body).json()["id"]
    info = _wait_state(api, job, {"done", "failed", "cancelled"}, timeout=120)
    assert info["state"] == "failed", info
    assert "went past its --max-hours" in info["message"], info
    [attempt] = api.get(f"/jobs/{job}/logs").json()
    assert "went past its --max-hours" in attempt["error"], attempt
    assert 8 <= _seconds(attempt["ended_at"]) - _seconds(attempt["started_at"]) <= 8 + 12, attempt


def _seconds(iso: str) -> float:
    """An API time (ISO 8601, to the second) as epoch seconds."""
    return dt.datetime.fromisoformat(iso).timestamp()
