"""The ``farm`` command as a user meets it: help, one-line refusals with exit code 2, JSON summaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import OpenImageIO as oiio
import psutil
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.exc import OperationalError

from farm.store.tables import Task


def farm(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "farm", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(autouse=True)
def farm_home(tmp_path_factory, monkeypatch) -> Path:
    """Every command's store lives in a folder of the test's own, never in the repository."""
    home = tmp_path_factory.mktemp("farm-home")
    monkeypatch.setenv("FARM_HOME", str(home))
    return home


def test_help_names_the_commands_and_options() -> None:
    top = farm("--help")
    assert top.returncode == 0 and "render" in top.stdout and "demo" in top.stdout
    render = farm("render", "--help")
    for option in ("--frames", "--tiles", "--overscan", "--output", "--chunk", "--json", "--slots"):
        assert option in render.stdout


@pytest.fixture(scope="module")
def scene(make_scene) -> Path:
    return make_scene(64, 36, samples=2, frames=4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.blend"], "scene file missing.blend does not exist"),
        (["{notblend}"], "is not a Blender .blend file"),
        (["{corrupt}"], "Blender could not open"),
        (["{scene}", "--frames", ""], "--frames is empty"),
        (["{scene}", "--frames", "10-1"], "runs backwards"),
        (["{scene}", "--frames", "one-two"], "cannot read"),
        (["{scene}", "--overscan", "-4"], "--overscan must be at least 0"),
        (["{scene}", "--frames", "1-3", "-o", "{out}/still.exr"], "has no # for the frame number"),
        (["{scene}", "-o", "{blocker}/sub/f_####.exr"], "cannot be created"),
        (["{scene}", "--tiles", "lots"], "--tiles 'lots'"),
        (["{scene}", "--samples", "many"], "'many' is not a valid integer"),
        (
            ["{scene}", "--frames", "1", "--tiles", "65x2"],
            "more tiles than the 64x36 frame has pixels",
        ),
        (["{scene}", "--slots", "64", "--threads", "64"], "need 4096 CPUs"),
        (["{scene}", "--device", "OPTIX"], "needs one GPU per slot"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(scene, tmp_path, args, message) -> None:
    notblend = tmp_path / "notes.blend"
    notblend.write_text("not a scene")
    corrupt = tmp_path / "notes.blend1"  # a .blend's header, then nothing Blender can read
    corrupt.write_bytes(b"BLENDER-v304" + bytes(300))
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    out = tmp_path / "out"
    values = {
        "scene": scene,
        "notblend": notblend,
        "corrupt": corrupt,
        "out": out,
        "blocker": blocker,
    }
    result = (
        farm(
            "render",
            *[a.format(**values) for a in args],
            "-o",
            str(out / "f_####.exr"),
            cwd=tmp_path,
        )
        if "-o" not in args
        else farm("render", *[a.format(**values) for a in args], cwd=tmp_path)
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "notes.blend", "notes.blend1"]
    if message in ("Blender could not open", "more tiles than the 64x36 frame has pixels"):
        # Refused once Blender had the scene: the job is in the store, failed with the reason.
        jobs = json.loads(farm("jobs", "--json").stdout)
        assert [j["state"] for j in jobs] == ["failed"]
        assert message in farm("status", str(jobs[0]["id"])).stdout
    else:  # refused before the job was stored: nothing recorded
        assert not (Path(os.environ["FARM_HOME"]) / "farm.db").exists()


def test_the_demo_finds_the_example_builder() -> None:
    """``farm demo`` builds the example shot from the repository's own builder script."""
    from farm.cli.main import EXAMPLE_BUILDER

    assert EXAMPLE_BUILDER.is_file(), EXAMPLE_BUILDER


def test_jobs_and_status_before_any_job() -> None:
    assert farm("jobs").stdout.strip() == "no jobs yet"
    assert json.loads(farm("jobs", "--json").stdout) == []
    missing = farm("status", "1")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no job 1"


def test_a_farm_without_the_training_extra_says_how_to_install_it(tmp_path) -> None:
    """Without PyTorch (an install without the ``train`` extra), ``farm train`` refuses in the
    farm's own words, not with an unrelated error from deeper down."""
    absent = tmp_path / "no-torch"
    absent.mkdir()
    (absent / "torch.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n"
    )
    script = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"
    result = farm("train", str(script), env={"PYTHONPATH": str(absent)}, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: this farm cannot train: "), line
    assert line.endswith("(install the training extra: pip install -e '.[train]')"), line
    assert "pip install torch" not in line  # an unpinned torch is a CUDA build of gigabytes


def test_training_data_that_is_not_here_is_refused_in_one_line(tmp_path) -> None:
    script = Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"
    for data, message in (
        (str(tmp_path / "none"), f"--data {tmp_path / 'none'}: no such folder"),
        ("sha256:" + "0" * 64, "an uploaded dataset lives on a farm server (farm login)"),
    ):
        result = farm("train", str(script), "--data", data, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and message in line, line
    assert list(tmp_path.iterdir()) == []  # no store, no run folder


def test_blender_not_found(scene, tmp_path) -> None:
    result = farm(
        "render",
        str(scene),
        "-o",
        str(tmp_path / "f_####.exr"),
        env={"FARM_BLENDER": "/no/blender"},
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: Blender not found at '/no/blender': install Blender (Debian: apt-get install blender) "
        "or set FARM_BLENDER to its path"
    )
    assert list(tmp_path.iterdir()) == []


def test_render_prints_a_json_summary_and_exits_0(scene, tmp_path) -> None:
    result = farm(
        "render",
        str(scene),
        "--frames",
        "1-4",
        "--tiles",
        "2x2",
        "--overscan",
        "4",
        "-o",
        str(tmp_path / "r" / "shot_####.exr"),
        "--json",
        "--slots",
        "2",
        "--compression",
        "PIZ",
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["state"] == "done" and summary["written"] == 4 and summary["tasks"] == 16
    assert summary["paths"] == [str(tmp_path / "r" / f"shot_{f:04d}.exr") for f in range(1, 5)]
    assert all(Path(p).is_file() for p in summary["paths"])
    written = oiio.ImageInput.open(summary["paths"][0])
    assert written.spec().get_string_attribute("compression") == "piz"
    written.close()
    assert f"job {summary['id']}: 4 of 4 frames written" in result.stderr

    # The job is in the embedded farm's store, for `farm jobs` and `farm status`.
    listed = json.loads(farm("jobs", "--json").stdout)
    assert [(j["id"], j["state"], j["tasks"]["done"]) for j in listed] == [
        (summary["id"], "done", 16)
    ]
    status = json.loads(farm("status", str(summary["id"]), "--json").stdout)
    assert status["state"] == "done" and sum(status["tasks"].values()) == 16
    attempts = json.loads(farm("logs", str(summary["id"]), "--json").stdout)
    assert len(attempts) == 16 and {a["status"] for a in attempts} == {"done"}
    one = json.loads(farm("logs", str(summary["id"]), "--task", "f1.t0", "--json").stdout)
    assert [(a["task"], a["attempt"], a["status"]) for a in one] == [("f1.t0", 1, "done")]
    assert "Fra:1 " in one[0]["log"] and "Sample " not in one[0]["log"]  # Blender's own output
    unknown = farm("logs", str(summary["id"]), "--task", "f99")
    assert unknown.returncode == 2 and "has no task 'f99'" in unknown.stderr
    missing = farm("status", "999")
    assert missing.returncode == 2 and missing.stderr.strip() == "error: no job 999"


def test_a_killed_farm_render_is_ended_by_the_next_one(make_scene, tmp_path) -> None:
    """kill -9 of an embedded render leaves its job running in the store; the next farm render on
    this machine sees the process gone and ends the job, its attempts lost."""
    slow = make_scene(96, 54, samples=3000, frames=2)
    victim = slow_render(slow, tmp_path, start_new_session=True)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    [stale] = json.loads(farm("jobs", "--json").stdout)
    assert stale["state"] == "running"

    quick = make_scene(64, 36, samples=2, frames=4)
    assert (
        farm("render", str(quick), "--frames", "1", "-o", str(tmp_path / "q_####.exr")).returncode
        == 0
    )
    ended = json.loads(farm("status", str(stale["id"]), "--json").stdout)
    assert ended["state"] == "failed" and "stopped" in ended["message"]
    assert ended["tasks"]["running"] == 0 and ended["tasks"]["queued"] == 0
    attempts = json.loads(farm("logs", str(stale["id"]), "--json").stdout)
    assert "lost" in {a["status"] for a in attempts}


def test_node_join_builds_the_ray_start_of_the_farms_labs() -> None:
    command = json.loads(
        farm(
            "node",
            "join",
            "--address",
            "head:6379",
            "--lab",
            "ml",
            "--gpus",
            "2",
            "--dry-run",
            "--json",
        ).stdout
    )["command"]
    assert command[1:] == [
        "start",
        "--address",
        "head:6379",
        "--resources",
        '{"ml_lab": 1}',
        "--num-gpus",
        "2",
    ]
    away = farm("node", "join", "--address", "127.0.0.1:9", "--lab", "ml")  # nothing listens
    assert away.returncode == 2
    assert away.stderr.startswith("error: cannot reach the head node's Ray at 127.0.0.1:9: ")
    bad = farm("node", "join", "--address", "head:6379", "--lab", "Film Lab", "--dry-run")
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "error: --lab 'Film Lab': use lower-case letters, digits and _ (e.g. film, ml)"
    )


def test_ctrl_c_cancels_the_job_and_stops_its_blenders(make_scene, tmp_path) -> None:
    slow = make_scene(96, 54, samples=3000, frames=2)
    render = slow_render(slow, tmp_path)
    render.send_signal(signal.SIGINT)
    _, stderr = render.communicate(timeout=60)
    assert render.returncode == 130 and stderr.strip().endswith("error: interrupted")
    [job] = json.loads(farm("jobs", "--json").stdout)
    assert job["state"] == "cancelled" and job["tasks"]["running"] == job["tasks"]["queued"] == 0
    assert not [
        p
        for p in psutil.process_iter(["name", "cmdline"])
        if "blender" in (p.info["name"] or "") and str(slow) in " ".join(p.info["cmdline"] or [])
    ]


def slow_render(scene: Path, tmp_path: Path, **popen: object) -> subprocess.Popen[str]:
    """A `farm render` of ``scene`` in a process of its own, returned once a task runs."""
    command = [
        sys.executable,
        "-m",
        "farm",
        "render",
        str(scene),
        "-o",
        str(tmp_path / "s_####.exr"),
    ]
    render = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + 120
    while not _running_tasks(Path(os.environ["FARM_HOME"]) / "farm.db"):
        assert time.monotonic() < deadline and render.poll() is None, "the render never started"
        time.sleep(0.2)
    return render


def _running_tasks(store: Path) -> int:
    """Tasks running in the embedded farm's store, read-only beside the render's writes (no farm
    CLI started every poll: each costs a second of CPU that the render needs)."""
    if not store.exists():
        return 0
    url = f"sqlite:///file:{store}?mode=ro&uri=true"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).where(Task.state == "running")).scalar()
    except OperationalError:  # the store is not made yet
        return 0
    finally:
        engine.dispose()
