"""Quota arithmetic without a server: periods, and the room a quota leaves for tasks of known
length, held to never letting charges and bookings pass the quota."""

from __future__ import annotations

import datetime as dt
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from farm.accounts.quota import Quotas
from farm.accounts.standing import Limits, Standing, booked, period_bounds

UTC = dt.UTC


def test_periods_are_the_calendar_week_the_calendar_month_or_the_enrolment():
    wednesday = dt.date(2026, 11, 25)
    start, end = period_bounds("week", wednesday, None)
    assert (start, end) == (
        dt.datetime(2026, 11, 23, tzinfo=UTC),
        dt.datetime(2026, 11, 30, tzinfo=UTC),
    )
    start, end = period_bounds("month", dt.date(2026, 12, 31), None)
    assert (start, end) == (
        dt.datetime(2026, 12, 1, tzinfo=UTC),
        dt.datetime(2027, 1, 1, tzinfo=UTC),
    )
    enrolment = (dt.date(2026, 9, 1), dt.date(2027, 6, 30), "active")
    start, end = period_bounds("enrolment", wednesday, enrolment)
    assert (start, end) == (
        dt.datetime(2026, 9, 1, tzinfo=UTC),
        dt.datetime(2027, 7, 1, tzinfo=UTC),
    )


def test_an_enrolment_allows_work_only_while_active_and_between_its_dates():
    standing = Standing("ana", "trainee", programme="work40", cohort="w1")
    assert "not enrolled" in standing.not_allowed(dt.date(2026, 11, 25))
    standing.enrolment = (dt.date(2026, 9, 1), dt.date(2026, 12, 31), "active")
    assert standing.not_allowed(dt.date(2026, 11, 25)) == ""
    assert "ended on 2026-12-31" in standing.not_allowed(dt.date(2027, 1, 1))
    assert "starts on 2026-09-01" in standing.not_allowed(dt.date(2026, 8, 31))
    standing.enrolment = (dt.date(2026, 9, 1), dt.date(2026, 12, 31), "withdrawn")
    assert "is withdrawn" in standing.not_allowed(dt.date(2026, 11, 25))
    assert Standing("root", "admin").not_allowed() == ""  # admins need no enrolment


@settings(max_examples=60, deadline=None)
@given(
    quota_seconds=st.floats(1, 5000),
    sizes=st.lists(
        st.tuples(st.sampled_from([0.5, 1.0, 2.0]), st.floats(0, 600)), min_size=1, max_size=6
    ),
    max_gpus=st.none() | st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_tasks_of_known_length_never_take_a_user_past_their_gpu_quota(
    quota_seconds, sizes, max_gpus, seed
):
    """Start what ``room`` allows, end tasks in any order having spent anything up to their
    booking: charges plus bookings in flight never pass the quota, nor GPUs in flight the cap."""
    rng = random.Random(seed)
    quotas = Quotas()
    limits = Limits(gpu_hours=quota_seconds / 3600, max_gpus=max_gpus)
    quotas.standings["ana"] = Standing("ana", "trainee", limits=limits)
    flight: list[tuple[float, float]] = []
    charged = 0.0
    for _ in range(40):
        gpus, seconds = rng.choice(sizes)
        room = quotas.room("ana", gpus, 0.0, seconds, 0.0)
        for _ in range(int(min(room, 3))):
            quotas.started("ana", gpus, 0.0, seconds, 0.0)
            flight.append((gpus, seconds))
        in_flight = sum(g * booked(s) for g, s in flight)
        assert charged + in_flight <= quota_seconds + 1e-6
        if max_gpus is not None:
            assert sum(g for g, _ in flight) <= max_gpus + 1e-9
        if flight and rng.random() < 0.6:
            gpus, seconds = flight.pop(rng.randrange(len(flight)))
            quotas.ended("ana", gpus, 0.0, seconds, 0.0)
            spent = gpus * booked(seconds) * rng.random()
            quotas.charged("ana", spent, 0.0)
            charged += spent
