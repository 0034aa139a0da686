"""The Celery app of the waiting tests that restart workers (``tests/test_waiting.py``).

``python -m celery -A tests.apps.wait_app worker ...`` with ``FANOUT_TEST_REDIS_URL`` and
``FANOUT_TEST_WORKER_TOKEN`` in the environment, as for ``tests/apps/crash_app.py`` (and
with the same readiness key, so ``tests/procs.py`` can start it). Step bodies count their
executions in Redis under ``wait:count:<step>``.
"""

from __future__ import annotations

import os
from typing import Any

from .base import worker_app

app, fanout, r = worker_app(
    "wait_app",

)

SLEEP_SECONDS = 3


def count_key(step: str) -> str:
    return f"wait:count:{step}"



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
