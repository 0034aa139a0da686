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

from .base import worker_app

app, fanout, r = worker_app(
    "crash_app",
    # Stated explicitly: an unacked message of a killed worker comes back only after an
    # hour, so a run can only resume through its fanout lease expiring.
    broker_transport_options={"visibility_timeout": 3600},
)

STEPS = ("s1", "s2", "s3", "s4", "s5")
BLOCKING_STEP = "s3"


def count_key(step: str) -> str:
    return f"crash:count:{step}"


IN_S3 = "crash:in-s3"
RELEASE = "crash:release"



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
