"""Retries: per-step back-off, exhaustion, NonRetriableError, RetryAfterError, handler
retries, failure isolation between sibling runs, and the failure/finish system events.

Every test runs against a real Redis and a real in-process Celery worker.
"""

from __future__ import annotations

import json
import time

from support import run_ids_of, wait_until

from fanout_celery import Event, NonRetriableError, RetryAfterError, RetryPolicy, StepError

# Step timestamps are stored in whole milliseconds and wake times are computed from
# them, so an attempt may start up to a millisecond "early" by a float clock.
CLOCK_SLACK = 0.002



def test_a_step_failing_twice_then_succeeding_is_retried_with_back_off(app, fanout, worker):
    policy = RetryPolicy(max_retries=3, backoff=0.1, backoff_factor=2, jitter=0)
    started: list[float] = []
    failed: list[float] = []

    @fanout.function(id="flaky", retries=policy)
    def flaky(ctx):
        def call_api():
            started.append(time.time())
            if len(started) <= 2:
                failed.append(time.time())
                raise ConnectionError(f"attempt {len(started)} failed")
            return "ok"

        return ctx.step.run("call-api", call_api)

    with worker(app):
        run_id = fanout.invoke(flaky)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == "ok"
    [step] = run.steps
    assert (step.status, step.attempts, step.error) == ("completed", 3, None)
    assert len(started) == 3
    # The errors of the two failed attempts are kept, oldest first, with their times.
    assert [(e["attempt"], e["type"], e["message"]) for e in step.earlier_errors] == [
        (1, "ConnectionError", "attempt 1 failed"), (2, "ConnectionError", "attempt 2 failed")]
    assert all("call_api" in e["traceback"] for e in step.earlier_errors)
    assert abs(step.earlier_errors[0]["ended_at"] / 1000 - failed[0]) < 1
    # Retry n waits backoff * factor ** (n - 1): 0.1 s, then 0.2 s.
    assert started[1] - failed[0] >= 0.1 - CLOCK_SLACK
    assert started[2] - failed[1] >= 0.2 - CLOCK_SLACK


def test_a_step_that_exhausts_its_retries_raises_step_error_in_the_handler(app, fanout,
                                                                           worker):
    policy = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)
    calls: list[int] = []
    caught: list[StepError] = []

    @fanout.function(id="exhausted", retries=policy)
    def exhausted(ctx):
        def always_fails():
            calls.append(1)
            raise ValueError(f"boom {len(calls)}")

        try:
            return ctx.step.run("charge", always_fails)
        except StepError as exc:
            caught.append(exc)
            return {"fallback": True}

    with worker(app):
        run_id = fanout.invoke(exhausted)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == {"fallback": True}
    assert run.error is None
    [step] = run.steps
    assert step.status == "failed"
    assert step.attempts == policy.max_retries + 1 == len(calls)
    assert step.error["type"] == "ValueError"
    assert step.error["message"] == "boom 3"
    assert [e["message"] for e in step.earlier_errors] == ["boom 1", "boom 2"]
    assert caught and caught[-1].step_id == "charge"


def test_non_retriable_error_fails_the_run_after_one_attempt(app, fanout, worker):
    calls: list[int] = []

    @fanout.function(id="declined", retries=RetryPolicy(max_retries=3, backoff=0.05, jitter=0))
    def declined(ctx):
        def charge():
            calls.append(1)
            raise NonRetriableError("card declined")

        ctx.step.run("charge", charge)
        return "unreachable"

    with worker(app):
        run_id = fanout.invoke(declined)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert calls == [1]
    assert run.error["type"] == "NonRetriableError"
    assert run.error["message"] == "card declined"
    assert run.error["step"] == "charge"
    assert run.attempt == 0
    [step] = run.steps
    assert (step.status, step.attempts) == ("failed", 1)


def test_retry_after_error_delays_the_next_attempt(app, fanout, worker):
    started: list[float] = []
    failed: list[float] = []

    @fanout.function(id="rate-limited", retries=RetryPolicy(max_retries=2, backoff=0.01,
                                                             jitter=0))
    def rate_limited(ctx):
        def call():
            started.append(time.time())
            if len(started) == 1:
                failed.append(time.time())
                raise RetryAfterError("429 Too Many Requests", retry_after=0.5)
            return "ok"

        return ctx.step.run("call", call)

    with worker(app):
        run_id = fanout.invoke(rate_limited)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert len(started) == 2
    assert started[1] - failed[0] >= 0.5 - CLOCK_SLACK
    assert run.steps[0].attempts == 2


def test_an_error_in_the_handler_body_retries_the_handler_then_fails_the_run(app, fanout,
                                                                            worker):
    policy = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)
    step_calls: list[int] = []
    bodies: list[int] = []

    @fanout.function(id="body-fails", retries=policy)
    def body_fails(ctx):
        ctx.step.run("before", lambda: step_calls.append(1) or "memo")
        bodies.append(ctx.attempt)
        raise KeyError("missing config")

    with worker(app):
        run_id = fanout.invoke(body_fails)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert bodies == [0, 1, 2]
    assert run.attempt == policy.max_retries
    assert run.error["type"] == "KeyError"
    assert "missing config" in run.error["message"]
    assert step_calls == [1]


def test_one_failing_child_does_not_affect_its_siblings_and_runs_on_failure(
        app, fanout, worker, redis_client):
    def record_failure(ctx):
        redis_client.set("test:on-failure", json.dumps(ctx.event.data))
        return "handled"

    @fanout.function(id="child", event="app/child.work",
                     retries=RetryPolicy(max_retries=2, backoff=0.05, jitter=0),
                     on_failure=record_failure)
    def child(ctx):
        n = ctx.event.data["n"]

        def work():
            if n == 3:
                raise NonRetriableError(f"child {n} cannot proceed")
            return n * n

        return ctx.step.run("work", work)

    @fanout.function(id="parent")
    def parent(ctx):
        return ctx.step.send_event("fan-out", [Event(name="app/child.work", data={"n": n})
                                               for n in range(5)])

    with worker(app):
        parent_id = fanout.invoke(parent)
        parent_run = fanout.wait_for_run(parent_id, timeout=20)
        children = {}
        for event_id in parent_run.output:
            [run] = fanout.runs_for_event(event_id)
            children[run.events[0]["data"]["n"]] = fanout.wait_for_run(run.id, timeout=20)
        received = json.loads(wait_until(lambda: redis_client.get("test:on-failure")))
        [failure_run_id] = wait_until(lambda: run_ids_of(fanout, "child-failure"))
        failure_run = fanout.wait_for_run(failure_run_id, timeout=20)

    assert parent_run.status == "completed"
    assert sorted(n for n, r in children.items() if r.status == "completed") == [0, 1, 2, 4]
    assert [n for n, r in children.items() if r.status == "failed"] == [3]
    assert [children[n].output for n in (0, 1, 2, 4)] == [0, 1, 4, 16]
    failed = children[3]
    assert failed.error["message"] == "child 3 cannot proceed"
    assert received["function_id"] == "child"
    assert received["run_id"] == failed.id
    assert received["error"]["message"] == "child 3 cannot proceed"
    assert received["error"]["type"] == "NonRetriableError"
    assert received["event"]["data"] == {"n": 3}
    assert failure_run.status == "completed"
    assert failure_run.output == "handled"


def test_function_finished_can_be_subscribed_to_and_receives_the_output(app, fanout, worker,
                                                                       redis_client):
    @fanout.function(id="producer")
    def producer(ctx):
        return {"total": ctx.step.run("sum", lambda: 1 + 2)}

    @fanout.function(id="audit", event="fanout/function.finished")
    def audit(ctx):
        redis_client.rpush("test:finished", json.dumps(ctx.event.data))
        return ctx.event.data["function_id"]

    with worker(app):
        run_id = fanout.invoke(producer)
        fanout.wait_for_run(run_id, timeout=20)
        [audit_id] = wait_until(lambda: run_ids_of(fanout, "audit"))
        audit_run = fanout.wait_for_run(audit_id, timeout=20)
        # The audit run's own completion is announced before it is marked completed: had
        # it started another audit run, that run would exist by now.
        audit_runs = run_ids_of(fanout, "audit")

    assert audit_run.status == "completed"
    assert audit_run.output == "producer"
    assert audit_runs == [audit_id]
    [received] = [json.loads(r) for r in redis_client.lrange("test:finished", 0, -1)]
    assert received["function_id"] == "producer"
    assert received["run_id"] == run_id
    assert received["output"] == {"total": 3}
