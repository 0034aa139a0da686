"""The Celery app of the waiting tests that restart workers (``tests/test_waiting.py``).

``python -m celery -A tests.apps.wait_app worker ...`` with ``FANOUT_TEST_REDIS_URL`` and
``FANOUT_TEST_WORKER_TOKEN`` in the environment, as for ``tests/apps/crash_app.py`` (and
with the same readiness key, so ``tests/procs.py`` can start it). Step bodies count their
executions in Redis under ``wait:count:<step>``.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from fanout_celery import Fanout

URL = os.environ["FANOUT_TEST_REDIS_URL"]

app = Celery("wait_app", broker=URL, set_as_current=False)
app.conf.update(
    result_backend=None,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    fanout_lease_seconds=2,
    fanout_pump_interval=0.05,
)
fanout = Fanout(app)
r = redis.Redis.from_url(URL, decode_responses=True)

SLEEP_SECONDS = 3


def count_key(step: str) -> str:
    return f"wait:count:{step}"


def ready_key(token: str) -> str:
    return f"crash:ready:{token}"  # the key tests/procs.py waits for


def _body(step: str) -> int:
    r.incr(count_key(step))
    return os.getpid()


@fanout.function("wait-sleeper", event="test/wait.sleep", retries=0)
def sleeper(ctx: Any) -> dict[str, int]:
    """A step, a durable sleep, a step; each step returns the pid that executed it."""
    before = ctx.step.run("before", _body, "before")
    ctx.step.sleep("nap", SLEEP_SECONDS)
    after = ctx.step.run("after", _body, "after")
    return {"before": before, "after": after}


@worker_ready.connect
def _announce_ready(sender: Any = None, **kwargs: Any) -> None:
    fanout.publish_subscriptions()
    r.set(ready_key(os.environ.get("FANOUT_TEST_WORKER_TOKEN", "")), os.getpid())
