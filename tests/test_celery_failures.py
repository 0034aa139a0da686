"""What Celery sees of runs: the user's own errors on Celery's failure path, step retries
as Celery retries (and fanout's signals), runs that park logged as parked, and a task
called by hand with no run refused. Real Redis, a real in-process worker."""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Any

import pytest
from celery import Celery
from celery.signals import task_failure, task_retry
from support import wait_until

from fanout_celery import (
    Event,
    Fanout,
    NonRetriableError,
    RetryPolicy,
    RunNotFoundError,
    signals,
)
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=1, backoff=0.05, jitter=0)


class Received:
    """Collects what a signal's receivers are given, for the duration of a test."""

    def __init__(self, signal: Any) -> None:
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.signal = signal
        signal.connect(self.receive, weak=False)

    def receive(self, sender: Any = None, **kwargs: Any) -> None:
        with self._lock:
            self.calls.append({"sender": sender, **kwargs})

    def close(self) -> None:
        self.signal.disconnect(self.receive)


@pytest.fixture
def failures() -> Any:
    received = Received(task_failure)
    yield received
    received.close()


def upstream() -> None:
    raise ConnectionError("upstream 503")


def declined() -> None:
    raise NonRetriableError("card declined")


@pytest.mark.parametrize(("retries", "body", "kind", "message"), [
    (0, upstream, ConnectionError, "upstream 503"),
    (FAST, upstream, ConnectionError, "upstream 503"),  # after the step's last retry
    (4, declined, NonRetriableError, "card declined"),
], ids=["no-retry", "retries-exhausted", "non-retriable"])
def test_task_failure_receivers_see_the_users_own_exception(
        app: Celery, fanout: Fanout, worker: Any, failures: Received, retries: Any,
        body: Any, kind: type, message: str) -> None:
    @fanout.function("charge", event="app/charge", retries=retries)
    def charge(ctx: Any) -> None:
        ctx.step.run("call-upstream", body)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/charge"))
        run = fanout.wait_for_run(derived_id("charge", event_id), timeout=20)
        [call] = wait_until(lambda: [c for c in failures.calls
                                     if c["sender"].name == "fanout.charge"])
    assert run.status == "failed"
    exc = call["exception"]
    assert type(exc) is kind and str(exc) == message
    frames = "".join(traceback.format_tb(call["traceback"]))
    assert "test_celery_failures.py" in frames  # the user's own code raised it


def test_an_error_in_the_handler_body_reaches_task_failure(app: Celery, fanout: Fanout,
                                                           worker: Any,
                                                           failures: Received) -> None:
    @fanout.function("body-fails", event="app/body", retries=0)
    def body_fails(ctx: Any) -> None:
        raise KeyError("missing-config")

    with worker(app):
        fanout.send(Event(name="app/body"))
        [call] = wait_until(lambda: [c for c in failures.calls
                                     if c["sender"].name == "fanout.body-fails"])
    assert isinstance(call["exception"], KeyError)


def test_a_step_retry_fires_celerys_task_retry_and_fanouts_step_retried(
        app: Celery, fanout: Fanout, worker: Any) -> None:
    retries, fanout_retries = Received(task_retry), Received(signals.step_retried)
    started, finished = Received(signals.run_started), Received(signals.run_finished)
    attempts = {"n": 0}

    def flaky() -> str:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise TimeoutError("slow upstream")
        return "ok"

    @fanout.function("flaky-step", event="app/flaky", retries=FAST)
    def flaky_step(ctx: Any) -> str:
        return str(ctx.step.run("call", flaky))

    try:
        with worker(app):
            [event_id] = fanout.send(Event(name="app/flaky"))
            run = fanout.wait_for_run(derived_id("flaky-step", event_id), timeout=20)
            wait_until(lambda: finished.calls)
    finally:
        for received in (retries, fanout_retries, started, finished):
            received.close()
    assert run.status == "completed"
    [retry] = [c for c in retries.calls if c["sender"].name == "fanout.flaky-step"]
    assert isinstance(retry["reason"], TimeoutError)
    [step_retry] = fanout_retries.calls
    assert (step_retry["sender"], step_retry["run_id"], step_retry["step_id"]) == (
        "flaky-step", run.id, "call")
    assert [c["executions"] for c in started.calls] == [1, 2]
    assert finished.calls[0]["status"] == "completed"


def test_a_parked_attempt_is_logged_as_parked_not_succeeded(
        app: Celery, fanout: Fanout, worker: Any, caplog: pytest.LogCaptureFixture) -> None:
    @fanout.function("napper", event="app/nap")
    def napper(ctx: Any) -> None:
        ctx.step.sleep("nap", "1h")

    caplog.set_level(logging.INFO, logger="celery.app.trace")
    with worker(app):
        [event_id] = fanout.send(Event(name="app/nap"))
        run_id = derived_id("napper", event_id)
        wait_until(lambda: (r := fanout.get_run(run_id)) and r.status == "sleeping")
        [line] = wait_until(lambda: [r.getMessage() for r in caplog.records
                                     if "fanout.napper" in r.getMessage()])
    assert " parked in " in line and "sleeping: until 20" in line
    assert "succeeded" not in line


@pytest.mark.parametrize("argument", ["abc", "0" * 32], ids=["not-a-run-id", "no-such-run"])
def test_a_task_called_by_hand_without_a_run_fails_clearly(
        app: Celery, fanout: Fanout, worker: Any, failures: Received, argument: str) -> None:
    @fanout.function("called", event="app/called")
    def called(ctx: Any) -> None:
        return None

    with worker(app):
        app.send_task("fanout.called", args=[argument])
        [call] = wait_until(lambda: [c for c in failures.calls
                                     if c["sender"].name == "fanout.called"])
    assert isinstance(call["exception"], RunNotFoundError)
    assert argument in str(call["exception"])
