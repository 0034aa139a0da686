"""Duplicate delivery: a run's task message arriving more than once runs no step twice
and starts no second run.

Duplicates are normal with Celery's late acknowledgement: a message published twice
(a pump or a sender retrying), a message delivered again because the Redis broker's
visibility timeout expired while its task still ran. Whatever the moment, the duplicate
task finds the run executing elsewhere (``busy``), waiting for its time (``early``) or
finished (``done``) and leaves it alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import task_postrun
from procs import wait_for, worker_process
from support import publish_run, run_ids_of

from fanout_celery import Event, Fanout, RetryPolicy

pytestmark = pytest.mark.integration

# How long kombu's Redis transport may take to restore a message held past its visibility
# timeout: from 5.6 it looks at a rate derived from the timeout; before, only every tenth
# of its 10 s ticks.
_KOMBU = tuple(int(p) for p in version("kombu").split(".")[:2])
REDELIVERY_WITHIN = 20 if _KOMBU >= (5, 6) else 115

DUP_APP = "tests.apps.dup_app"


@contextlib.contextmanager
def outcomes_of(task_name: str) -> Iterator[list[Any]]:
    """What each execution of the task returned (a fanout task returns the run's state:
    completed, busy, early, done...), from the in-process worker's signal."""
    seen: list[Any] = []

    def record(sender: Any = None, retval: Any = None, **kwargs: Any) -> None:
        if sender is not None and sender.name == task_name:
            seen.append(retval)

    task_postrun.connect(record, weak=False)
    try:
        yield seen
    finally:
        task_postrun.disconnect(record)


def test_a_message_published_twice_while_its_run_executes_runs_no_step_twice(
        app: Celery, fanout: Fanout, worker) -> None:
    entered, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def first() -> int:
        calls.append("first")
        entered.set()
        assert release.wait(20)
        return 1

    @fanout.function("dup-busy", event="app/dup.busy", retries=0)
    def busy(ctx):
        return [ctx.step.run("first", first),
                ctx.step.run("second", lambda: calls.append("second") or 2)]

    with outcomes_of(busy.name) as outcomes, worker(app):
        [event_id] = fanout.send(Event(name="app/dup.busy"))
        [run] = fanout.runs_for_event(event_id)
        assert entered.wait(20)
        publish_run(fanout, run.id, busy.name, "", "app/dup.busy")
        publish_run(fanout, run.id, busy.name, "", "app/dup.busy")
        wait_for(lambda: outcomes.count("busy") == 2, 20, "both duplicates to back off")
        release.set()
        done = fanout.wait_for_run(run.id, timeout=20)
        wait_for(lambda: "completed" in outcomes, 20, "the original task to return")

    assert done.status == "completed" and done.output == [1, 2]
    assert calls == ["first", "second"]
    assert sorted(outcomes) == ["busy", "busy", "completed"]
    assert all(s.attempts == 1 for s in done.steps)
    assert [r.id for r in fanout.runs_for_event(event_id)] == [run.id]
    assert run_ids_of(fanout, "dup-busy") == [run.id]


def test_a_message_sent_again_after_its_run_completed_changes_nothing(
        app: Celery, fanout: Fanout, worker) -> None:
    calls: list[str] = []

    @fanout.function("dup-done", event="app/dup.done", retries=0)
    def done_fn(ctx):
        return ctx.step.run("only", lambda: calls.append("only") or len(calls))

    with outcomes_of(done_fn.name) as outcomes, worker(app):
        [event_id] = fanout.send(Event(name="app/dup.done"))
        [run] = fanout.runs_for_event(event_id)
        before = fanout.wait_for_run(run.id, timeout=20)
        app.send_task(done_fn.name, args=[run.id], kwargs={"event": "app/dup.done"},
                      serializer="json")
        wait_for(lambda: "done" in outcomes, 20, "the duplicate to find the run done")

    assert outcomes == ["completed", "done"]
    assert calls == ["only"]
    after = fanout.get_run(run.id)
    assert after == before  # same output, steps and end time
    assert run_ids_of(fanout, "dup-done") == [run.id]


def test_a_message_delivered_while_its_run_waits_to_retry_a_step_runs_nothing_early(
        app: Celery, fanout: Fanout, worker) -> None:
    calls: list[str] = []

    def flaky() -> str:
        calls.append("flaky")
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    @fanout.function("dup-early", event="app/dup.early",
                     retries=RetryPolicy(max_retries=1, backoff=1.5, jitter=0))
    def early(ctx):
        return [ctx.step.run("flaky", flaky),
                ctx.step.run("next", lambda: calls.append("next") or 1)]

    with outcomes_of(early.name) as outcomes, worker(app):
        [event_id] = fanout.send(Event(name="app/dup.early"))
        [run] = fanout.runs_for_event(event_id)
        wait_for(lambda: (r := fanout.get_run(run.id)) and r.steps
                 and r.steps[0].status == "retrying", 20, "the step to wait for its retry")
        publish_run(fanout, run.id, early.name, "", "app/dup.early")
        wait_for(lambda: "early" in outcomes, 20, "the duplicate to find the run not due")
        assert calls == ["flaky"]
        done = fanout.wait_for_run(run.id, timeout=20)

    assert done.status == "completed" and done.output == ["ok", 1]
    assert calls == ["flaky", "flaky", "next"]  # one retry, nothing more
    assert [(s.id, s.attempts) for s in done.steps] == [("flaky", 2), ("next", 1)]
    assert outcomes.count("early") == 1
    assert run_ids_of(fanout, "dup-early") == [run.id]


@pytest.mark.timeout(REDELIVERY_WITHIN + 90)
def test_a_message_redelivered_after_the_visibility_timeout_runs_no_step_twice(
        redis_url: str, redis_client: redis.Redis, fanout: Fanout) -> None:
    def two_deliveries() -> list[str] | None:
        seen = redis_client.lrange("dup:deliveries", 0, -1)
        return seen if len(seen) >= 2 else None

    with worker_process(redis_url, pool="prefork", concurrency=2, app=DUP_APP):
        run_id = fanout.invoke("dup-hold")
        wait_for(lambda: redis_client.get("dup:count:hold"), 20, "the hold step to start")
        # Held past the 2 s visibility timeout: the broker delivers the message again
        # (kombu before 5.6 looks for such messages every tenth 10 s tick: up to 100 s).
        deliveries = wait_for(two_deliveries, REDELIVERY_WITHIN,
                              "the broker to deliver the message a second time")
        try:
            wait_for(lambda: "busy" in redis_client.lrange("dup:outcomes", 0, -1), 20,
                     "the second delivery to back off")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: hold executed {redis_client.get('dup:count:hold')} time(s), "
                f"outcomes {redis_client.lrange('dup:outcomes', 0, -1)}, deliveries "
                f"{deliveries}, run {fanout.store.inspect_run(run_id)}") from None
        redis_client.set("dup:release", 1)
        done = fanout.wait_for_run(run_id, timeout=20)
        wait_for(lambda: "completed" in redis_client.lrange("dup:outcomes", 0, -1), 20,
                 "the first delivery's task to return")

    (first_id, first_again), (second_id, second_again) = (d.split() for d in deliveries[:2])
    assert first_id == second_id  # the same message...
    assert (first_again, second_again) == ("False", "True")  # ...delivered again
    assert done.status == "completed" and done.output == ["held", "after"]
    assert redis_client.get("dup:count:hold") == "1"
    assert redis_client.get("dup:count:after") == "1"
    outcomes = redis_client.lrange("dup:outcomes", 0, -1)
    assert outcomes.count("completed") == 1 and set(outcomes) == {"busy", "completed"}
    assert all(s.attempts == 1 for s in done.steps)
    assert run_ids_of(fanout, "dup-hold") == [run_id]
