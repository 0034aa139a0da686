"""Cron firing logic against an injected clock (no Redis, no beat)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from fanout_celery import ConfigurationError
from fanout_celery.model.cron import check_missed, due_slots, next_fire_times, parse_cron

UTC = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def local(slots: list[int], tz: ZoneInfo) -> list[str]:
    return [datetime.fromtimestamp(s / 1000, tz).isoformat() for s in slots]


def fire_over(text: str, start: datetime, end: datetime, tick: timedelta,
              missed: str = "latest") -> list[int]:
    """Simulate a dispatcher ticking every ``tick`` from start to end."""
    spec = parse_cron(text)
    fired: list[int] = []
    last = ms(start)
    now = start
    while now < end:
        now += tick
        fired += due_slots(spec, last, ms(now), missed, 10)
        last = ms(now)
    return fired


def test_weekly_friday_noon_fires_once_per_week():
    fired = fire_over("0 12 * * 5", datetime(2026, 11, 1, tzinfo=UTC),
                      datetime(2026, 11, 29, tzinfo=UTC), timedelta(minutes=7))
    assert local(fired, UTC) == [f"2026-11-{d:02d}T12:00:00+00:00" for d in (6, 13, 20, 27)]


def test_hourly_fires_every_hour_and_not_twice():
    fired = fire_over("0 * * * *", datetime(2026, 5, 1, tzinfo=UTC),
                      datetime(2026, 5, 2, tzinfo=UTC), timedelta(seconds=50))
    assert len(fired) == 24
    assert len(set(fired)) == 24


def test_six_field_form_has_seconds_last():
    spec = parse_cron("* * * * * */2")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    fired = due_slots(spec, ms(start), ms(start + timedelta(seconds=10)), "all", 100)
    assert [(s - ms(start)) // 1000 for s in fired] == [2, 4, 6, 8, 10]


@pytest.mark.parametrize("tz_name,day", [("Europe/Paris", 29), ("America/New_York", 8)])
def test_spring_forward_skips_the_slot_that_does_not_exist(tz_name, day):
    tz = ZoneInfo(tz_name)
    month = 3
    fired = fire_over(f"TZ={tz_name} 30 2 * * *", datetime(2026, month, day - 2, 12, tzinfo=tz),
                      datetime(2026, month, day + 2, 12, tzinfo=tz), timedelta(minutes=5))
    days = [datetime.fromtimestamp(s / 1000, tz).day for s in fired]
    assert days == [day - 1, day + 1, day + 2]
    assert all(datetime.fromtimestamp(s / 1000, tz).hour == 2 for s in fired)


@pytest.mark.parametrize("tz_name,day", [("Europe/Paris", 25), ("America/New_York", 1)])
def test_fall_back_repeated_hour_fires_once(tz_name, day):
    tz = ZoneInfo(tz_name)
    hour = 2 if tz_name == "Europe/Paris" else 1
    month = 10 if tz_name == "Europe/Paris" else 11
    start = datetime(2026, month, day, 0, tzinfo=tz)
    fired = fire_over(f"TZ={tz_name} 30 {hour} * * *", start, start + timedelta(hours=8),
                      timedelta(minutes=5))
    assert len(fired) == 1
    assert datetime.fromtimestamp(fired[0] / 1000, tz).hour == hour


def test_hourly_through_fall_back_in_new_york_fires_each_wall_hour_once():
    start = datetime(2026, 11, 1, 0, 0, tzinfo=NEW_YORK)
    fired = fire_over("TZ=America/New_York 0 * * * *", start, start + timedelta(hours=5),
                      timedelta(minutes=10))
    walls = [datetime.fromtimestamp(s / 1000, NEW_YORK).hour for s in fired]
    assert walls == sorted(set(walls))


def test_missed_latest_fires_only_the_most_recent_slot():
    spec = parse_cron("0 * * * *")
    down_from = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)
    back_at = datetime(2026, 6, 1, 6, 10, tzinfo=UTC)
    assert local(due_slots(spec, ms(down_from), ms(back_at), "latest", 10), UTC) == \
        ["2026-06-01T06:00:00+00:00"]


def test_missed_all_fires_each_slot_up_to_the_bound():
    spec = parse_cron("0 * * * *")
    down_from = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)
    back_at = datetime(2026, 6, 1, 6, 10, tzinfo=UTC)
    assert len(due_slots(spec, ms(down_from), ms(back_at), "all", 10)) == 6
    bounded = due_slots(spec, ms(down_from), ms(back_at), "all", 3)
    assert local(bounded, UTC) == [f"2026-06-01T0{h}:00:00+00:00" for h in (4, 5, 6)]


def test_missed_none_skips_old_slots_but_fires_on_time_ones():
    spec = parse_cron("0 * * * *")
    down_from = datetime(2026, 6, 1, 0, 30, tzinfo=UTC)
    assert due_slots(spec, ms(down_from), ms(datetime(2026, 6, 1, 6, 10, tzinfo=UTC)),
                     "none", 10) == []
    on_time = datetime(2026, 6, 1, 6, 0, 1, tzinfo=UTC)
    assert local(due_slots(spec, ms(down_from), ms(on_time), "none", 10), UTC) == \
        ["2026-06-01T06:00:00+00:00"]


def test_first_examination_fires_a_slot_that_just_passed_only():
    spec = parse_cron("0 12 * * 5")
    just_after = datetime(2026, 11, 27, 12, 0, 0, 500000, tzinfo=UTC)
    assert len(due_slots(spec, None, ms(just_after), "latest", 10)) == 1
    an_hour_after = datetime(2026, 11, 27, 13, tzinfo=UTC)
    assert due_slots(spec, None, ms(an_hour_after), "latest", 10) == []


def test_next_fire_times_are_in_the_cron_zone():
    spec = parse_cron("TZ=Europe/Paris 0 9 * * 1")
    nxt = next_fire_times(spec, ms(datetime(2026, 11, 27, tzinfo=UTC)), 2)
    assert [d.isoformat() for d in nxt] == ["2026-11-30T09:00:00+01:00",
                                            "2026-12-07T09:00:00+01:00"]


@pytest.mark.parametrize("text", ["", "61 * * * *", "* * *", "TZ=Mars/Olympus 0 * * * *",
                                  "0 12 * * 5 * *", None, 5])
def test_bad_cron_is_a_configuration_error(text):
    with pytest.raises(ConfigurationError):
        parse_cron(text)


@pytest.mark.parametrize("policy,limit", [("sometimes", 10), ("all", 0), ("all", True)])
def test_bad_missed_policy_is_a_configuration_error(policy, limit):
    with pytest.raises(ConfigurationError):
        check_missed(policy, limit)
