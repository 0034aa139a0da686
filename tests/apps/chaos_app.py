"""The Celery app of the chaos suite (``tests/chaos/``): a parent that fans out to children.

``python -m celery -A tests.apps.chaos_app worker ...`` with ``FANOUT_TEST_REDIS_URL`` and
``FANOUT_TEST_WORKER_TOKEN`` in the environment, and the readiness key of
``tests/apps/crash_app.py`` (so ``tests/procs.py`` can start it).

Every execution of a step body appends a token ``<pid>-<ms>-<random>`` to the Redis list
``chaos:exec:<run id>:<step>`` before it does its (short, random) work, and returns that
token: the test compares the lists with the checkpointed outputs to count re-executions
and to find the process that ran each one. ``chaos-slow`` has one step that sleeps
(``data.seconds``) without touching Redis, counting its executions in ``chaos:slow-started``.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from typing import Any

from fanout_celery import RetryPolicy

from .base import worker_app

PARENT_EVENT = "chaos/parent"
CHILD_EVENT = "chaos/child"
PARENT_STEPS = ("p1", "p2", "p3")
CHILD_STEPS = ("c1", "c2")
CHILDREN = 2
FAN_OUT_STEP = "fan-out"
# Step bodies take 0-STEP_SECONDS, so a kill often lands inside one.
STEP_SECONDS = 0.04
# A message reserved by a worker that is then SIGKILLed stays in the Redis transport's
# "unacked" set until this long after its delivery; any worker's sweep (every second
# here) then puts it back on the queue. Runs tolerate the duplicates this causes.
VISIBILITY_TIMEOUT = 8

app, fanout, r = worker_app(
    "chaos_app",
    broker_transport_options={
        "visibility_timeout": VISIBILITY_TIMEOUT,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    # A run whose message the broker lost before it started (a Redis restart between the
    # worker's BRPOP and its "unacked" bookkeeping) is published again after this long.
    fanout_redispatch_seconds=10,
)
RETRIES = RetryPolicy(max_retries=8, backoff=0.05, backoff_max=1.0, jitter=0)
# FANOUT_TEST_CHECKPOINTS=buffered: the suite runs with buffered checkpoints.
CHECKPOINTS = os.environ.get("FANOUT_TEST_CHECKPOINTS", "").strip() or "durable"


def exec_key(run_id: str, step: str) -> str:
    return f"chaos:exec:{run_id}:{step}"



def body(run_id: str, step: str) -> str:
    token = f"{os.getpid()}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}"
    r.rpush(exec_key(run_id, step), token)
    time.sleep(random.uniform(0, STEP_SECONDS))
    return token


@fanout.function("chaos-parent", event=PARENT_EVENT, retries=RETRIES, checkpoints=CHECKPOINTS)
def parent(ctx: Any) -> dict[str, Any]:
    out: dict[str, Any] = {s: ctx.step.run(s, body, ctx.run_id, s) for s in PARENT_STEPS[:2]}
    out["children"] = ctx.step.send_event(FAN_OUT_STEP, [
        {"name": CHILD_EVENT, "data": {"parent": ctx.run_id, "i": i}} for i in range(CHILDREN)])
    out[PARENT_STEPS[2]] = ctx.step.run(PARENT_STEPS[2], body, ctx.run_id, PARENT_STEPS[2])
    return out


@fanout.function("chaos-child", event=CHILD_EVENT, retries=RETRIES, checkpoints=CHECKPOINTS)
def child(ctx: Any) -> dict[str, Any]:
    return {s: ctx.step.run(s, body, ctx.run_id, s) for s in CHILD_STEPS}


SLOW_EVENT = "chaos/slow"
SLOW_STARTED = "chaos:slow-started"


def slow_body(seconds: float) -> int:
    """Touches Redis only before it sleeps, so it outlives a short Redis outage."""
    r.incr(SLOW_STARTED)
    time.sleep(seconds)
    return os.getpid()


@fanout.function("chaos-slow", event=SLOW_EVENT, retries=RETRIES)
def slow(ctx: Any) -> int:
    return int(ctx.step.run("sleep", slow_body, ctx.event.data["seconds"]))
