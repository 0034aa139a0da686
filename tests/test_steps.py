"""Steps: memoized replay, back-to-back execution, implicit ids, and step misuse.

Every test runs against a real Redis and a real in-process Celery worker.
"""

from __future__ import annotations

import pytest
from celery.signals import task_prerun

from fanout_celery import RetryPolicy

# Short back-offs keep retried runs fast.
FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)


def test_a_retried_run_re_executes_only_from_the_step_after_the_failure(app, fanout, worker):
    calls: list[str] = []

    @fanout.function(id="three-steps", retries=FAST)
    def three_steps(ctx):
        ctx.step.run("step1", lambda: calls.append("step1") or 1)
        ctx.step.run("step2", lambda: calls.append("step2") or 2)
        if ctx.attempt == 0:
            raise RuntimeError("fails after step2 on the first attempt")
        ctx.step.run("step3", lambda: calls.append("step3") or 3)
        return "done"

    with worker(app):
        run_id = fanout.invoke(three_steps)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == "done"
    assert run.attempt == 1
    assert calls == ["step1", "step2", "step3"]
    assert [s.id for s in run.steps] == ["step1", "step2", "step3"]
    assert [s.output for s in run.steps] == [1, 2, 3]


def test_consecutive_steps_run_back_to_back_in_one_celery_task(app, fanout, worker,
                                                                redis_client):
    @fanout.function(id="five-steps")
    def five_steps(ctx):
        return sum(ctx.step.run(f"s{i}", lambda i=i: i) for i in range(5))

    tasks: list[str] = []

    def count(sender=None, task_id=None, task=None, args=None, **kwargs):
        if task is not None and task.name == five_steps.name:
            tasks.append(args[0])

    task_prerun.connect(count, weak=False)
    try:
        with worker(app):
            run_id = fanout.invoke(five_steps)
            run = fanout.wait_for_run(run_id, timeout=20)
    finally:
        task_prerun.disconnect(count)

    assert run.status == "completed"
    assert run.output == 10
    assert len(run.steps) == 5
    assert tasks == [run_id]
    assert fanout.get_run(run_id).executions == 1


def test_a_step_returns_the_same_value_first_time_and_on_replay(app, fanout, worker):
    seen: list[object] = []

    @fanout.function(id="round-trip", retries=FAST)
    def round_trip(ctx):
        value = ctx.step.run("pair", lambda: ((1, 2), {3: "three"}))
        seen.append(value)
        if ctx.attempt == 0:
            raise RuntimeError("force a replay")
        return value

    with worker(app):
        run_id = fanout.invoke(round_trip)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    expected = [[1, 2], {"3": "three"}]
    assert seen == [expected, expected]
    assert all(isinstance(v, list) and isinstance(v[0], list) for v in seen)
    assert run.output == expected


def test_a_repeated_step_id_in_a_loop_gets_implicit_counters(app, fanout, worker):
    @fanout.function(id="loop")
    def loop(ctx):
        return [ctx.step.run("item", lambda i=i: i * 10) for i in range(3)]

    with worker(app):
        run_id = fanout.invoke(loop)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == [0, 10, 20]
    assert [s.id for s in run.steps] == ["item", "item:1", "item:2"]
    assert [s.output for s in run.steps] == [0, 10, 20]


def test_a_nested_step_fails_the_run_without_retries(app, fanout, worker, redis_client):
    outer_calls: list[int] = []

    @fanout.function(id="nested", retries=FAST)
    def nested(ctx):
        def outer():
            outer_calls.append(1)
            return ctx.step.run("inner", lambda: 1)

        return ctx.step.run("outer", outer)

    with worker(app):
        run_id = fanout.invoke(nested)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert run.error["type"] == "NestedStepError"
    assert "inner" in run.error["message"]
    assert run.attempt == 0
    assert outer_calls == [1]
    assert fanout.get_run(run_id).executions == 1


@pytest.mark.parametrize(
    ("output", "limit", "words"),
    [
        pytest.param(lambda: {"when": object()}, None, "not JSON", id="not-json"),
        pytest.param(lambda: "x" * 2000, 1000, "over the limit", id="too-large"),
    ],
)
def test_a_step_output_that_cannot_be_stored_fails_the_run(app, fanout, worker, output,
                                                           limit, words):
    if limit is not None:
        app.conf.fanout_max_step_output_bytes = limit
    calls: list[int] = []

    @fanout.function(id="bad-output", retries=FAST)
    def bad_output(ctx):
        ctx.step.run("ok", lambda: "small")
        return ctx.step.run("bad", lambda: calls.append(1) or output())

    with worker(app):
        run_id = fanout.invoke(bad_output)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert run.error["type"] == "StepOutputError"
    assert words in run.error["message"]
    assert calls == [1]
    assert [s.id for s in run.steps] == ["ok"]


def test_more_steps_than_the_limit_fails_the_run(app, fanout, worker):
    app.conf.fanout_max_steps = 3

    @fanout.function(id="too-many", retries=FAST)
    def too_many(ctx):
        for i in range(5):
            ctx.step.run(f"s{i}", lambda i=i: i)

    with worker(app):
        run_id = fanout.invoke(too_many)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "failed"
    assert run.error["type"] == "TooManyStepsError"
    assert [s.id for s in run.steps] == ["s0", "s1", "s2"]


def test_ctx_attempt_is_the_attempt_of_the_step_now_executing(app, fanout, worker):
    attempts: list[int] = []

    @fanout.function(id="attempts", retries=FAST)
    def with_attempts(ctx):
        def flaky():
            attempts.append(ctx.attempt)
            if ctx.attempt == 0:
                raise RuntimeError("first attempt fails")
            return ctx.attempt

        return ctx.step.run("flaky", flaky)

    with worker(app):
        run_id = fanout.invoke(with_attempts)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert attempts == [0, 1]
    assert run.output == 1
    assert run.steps[0].attempts == 2
