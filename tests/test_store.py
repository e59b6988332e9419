"""The store: a versioned schema, and one state machine whose every transition is persisted."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from farm.errors import FarmError
from farm.store import states
from farm.store.states import ALLOWED, Ending, IllegalTransition, State, TaskRef
from farm.store.tables import (
    SCHEMA_VERSION,
    Attempt,
    Job,
    SchemaVersion,
    Task,
    open_store,
    session,
    store_version,
)


def new_job(db, key: str = "f1") -> tuple[Job, TaskRef]:
    job = Job(kind="render", name="shot.blend", owner="ana", state="queued", spec={"frames": [1]})
    task = Task(job=job, key=key, state="queued", payload={"frames": [1], "tile": None})
    db.add_all([job, task])
    db.commit()
    return job, TaskRef(task.id, job.id, key, State.QUEUED, 0, task.payload)


def test_a_new_store_is_created_at_the_current_version(store_url: str) -> None:
    engine = open_store(store_url)
    assert store_version(engine) == SCHEMA_VERSION
    job, _ = new_job(session(engine))
    reopened = session(open_store(store_url))  # opening again migrates nothing and loses nothing
    assert reopened.get(Job, job.id).owner == "ana"
    assert store_version(engine) == SCHEMA_VERSION


def test_sqlite_stores_use_wal(tmp_path: Path) -> None:
    engine = open_store(f"sqlite:///{tmp_path / 'new-folder' / 'farm.db'}")
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_store_from_a_newer_farm_is_refused(store_url: str) -> None:
    url = store_url
    engine = open_store(url)
    with engine.begin() as connection:
        connection.execute(SchemaVersion.__table__.update().values(version=SCHEMA_VERSION + 1))
    with pytest.raises(FarmError, match="newer than this farm's"):
        open_store(url)


def test_attempts_open_and_close_with_the_task(store_url: str) -> None:
    url = store_url
    db = session(open_store(url))
    _, task = new_job(db)
    states.start(db, [(task, "n1", {"CPU": 2})])
    states.end(db, [Ending(task, State.QUEUED, error="Blender exited with code -9\nlast lines")])
    states.start(db, [(task, "n1", {"CPU": 2})])
    states.unstart(db, [task])  # queued behind a task on a slot that died: never ran
    states.start(db, [(task, "", {"CPU": 2})])
    states.end(db, [Ending(task, State.DONE, node="n2")])

    other = session(open_store(url))  # what another process reads
    stored = other.get(Task, task.id)
    assert stored.state == "done" and stored.attempts == 2 and task.attempts == 2
    tries = list(
        other.scalars(select(Attempt).where(Attempt.task_id == task.id).order_by(Attempt.number))
    )
    assert [(a.number, a.status, a.node, a.error) for a in tries] == [
        (1, "failed", "n1", "Blender exited with code -9"),
        (2, "done", "n2", ""),
    ]
    assert [log.text for log in tries[0].logs] == ["Blender exited with code -9\nlast lines"]


def test_an_ending_without_a_node_keeps_the_node_it_started_on(store_url: str) -> None:
    db = session(open_store(store_url))
    _, task = new_job(db)
    states.start(db, [(task, "n7", {"CPU": 1})])
    states.end(db, [Ending(task, State.QUEUED, attempt_status="lost")])
    attempt = session(open_store(store_url)).scalars(select(Attempt)).one()
    assert (attempt.node, attempt.status) == ("n7", "lost")


def test_a_row_another_writer_moved_first_is_not_moved_again(store_url: str) -> None:
    """Compare-and-set: a stale view loses the race and changes nothing."""
    db, other = session(open_store(store_url)), session(open_store(store_url))
    _, task = new_job(db)
    stale = TaskRef(task.id, task.job_id, task.key, State.QUEUED, 0)
    states.move(db, [task], State.CANCELLED)
    with pytest.raises(IllegalTransition, match="no longer queued"):
        states.start(other, [(stale, "n1", {})])
    assert session(open_store(store_url)).get(Task, task.id).state == "cancelled"
    assert session(open_store(store_url)).scalars(select(Attempt)).all() == []


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(list(State)), max_size=12))
def test_the_machine_allows_exactly_its_transitions_and_persists_each(store_url, moves) -> None:
    db, reader = session(open_store(store_url)), session(open_store(store_url))
    _, task = new_job(db)
    for new in moves:
        old = task.state
        if new in ALLOWED[old]:
            transition(db, task, new)
            reader.expire_all()
            assert reader.get(Task, task.id).state == new.value
        else:
            with pytest.raises(IllegalTransition):
                transition(db, task, new)
            assert task.state is old
            reader.expire_all()
            assert reader.get(Task, task.id).state == old.value


def transition(db, task: TaskRef, new: State) -> None:
    """The one call of the state machine that moves ``task`` to ``new``."""
    if new is State.RUNNING:
        states.start(db, [(task, "n1", {})])
    elif task.state is State.RUNNING:
        states.end(db, [Ending(task, new)])
    else:
        states.move(db, [task], new)
