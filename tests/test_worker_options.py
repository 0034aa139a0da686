"""Workers that do not run the pump: ``celery worker --without-fanout-pump`` and the
``fanout_pump = False`` setting, for deployments that run dedicated queues."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from celery import Celery
from procs import wait_for, worker_process

from fanout_celery import Fanout
from fanout_celery.integration.bootsteps import WITHOUT_PUMP_OPTION, PumpStep
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

PUMP_APP = "tests.apps.pump_app"


def pump_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "fanout-pump"]


def test_a_worker_without_the_pump_leaves_wake_ups_to_a_worker_that_runs_one(redis_url):
    sender = Fanout(Celery("sender", broker=redis_url, set_as_current=False))
    with worker_process(redis_url, app=PUMP_APP, queues="sleepers",
                        extra=(WITHOUT_PUMP_OPTION,)) as lone:
        [event_id] = sender.send({"name": "test/pump.nap"})
        run_id = derived_id("pump-napper", event_id)
        run = wait_for(lambda: (r := sender.get_run(run_id)) and r.status == "sleeping" and r,
                       20, "the run to sleep")
        assert run.wake_at is not None
        # The span under test: 20 pump intervals (0.05 s) past the wake time, no pump has
        # woken it, as the only worker runs none.
        idle_until = run.wake_at.timestamp() + 1.0
        time.sleep(max(idle_until - datetime.now(UTC).timestamp(), 0))
        assert sender.get_run(run_id).status == "sleeping"
        assert lone.alive()

        # A worker on another queue runs the pump: it wakes the run, the first executes it.
        with worker_process(redis_url, app=PUMP_APP, queues="elsewhere"):
            done = sender.wait_for_run(run_id, timeout=20)
    assert (done.status, done.output) == ("completed", "woken")
    sender.app.close()


@pytest.mark.parametrize("conf, option, runs_pump", [
    ({}, False, True),
    ({"fanout_pump": False}, False, False),
    ({}, True, False),
], ids=["default", "fanout_pump-false", "without-fanout-pump"])
def test_the_pump_step_runs_the_pump_unless_told_not_to(app, conf, option, runs_pump):
    app.conf.update(conf)
    Fanout(app)
    before = len(pump_threads())
    step = PumpStep(SimpleNamespace(app=app), without_fanout_pump=option)
    step.start(SimpleNamespace(app=app))
    try:
        assert (step.pump is not None) is runs_pump
        assert len(pump_threads()) == before + runs_pump
    finally:
        step.stop(SimpleNamespace(app=app))


def test_celery_worker_lists_the_without_fanout_pump_option(app):
    Fanout(app)
    assert any(WITHOUT_PUMP_OPTION in option.opts for option in app.user_options["worker"])
