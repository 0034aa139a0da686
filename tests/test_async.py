"""``async def`` handlers: every step kind awaited, step misuse rejected, ``ctx.logger``.

Real redis-server, real in-process Celery workers (threads pool). Step functions of an
async handler may be sync or async; the handler's steps execute one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import pytest
from procs import wait_for

from fanout_celery import Fanout, RetryPolicy, StepError
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)


def step_of(run, step_id: str):
    [record] = [s for s in run.steps if s.id == step_id]
    return record


async def double_later(value: int) -> int:
    await asyncio.sleep(0.01)
    return value * 2


def test_an_async_handler_awaits_steps_with_sync_and_async_functions(app, fanout: Fanout,
                                                                       worker):
    calls: list[str] = []

    def sync_fn(value: int) -> int:
        calls.append("sync")
        return value + 1

    async def async_fn(value: int) -> int:
        calls.append("async")
        return await double_later(value)

    @fanout.function("async-run", retries=0)
    async def async_run(ctx):
        a = await ctx.step.run("sync", sync_fn, 1)
        b = await ctx.step.run("async", async_fn, a)
        c = await ctx.step.run("kwargs", async_fn, value=b)
        # Concurrency inside one step is free: gather plain coroutines, not steps.
        d = await ctx.step.run("both", lambda: asyncio.gather(double_later(c),
                                                              double_later(a)))
        return [a, b, c, d]

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(async_run), timeout=20)

    assert run.status == "completed"
    assert run.output == [2, 4, 8, [16, 4]]
    assert calls == ["sync", "async", "async"]
    assert [(s.id, s.status, s.output) for s in run.steps] == [
        ("sync", "completed", 2), ("async", "completed", 4), ("kwargs", "completed", 8),
        ("both", "completed", [16, 4])]


def test_an_async_handler_sends_events_that_start_child_runs(app, fanout: Fanout, worker):
    @fanout.function("async-child", event="app/async.child", retries=0)
    def child(ctx):
        return ctx.event.data["n"] * 10

    @fanout.function("async-sender", retries=0)
    async def sender(ctx):
        return await ctx.step.send_event("fan", [
            {"name": "app/async.child", "data": {"n": n}} for n in range(3)])

    with worker(app):
        run_id = fanout.invoke(sender)
        run = fanout.wait_for_run(run_id, timeout=20)
        assert run.status == "completed"
        assert len(run.output) == 3
        children = [fanout.wait_for_run(derived_id("async-child", eid), timeout=20)
                    for eid in run.output]

    assert [c.output for c in children] == [0, 10, 20]
    assert all(c.parent_run_id == run_id and c.parent_step_id == "fan" for c in children)
    assert step_of(run, "fan").kind == "send_event"


def test_an_async_handler_sleeps_and_sleeps_until_without_holding_a_worker(
        app, fanout: Fanout, worker):
    @fanout.function("async-sleeper", retries=0)
    async def sleeper(ctx):
        start = await ctx.step.run("start", time.time)
        await ctx.step.sleep("nap", 0.3)
        napped = await ctx.step.run("napped", time.time)
        await ctx.step.sleep_until("alarm", datetime.fromtimestamp(napped + 0.3, tz=UTC))
        woke = await ctx.step.run("woke", time.time)
        return [start, napped, woke]

    with worker(app):
        run_id = fanout.invoke(sleeper)
        wait_for(lambda: (r := fanout.get_run(run_id)) and r.status == "sleeping", 10,
                 "the run to park for its nap")
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    start, napped, woke = run.output
    assert napped - start >= 0.3
    assert woke - napped >= 0.3
    assert [(s.id, s.kind, s.status) for s in run.steps] == [
        ("start", "run", "completed"), ("nap", "sleep", "completed"),
        ("napped", "run", "completed"), ("alarm", "sleep", "completed"),
        ("woke", "run", "completed")]


def test_an_async_handler_waits_for_an_event_resolved_by_a_send(app, fanout: Fanout,
                                                                 worker):
    @fanout.function("async-approval", event="app/async.order", retries=0)
    async def approval(ctx):
        event = await ctx.step.wait_for_event("approval", event="app/async.approved",
                                              match="data.order_id", timeout="20s")
        return None if event is None else event.data

    with worker(app):
        [order] = fanout.send({"name": "app/async.order", "data": {"order_id": 7}})
        run_id = derived_id("async-approval", order)
        wait_for(lambda: (r := fanout.get_run(run_id)) and r.status == "waiting", 10,
                 "the run to wait for approval")
        fanout.send([{"name": "app/async.approved", "data": {"order_id": 8, "by": "eve"}},
                     {"name": "app/async.approved", "data": {"order_id": 7, "by": "ann"}}])
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == {"order_id": 7, "by": "ann"}
    assert step_of(run, "approval").kind == "wait_for_event"


def test_an_async_handler_invokes_a_sync_function_and_gets_its_output(app, fanout: Fanout,
                                                                      worker):
    @fanout.function("sync-double", retries=0)
    def sync_double(ctx):
        return ctx.event.data["n"] * 2

    @fanout.function("async-invoker", retries=0)
    async def invoker(ctx):
        return await ctx.step.invoke("call", function=sync_double, data={"n": 21})

    with worker(app):
        run_id = fanout.invoke(invoker)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == 42
    call = step_of(run, "call")
    assert call.kind == "invoke" and call.output == 42
    child = fanout.get_run(call.detail["child_run_id"])
    assert child is not None and child.function_id == "sync-double"
    assert child.parent_run_id == run_id


def test_an_async_handler_runs_async_branches_in_parallel(app, fanout: Fanout, worker):
    @fanout.function("async-parallel", retries=0)
    async def async_parallel(ctx):
        before = await ctx.step.run("before", double_later, 1)

        async def branch(i: int) -> list[int]:
            a = await ctx.step.run(f"a{i}", double_later, i)
            b = await ctx.step.run(f"b{i}", lambda: a + 1)
            return [a, b]

        results = await ctx.step.parallel("group", [
            (lambda i=i: branch(i)) for i in range(3)])
        after = await ctx.step.run("after", double_later, before)
        return {"before": before, "branches": results, "after": after}

    with worker(app):
        run_id = fanout.invoke(async_parallel)
        run = fanout.wait_for_run(run_id, timeout=20)

    assert run.status == "completed"
    assert run.output == {"before": 2, "branches": [[0, 1], [2, 3], [4, 5]], "after": 4}
    for i in range(3):
        branch = fanout.get_run(derived_id(run_id, "group", str(i)))
        assert branch is not None and branch.status == "completed"
        assert [s.id for s in branch.steps] == [f"a{i}", f"b{i}"]


def test_a_failing_async_step_is_retried_and_then_raises_step_error(app, fanout: Fanout,
                                                                    worker):
    attempts: dict[str, int] = {"flaky": 0, "broken": 0}

    async def flaky() -> str:
        attempts["flaky"] += 1
        await asyncio.sleep(0)
        if attempts["flaky"] < 3:
            raise RuntimeError(f"flaky attempt {attempts['flaky']}")
        return "ok"

    async def broken() -> str:
        attempts["broken"] += 1
        raise RuntimeError("always broken")

    @fanout.function("async-retries", retries=FAST)
    async def async_retries(ctx):
        value = await ctx.step.run("flaky", flaky)
        try:
            await ctx.step.run("broken", broken, retries=1)
        except StepError as exc:
            return {"value": value, "failed": exc.step_id, "message": exc.error["message"]}
        return {"value": value}

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(async_retries), timeout=20)

    assert run.status == "completed"
    assert run.output == {"value": "ok", "failed": "broken", "message": "always broken"}
    assert attempts == {"flaky": 3, "broken": 2}
    assert step_of(run, "flaky").attempts == 3
    assert step_of(run, "broken").status == "failed"
    assert step_of(run, "broken").attempts == 2


def test_gathering_steps_concurrently_is_rejected_pointing_to_parallel(app, fanout: Fanout,
                                                                       worker):
    async def slow(value: int) -> int:
        await asyncio.sleep(0.05)
        return value

    @fanout.function("async-gather", retries=FAST)
    async def gather(ctx):
        return await asyncio.gather(ctx.step.run("a", slow, 1), ctx.step.run("b", slow, 2))

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(gather), timeout=20)

    assert run.status == "failed"
    assert run.error["type"] == "InvalidStepError"
    assert "ctx.step.parallel" in run.error["message"]
    assert run.attempt == 0  # a misuse is not retried
    assert [s.id for s in run.steps] == []  # neither step was checkpointed


def test_a_step_awaited_inside_another_step_raises_nested_step_error(app, fanout: Fanout,
                                                                     worker):
    @fanout.function("async-nested", retries=FAST)
    async def nested(ctx):
        async def outer() -> int:
            return await ctx.step.run("inner", double_later, 1)

        return await ctx.step.run("outer", outer)

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(nested), timeout=20)

    assert run.status == "failed"
    assert run.error["type"] == "NestedStepError"
    assert "inner" in run.error["message"]
    assert run.steps == []


def test_the_logger_of_an_async_handler_logs_once_across_replays(app, fanout: Fanout, worker,
                                                                  caplog):
    caplog.set_level(logging.INFO, logger="fanout.function.async-logger")

    @fanout.function("async-logger", retries=0)
    async def async_logger(ctx):
        ctx.logger.info("before the nap")
        await ctx.step.sleep("nap", 0.1)
        ctx.logger.info("after the nap")
        value = await ctx.step.run("value", double_later, 2)
        ctx.logger.info("value %d", value)
        return value

    with worker(app):
        run = fanout.wait_for_run(fanout.invoke(async_logger), timeout=20)

    assert run.status == "completed"
    messages = [r.getMessage() for r in caplog.records
                if r.name == "fanout.function.async-logger"]
    # The handler ran twice (parked at the nap); the replay of the first part was silent.
    assert messages == ["before the nap", "after the nap", "value 4"]
