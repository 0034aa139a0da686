"""The Celery app of the flow-control tests (``tests/test_flow_control.py``).

``python -m celery -A tests.apps.flow_app worker ...`` with ``FANOUT_TEST_REDIS_URL`` and
``FANOUT_TEST_WORKER_TOKEN`` in the environment, as for ``tests/apps/crash_app.py`` (and
with the same readiness key, so ``tests/procs.py`` can start it). The test process sees
nothing of the workers' memory, so step bodies record what they observe in Redis:

- ``flow:starts:<tag>`` (list): one JSON ``{"label", "t", "pid"}`` per step body start;
- ``flow:log:<tag>`` (list): one JSON ``{"label", "start", "end", "pid"}`` per body that
  returned (a body killed with its worker has a start and no log entry);
- a body given ``block`` waits until that key exists, then sleeps ``hold`` seconds.

Every test uses a fresh ``tag`` in its events, and the flow-control keys below include
it, so tests sharing these workers never share a limit.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from fanout_celery import (
    Batch,
    Concurrency,
    Context,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
)

from .base import worker_app

# Runs of the worker-kill test go to their own queue, consumed by that test's workers only.
CRASH_QUEUE = "flow-crash"

app, fanout, r = worker_app(
    "flow_app",
    # An unacked message of a killed worker comes back only after an hour: a run (and the
    # concurrency slot it held) can only come back through its fanout lease expiring.
    broker_transport_options={"visibility_timeout": 3600},
)


def starts_key(tag: str) -> str:
    return f"flow:starts:{tag}"


def log_key(tag: str) -> str:
    return f"flow:log:{tag}"



def record(tag: str, label: str, hold: float = 0.0, block: str | None = None) -> float:
    """A step body: note its start, wait for ``block`` and ``hold``, note its end."""
    pid = os.getpid()
    start = time.time()
    r.rpush(starts_key(tag), json.dumps({"label": label, "t": start, "pid": pid}))
    if block:
        deadline = time.monotonic() + 60
        while not r.exists(block):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test never set {block}")
            time.sleep(0.01)
    if hold:
        time.sleep(hold)
    r.rpush(log_key(tag), json.dumps({"label": label, "start": start, "end": time.time(),
                                      "pid": pid}))
    return start


def work(ctx: Context) -> float:
    """One step that records itself, labelled ``<function id>/<label>``; ``data``: tag,
    label, hold, block."""
    d = ctx.event.data
    label = f"{ctx.function_id}/{d.get('label', '')}"
    return float(ctx.step.run("work", record, d["tag"], label, d.get("hold", 0.0),
                              d.get("block")))


def declare(function_id: str, event: str, **options: Any) -> None:
    fanout.function(function_id, event=event, retries=0, **options)(work)


# -- concurrency ------------------------------------------------------------------------
declare("flow-conc", "flow/conc", concurrency=Concurrency(2, key="event.data.account"))
declare("flow-conc-two", "flow/conc-two",
        concurrency=[Concurrency(1, key="event.data.account"),
                     Concurrency(2, key="event.data.tag")])
declare("flow-conc-crash", "flow/conc-crash", queue=CRASH_QUEUE,
        concurrency=Concurrency(2, key="event.data.tag"))
# Two functions sharing one global limit per tag.
declare("flow-global-a", "flow/global",
        concurrency=Concurrency(2, key="event.data.tag", scope="global"))
declare("flow-global-b", "flow/global",
        concurrency=Concurrency(2, key="event.data.tag", scope="global"))


@fanout.function("flow-conc-park", event="flow/conc-park", retries=0,
                 concurrency=Concurrency(1, key="event.data.tag"))
def park(ctx: Context) -> None:
    """Records a step, sleeps ``nap`` seconds (parked), records another step."""
    d = ctx.event.data
    ctx.step.run("before", record, d["tag"], f"{d['label']}:before")
    if d.get("nap"):
        ctx.step.sleep("nap", d["nap"])
    ctx.step.run("after", record, d["tag"], f"{d['label']}:after")


# -- throttle, rate limit, priority -------------------------------------------------------
declare("flow-throttle", "flow/throttle", throttle=Throttle(5, 1, key="event.data.tag"))
declare("flow-throttle-burst", "flow/throttle-burst",
        throttle=Throttle(5, 1, burst=3, key="event.data.tag"))
declare("flow-rate", "flow/rate", rate_limit=RateLimit(2, 60, key="event.data.user"))
declare("flow-priority", "flow/priority", concurrency=Concurrency(1, key="event.data.tag"),
        priority=Priority(run="event.data.priority"))

# Celery's forms: a rate_limit string (a throttle across every worker) and an integer
# priority (the broker's message priority).
declare("flow-celery-rate", "flow/celery-rate", rate_limit="5/s")


def delivery_priority() -> Any:
    from celery import current_task

    return current_task.request.delivery_info.get("priority")


@fanout.function("flow-celery-priority", event="flow/celery-priority", retries=0, priority=7)
def celery_priority(ctx: Context) -> list[Any]:
    """The message priority of its first attempt and of the attempt resumed after a nap."""
    first = ctx.step.run("first", delivery_priority)
    ctx.step.sleep("nap", 0.1)
    return [first, ctx.step.run("second", delivery_priority)]


# -- debounce and batches -----------------------------------------------------------------
declare("flow-debounce", "flow/debounce", debounce=Debounce(0.4, key="event.data.key"))
declare("flow-debounce-cap", "flow/debounce-cap",
        debounce=Debounce(0.4, key="event.data.key", timeout=1.0))


@fanout.function("flow-batch", event="flow/batch", retries=0,
                 batch_events=Batch(3, 0.5, key="event.data.key"))
def batch(ctx: Context) -> list[int]:
    """Records the ``n`` of each event of the batch, in order."""
    d = ctx.event.data
    ns = [e.data["n"] for e in ctx.events]
    ctx.step.run("work", record, d["tag"], json.dumps([d["key"], ns]))
    return ns


# -- singleton and idempotency ------------------------------------------------------------
declare("flow-singleton", "flow/singleton", singleton=Singleton(key="event.data.key"))


@fanout.function("flow-singleton-cancel", event="flow/singleton-cancel", retries=0,
                 singleton=Singleton(key="event.data.key", mode="cancel"))
def singleton_cancel(ctx: Context) -> str:
    """Blocks in ``hold`` until the test sets ``block``, then records ``after``."""
    d = ctx.event.data
    ctx.step.run("hold", record, d["tag"], f"{d['label']}:hold", 0.0, d["block"])
    ctx.step.run("after", record, d["tag"], f"{d['label']}:after")
    return str(d["label"])


declare("flow-idem", "flow/idem", idempotency="event.data.cart_id")
