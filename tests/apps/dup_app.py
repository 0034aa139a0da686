"""The Celery app of the redelivery test (``tests/test_duplicates.py``).

``python -m celery -A tests.apps.dup_app worker ...`` with ``FANOUT_TEST_REDIS_URL`` and
``FANOUT_TEST_WORKER_TOKEN`` in the environment, and the readiness key of
``tests/apps/crash_app.py``. The broker's visibility timeout is 2 s, and every second a
worker puts back on the queue the messages unacknowledged for longer: a run held longer
than that in a step has its message delivered a second time while it executes.

Redis keys written: ``dup:count:<step>`` counts executions of each step body,
``dup:deliveries`` lists ``<task id> <redelivered flag>`` per delivery of a run's message
and ``dup:outcomes`` what each delivery's task returned; the ``hold`` step waits until
the test sets ``dup:release``.
"""

from __future__ import annotations

import time
from typing import Any

from celery.signals import task_postrun, task_prerun

from .base import worker_app

app, fanout, r = worker_app(
    "dup_app",
    broker_transport_options={
        "visibility_timeout": 2,
        # kombu sweeps for expired messages every 10 s x 10 calls by default.
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
)

DELIVERIES = "dup:deliveries"
OUTCOMES = "dup:outcomes"
RELEASE = "dup:release"


def count_key(step: str) -> str:
    return f"dup:count:{step}"



def hold() -> str:
    r.incr(count_key("hold"))
    deadline = time.monotonic() + 60
    while not r.exists(RELEASE):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never released the hold step")
        time.sleep(0.05)
    return "held"


def after() -> str:
    r.incr(count_key("after"))
    return "after"


@fanout.function("dup-hold", event="test/dup.hold", retries=0)
def held(ctx: Any) -> list[str]:
    return [ctx.step.run("hold", hold), ctx.step.run("after", after)]


@task_prerun.connect
def _delivered(task_id: str = "", task: Any = None, **kwargs: Any) -> None:
    if task is not None and task.name == "fanout.dup-hold":
        redelivered = bool((task.request.delivery_info or {}).get("redelivered"))
        r.rpush(DELIVERIES, f"{task_id} {redelivered}")


@task_postrun.connect
def _finished(task: Any = None, retval: Any = None, **kwargs: Any) -> None:
    if task is not None and task.name == "fanout.dup-hold":
        r.rpush(OUTCOMES, str(retval))
