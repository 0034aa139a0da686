"""Functions are ordinary registered Celery tasks, and finished runs expire."""

from __future__ import annotations

import time

import pytest
from support import wait_until

from fanout_celery import Event, Function


def test_a_function_is_a_registered_celery_task_named_after_its_id(app, fanout):
    @fanout.function("weekly-activity-send-email", event="app/weekly-email-activity.send")
    def send_reminder(ctx):
        return None

    assert isinstance(send_reminder, Function)
    assert app.tasks["fanout.weekly-activity-send-email"] is send_reminder
    assert send_reminder.function_id == "weekly-activity-send-email"
    assert send_reminder.acks_late and send_reminder.reject_on_worker_lost


def test_a_custom_task_name_is_used_when_given(app, fanout):
    @fanout.function("custom", event="app/x", name="myproj.emails.send")
    def custom(ctx):
        return None

    assert "myproj.emails.send" in app.tasks
    assert "fanout.custom" not in app.tasks


def test_celery_inspect_registered_lists_the_functions(app, fanout, worker):
    @fanout.function("listed", event="app/x")
    def listed(ctx):
        return None

    with worker(app):
        replies = app.control.inspect(timeout=5).registered() or {}
    names = {name for tasks in replies.values() for name in tasks}
    assert "fanout.listed" in names


def test_a_finished_run_expires_after_the_retention_period(app, state_client, worker):
    from fanout_celery import Fanout

    app.conf.fanout_retention = 60
    fanout = Fanout(app)

    @fanout.function("short-lived", event="app/x")
    def short_lived(ctx):
        return ctx.step.run("one", lambda: 1)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/x"))
        [run] = fanout.runs_for_event(event_id)
        assert fanout.wait_for_run(run.id, timeout=20).status == "completed"
    keys = fanout.store.keys
    for key in (keys.run(run.id), keys.steps(run.id)):
        ttl = state_client.pttl(key)
        assert 0 < ttl <= 60_000, (key, ttl)


def test_a_parked_run_does_not_expire(app, fanout, redis_client, worker):
    @fanout.function("napper", event="app/nap")
    def napper(ctx):
        ctx.step.sleep("nap", "1h")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/nap"))
        [run] = fanout.runs_for_event(event_id)
        deadline_status = None
        end = time.monotonic() + 20
        while time.monotonic() < end:
            deadline_status = fanout.get_run(run.id).status
            if deadline_status == "sleeping":
                break
            time.sleep(0.02)
    assert deadline_status == "sleeping"
    assert fanout.store.ttl_ms(run.id) == -1


def test_output_retention_expires_the_steps_of_a_finished_run_before_its_summary(
        app, state_client, worker):
    from fanout_celery import Fanout
    from fanout_celery.engine.history import RerunError

    app.conf.fanout_retention = 60
    app.conf.fanout_output_retention = 3
    fanout = Fanout(app)
    keys = fanout.store.keys

    @fanout.function("brief", event="app/brief")
    def brief(ctx):
        return ctx.step.run("one", lambda: "x" * 1000)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/brief"))
        [run] = fanout.runs_for_event(event_id)
        done = fanout.wait_for_run(run.id, timeout=20)
        steps_ttl, run_ttl = (state_client.pttl(keys.steps(run.id)),
                              state_client.pttl(keys.run(run.id)))
    assert done.status == "completed" and [s.id for s in done.steps] == ["one"]
    assert 0 < steps_ttl <= 3_000 < run_ttl <= 60_000
    wait_until(lambda: not state_client.exists(keys.steps(run.id)), 10)
    later = fanout.get_run(run.id)
    assert later.status == "completed" and later.output == "x" * 1000 and later.steps == []
    assert later.steps_expired
    with pytest.raises(RerunError, match="expired .*fanout_output_retention"):
        fanout.rerun(run.id, from_step="one")
