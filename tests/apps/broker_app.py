"""The Celery app of the broker tests (``tests/test_brokers.py``), run on a Redis broker
and on a RabbitMQ one (``FANOUT_TEST_BROKER_URL``); fanout's state is in Redis either way.

Step bodies count their executions in Redis under ``broker:count:<function>:<step>``;
``broker-blocking`` records the pid executing its ``hold`` step in ``broker:holding``,
then blocks until ``broker:release`` exists.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fanout_celery import NonRetriableError, RetryPolicy

from .base import worker_app

app, fanout, r = worker_app(
    "broker_app",
    fanout_cron_interval=0.5,
    # On a Redis broker: an unacked message of a killed worker comes back after an hour,
    # so a run resumes through its fanout lease. (RabbitMQ redelivers it at once.)
    broker_transport_options={"visibility_timeout": 3600},
)

FAST = RetryPolicy(max_retries=3, backoff=0.05, jitter=False)
HOLDING, RELEASE = "broker:holding", "broker:release"


def count(function: str, step: str) -> int:
    return int(r.incr(f"broker:count:{function}:{step}"))


def fan_handler(name: str) -> Any:
    def handler(ctx: Any) -> dict[str, Any]:
        n = ctx.step.run("work", lambda: count(name, str(ctx.event.data["n"])))
        return {"n": ctx.event.data["n"], "executions": n}
    handler.__name__ = name.replace("-", "_")
    return handler


# Three functions on one event: every event fans out to three runs.
for fid in ("fan-email", "fan-crm", "fan-audit"):
    fanout.function(fid, event="broker/signup", retries=FAST)(fan_handler(fid))


@fanout.function("flaky", event="broker/flaky", retries=FAST)
def flaky(ctx: Any) -> str:
    def call() -> str:
        if count("flaky", "call") < 3:
            raise ConnectionError("upstream 503")
        return "ok"
    ctx.step.run("before", lambda: count("flaky", "before"))
    return str(ctx.step.run("call", call))


@fanout.function("doomed", event="broker/flaky", retries=FAST)
def doomed(ctx: Any) -> None:
    ctx.step.run("refuse", lambda: (_ for _ in ()).throw(NonRetriableError("bad address")))


@fanout.function("napper", event="broker/nap", retries=0)
def napper(ctx: Any) -> list[int]:
    first = ctx.step.run("before", lambda: count("napper", "before"))
    ctx.step.sleep("nap", 0.3)
    return [first, ctx.step.run("after", lambda: count("napper", "after"))]


@fanout.function("payer", event="broker/order", retries=0)
def payer(ctx: Any) -> Any:
    paid = ctx.step.wait_for_event("paid", event="broker/paid", match="data.order",
                                   timeout="1m")
    return None if paid is None else paid.data


@fanout.function("ticker", cron="* * * * * */2", retries=0)
def ticker(ctx: Any) -> int:
    slot = int(ctx.event.data["scheduled_ms"])
    ctx.step.run("record", lambda: r.rpush("broker:ticks", slot))
    return slot


def _hold() -> int:
    count("broker-blocking", "hold")
    r.set(HOLDING, os.getpid())
    deadline = time.monotonic() + 60
    while not r.exists(RELEASE):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never released the hold step")
        time.sleep(0.02)
    return os.getpid()


@fanout.function("broker-blocking", event="broker/block", retries=0)
def blocking(ctx: Any) -> dict[str, int]:
    before = ctx.step.run("before", lambda: (count("broker-blocking", "before"), os.getpid()))
    held = ctx.step.run("hold", _hold)
    after = ctx.step.run("after", lambda: (count("broker-blocking", "after"), os.getpid()))
    return {"before": before[1], "hold": held, "after": after[1]}
