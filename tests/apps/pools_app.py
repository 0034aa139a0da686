"""The Celery app of the worker-pool tests (``tests/test_pools.py``): one worker of it
per pool (prefork, threads, solo, gevent).

``python -m celery -A tests.apps.pools_app worker --pool=...`` with
``FANOUT_TEST_REDIS_URL`` and ``FANOUT_TEST_WORKER_TOKEN`` in the environment, as for
``tests/apps/crash_app.py``. Step bodies count their executions in Redis under
``pools:count:<step>``.
"""

from __future__ import annotations

import os
from typing import Any

from fanout_celery import Event

from .base import worker_app

app, fanout, r = worker_app("pools_app")

BRANCHES = 3


def count_key(step: str) -> str:
    return f"pools:count:{step}"


def _count(step: str) -> int:
    r.incr(count_key(step))
    return os.getpid()


def _branch(index: int) -> int:
    r.incr(count_key(f"branch{index}"))
    return index * 10


@fanout.function("pools-flow", event="pools/start", retries=0)
def flow(ctx: Any) -> dict[str, Any]:
    """Every kind of step a pool must carry: a step, a durable sleep, a wait for an
    event, a parallel group, a fan-out to two functions, a last step."""
    key = ctx.event.data["key"]
    ctx.step.run("first", _count, "first")
    ctx.step.sleep("nap", 0.5)
    go = ctx.step.wait_for_event("go", event="pools/go", timeout="1m", match="data.key")
    branches = ctx.step.parallel("group", [
        (lambda i=i: ctx.step.run(f"branch{i}", _branch, i)) for i in range(BRANCHES)])
    ctx.step.send_event("fan", [Event(name="pools/fan", data={"key": key})])
    ctx.step.run("last", _count, "last")
    return {"go": None if go is None else go.data["answer"], "branches": branches}


@fanout.function("pools-fan-a", event="pools/fan", retries=0)
def fan_a(ctx: Any) -> str:
    ctx.step.run("a", _count, "fan-a")
    return "a:" + ctx.event.data["key"]


@fanout.function("pools-fan-b", event="pools/fan", retries=0)
def fan_b(ctx: Any) -> str:
    ctx.step.run("b", _count, "fan-b")
    return "b:" + ctx.event.data["key"]


@fanout.function("pools-cancelled", event="pools/hold", retries=0)
def held(ctx: Any) -> str:
    """Waits for an event that never comes, until the test cancels it."""
    ctx.step.run("before", _count, "held")
    ctx.step.wait_for_event("never", event="pools/never", timeout="10m")
    ctx.step.run("after", _count, "held-after")
    return "not cancelled"
