"""The Celery app the crash tests run in worker subprocesses.

``python -m celery -A tests.apps.crash_app worker ...`` with ``FANOUT_TEST_REDIS_URL``
(broker and fanout state) and ``FANOUT_TEST_WORKER_TOKEN`` (readiness key) in the
environment. Step bodies record what they do in Redis, because the test process cannot
see the worker's memory: ``crash:count:<step>`` counts executions of each step body,
``crash:in-s3`` holds the pid executing ``s3``, which then blocks until the test sets
``crash:release``. The key names are mirrored in ``tests/procs.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from fanout_celery import Fanout

URL = os.environ["FANOUT_TEST_REDIS_URL"]

app = Celery("crash_app", broker=URL, set_as_current=False)
app.conf.update(
    result_backend=None,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    # Stated explicitly: an unacked message of a killed worker comes back only after an
    # hour, so a run can only resume through its fanout lease expiring.
    broker_transport_options={"visibility_timeout": 3600},
    fanout_lease_seconds=2,
    fanout_pump_interval=0.05,
)
fanout = Fanout(app)
r = redis.Redis.from_url(URL, decode_responses=True)

STEPS = ("s1", "s2", "s3", "s4", "s5")
BLOCKING_STEP = "s3"


def count_key(step: str) -> str:
    return f"crash:count:{step}"


IN_S3 = "crash:in-s3"
RELEASE = "crash:release"


def ready_key(token: str) -> str:
    return f"crash:ready:{token}"


def _body(step: str) -> int:
    r.incr(count_key(step))
    if step == BLOCKING_STEP:
        r.set(IN_S3, os.getpid())
        deadline = time.monotonic() + 60
        while not r.exists(RELEASE):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never released s3")
            time.sleep(0.02)
    return os.getpid()


@fanout.function("crash-steps", event="test/crash.start", retries=0)
def crash_steps(ctx: Any) -> dict[str, int]:
    """Five steps; each returns the pid of the process that executed its body."""
    return {step: ctx.step.run(step, _body, step) for step in STEPS}


@worker_ready.connect
def _announce_ready(sender: Any = None, **kwargs: Any) -> None:
    # Publish the subscriptions first, so that a test process with no functions can
    # invoke ours as soon as it sees the ready key.
    fanout.publish_subscriptions()
    r.set(ready_key(os.environ.get("FANOUT_TEST_WORKER_TOKEN", "")), os.getpid())
