"""The Celery app of the parallel-step crash test (``tests/test_parallel.py``).

``python -m celery -A tests.apps.parallel_app worker ...`` with ``FANOUT_TEST_REDIS_URL``
and ``FANOUT_TEST_WORKER_TOKEN`` in the environment, as for ``tests/apps/crash_app.py``
(and with the same readiness key, so ``tests/procs.py`` can start it). Step bodies count
their executions in Redis under ``parallel:count:<step>``; each branch body adds the pid
executing it to ``parallel:in-branch:<i>`` and then blocks until the test sets
``parallel:release``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from .base import worker_app

app, fanout, r = worker_app(
    "parallel_app",
    # An unacked message of a killed worker comes back only after an hour, so the runs
    # can only resume through their fanout leases expiring.
    broker_transport_options={"visibility_timeout": 3600},
)

BRANCHES = 3
RELEASE = "parallel:release"


def count_key(step: str) -> str:
    return f"parallel:count:{step}"


def in_branch_key(index: int) -> str:
    return f"parallel:in-branch:{index}"



def _count(step: str) -> int:
    r.incr(count_key(step))
    return os.getpid()


def _branch(index: int) -> int:
    r.incr(count_key(f"branch{index}"))
    r.sadd(in_branch_key(index), os.getpid())
    deadline = time.monotonic() + 60
    while not r.exists(RELEASE):
        if time.monotonic() > deadline:
            raise RuntimeError("the test never released the branches")
        time.sleep(0.02)
    return index * 10


@fanout.function("parallel-steps", event="test/parallel.start", retries=0)
def parallel_steps(ctx: Any) -> dict[str, Any]:
    """A step, a group of blocking branches, a step; returns what each produced."""
    before = ctx.step.run("before", _count, "before")
    results = ctx.step.parallel("group", [
        (lambda i=i: ctx.step.run(f"branch{i}", _branch, i)) for i in range(BRANCHES)])
    after = ctx.step.run("after", _count, "after")
    return {"before": before, "branches": results, "after": after}
