"""Cron functions fired by a real ``celery beat`` and a real worker, both subprocesses."""

from __future__ import annotations

import pytest
from celery.schedules import crontab
from procs import beat_process, wait_for, worker_process

from fanout_celery.model.events import SCHEDULED_TIMER

APP = "tests.apps.cron_app"
WEEKLY_APP = "tests.apps.weekly_app"


def fired(redis_client) -> list[int]:
    return [int(v) for v in redis_client.lrange("cron:fired", 0, -1)]


def assert_distinct_two_second_slots(slots: list[int]) -> None:
    assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
    assert all(s % 2000 == 0 for s in slots), slots


@pytest.mark.parametrize("scheduler", [None, "redbeat.RedBeatScheduler"],
                         ids=["default-scheduler", "redbeat"])
def test_beat_fires_a_six_field_cron_function_once_per_slot(redis_url, redis_client,
                                                           scheduler):
    with worker_process(redis_url, app=APP), beat_process(redis_url, scheduler):
        wait_for(lambda: len(fired(redis_client)) >= 3, 30, "three cron firings")
        # The user's own beat entry runs beside the cron dispatcher.
        wait_for(lambda: int(redis_client.get("cron:user-beat") or 0) >= 1, 15,
                 "the user's beat_schedule entry")
    slots = sorted(fired(redis_client))
    assert_distinct_two_second_slots(slots)


@pytest.mark.parametrize("scheduler", [None, "redbeat.RedBeatScheduler"],
                         ids=["default-scheduler", "redbeat"])
def test_two_beats_at_once_run_each_slot_once(redis_url, redis_client, scheduler):
    with worker_process(redis_url, app=APP), beat_process(redis_url, scheduler), \
            beat_process(redis_url, scheduler):
        wait_for(lambda: len(fired(redis_client)) >= 4, 30, "four cron firings")
    slots = sorted(fired(redis_client))
    assert_distinct_two_second_slots(slots)


def test_a_cron_run_gets_the_scheduled_timer_event(redis_url, redis_client):
    from celery import Celery

    from fanout_celery import Fanout

    with worker_process(redis_url, app=APP), beat_process(redis_url):
        slot = wait_for(lambda: fired(redis_client), 30, "a cron firing")[0]
    app = Celery("reader", broker=redis_url, set_as_current=False)
    reader = Fanout(app)
    runs = [run for run in (reader.get_run(rid) for _, rid in
                            reader.store.function_run_ids(["every-two-seconds"]))
            if run is not None and run.output == slot]
    assert len(runs) == 1
    event = runs[0].events[0]
    assert event["name"] == SCHEDULED_TIMER
    assert event["data"]["expr"] == "* * * * * */2"
    assert event["data"]["zone"] == "UTC"
    assert event["data"]["scheduled_ms"] == slot


def test_cron_functions_add_one_beat_entry_beside_the_users_entries(app):
    from fanout_celery import Fanout

    app.conf.beat_schedule = {"mine": {"task": "mine", "schedule": 60.0}}
    fanout = Fanout(app)

    @fanout.function("weekly", cron="0 12 * * 5")
    def weekly(ctx):
        return None

    @fanout.function("nightly", cron=["TZ=Europe/Paris 0 2 * * *", "0 3 * * 6"])
    def nightly(ctx):
        return None

    schedule = app.conf.beat_schedule
    assert set(schedule) == {"mine", "fanout.cron weekly", "fanout.cron nightly #1",
                             "fanout.cron nightly #2"}
    weekly_entry = schedule["fanout.cron weekly"]
    assert weekly_entry["task"] == "fanout.cron"
    assert weekly_entry["kwargs"] == {"function": "weekly"}
    # Celery's own crontab: beat wakes when the slot is due, as for any crontab entry.
    assert isinstance(weekly_entry["schedule"], crontab)
    assert weekly_entry["schedule"] == crontab(minute="0", hour="12", day_of_week="5")
    # Another zone than the app's: beat wakes every minute, the worker finds the slot.
    assert schedule["fanout.cron nightly #1"]["schedule"] == crontab(minute="*")
    assert schedule["fanout.cron nightly #2"]["schedule"] == crontab(minute="0", hour="3",
                                                                      day_of_week="6")
    assert "fanout.cron" in app.tasks


def test_a_celery_crontab_is_accepted_and_cron_reads_the_apps_timezone(app):
    from fanout_celery import Fanout

    app.conf.timezone = "Asia/Tokyo"
    fanout = Fanout(app)

    @fanout.function("tokyo-noon", cron=crontab(minute=0, hour=12))
    def tokyo_noon(ctx):
        return None

    [entry] = fanout.schedules(count=3)
    assert entry["cron"] == "0 12 * * *" and entry["zone"] == "Asia/Tokyo"
    assert all((when.hour, str(when.tzinfo)) == (12, "Asia/Tokyo") for when in entry["next"])
    schedule = app.conf.beat_schedule["fanout.cron tokyo-noon"]["schedule"]
    assert schedule == crontab(minute="0", hour="12")


def test_a_beat_with_only_weekly_crons_sleeps_until_the_slot(redis_url, redis_client):
    # The weekly function's entry is a crontab: beat's first wake-up is its longest sleep
    # (the old 1 s tick sent a message a second, logged by the worker and shown by Flower).
    with beat_process(redis_url, app=WEEKLY_APP, loglevel="debug") as beat:
        line = wait_for(lambda: next((ln for ln in beat.log_path.read_text(
            errors="replace").splitlines() if "beat: Waking up in" in ln), None), 20,
            "beat to compute its first wake-up")
    assert "minutes" in line or "hours" in line, line
    assert redis_client.llen("celery") == 0
    assert "Sending due task" not in beat.log_path.read_text(errors="replace")


def test_schedules_lists_each_cron_with_its_next_fire_times(fanout):
    @fanout.function("weekly", cron="0 12 * * 5")
    def weekly(ctx):
        return None

    @fanout.function("on-event", event="app/x")
    def on_event(ctx):
        return None

    [entry] = fanout.schedules(count=2)
    assert entry["function_id"] == "weekly"
    assert entry["cron"] == "0 12 * * 5"
    assert len(entry["next"]) == 2
    assert all(when.weekday() == 4 and when.hour == 12 for when in entry["next"])


def test_each_celery_app_in_a_process_gets_its_own_cron_task_and_beat_entry():
    from celery import Celery

    from fanout_celery import Fanout

    first, second = (Celery(name, set_as_current=False) for name in ("first", "second"))
    one = Fanout(first)
    one.function("first-cron", cron="0 8 * * *")(lambda ctx: None)
    two = Fanout(second)  # as a Django project's app, created after another one
    two.function("second-cron", cron="0 9 * * *")(lambda ctx: None)

    assert "fanout.cron second-cron" in second.conf.beat_schedule
    assert "fanout.cron first-cron" not in second.conf.beat_schedule
    # The second app's tick dispatches its own functions, not the first app's.
    assert second.tasks["fanout.cron"] is not first.tasks["fanout.cron"]
    first.close()
    second.close()
