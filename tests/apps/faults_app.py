"""The Celery app of the fault tests (``tests/chaos/test_redis_faults.py``), run in worker
subprocesses by ``tests/procs.py``.

- ``fault-cancel-park``: asks for its own cancel while executing, then parks in a sleep:
  the park meets the request. The first time, the worker process dies right there,
  before it can finish the cancel (``FAULT_CRASH`` marks that it did).
- ``fault-work``: one step of ``data.seconds`` that counts its executions in
  ``faults:work:<run id>``; ``fault-fan-out`` sends ``data.n`` events to it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fanout_celery import Event
from fanout_celery.runtime.journal import Journal

from .base import worker_app

FAULT_CRASH = "faults:crashed"
WORK_EVENT = "faults/work"

# A run message the broker lost (a failover between a worker's BRPOP and its "unacked"
# bookkeeping) is published again after this long.
app, fanout, r = worker_app("faults_app", fanout_redispatch_seconds=5)

_finish = Journal.finish


def _finish_or_die(self: Journal, status: str, fields: dict[str, str],
                   steps: list[tuple[str, str]] | None = None) -> None:
    # The worker dies between the park that met the cancel and the finish that records
    # it: a cancelled run must still end cancelled.
    if status == "cancelled" and r.set(FAULT_CRASH, os.getpid(), nx=True):
        os._exit(1)
    _finish(self, status, fields, steps)


Journal.finish = _finish_or_die  # type: ignore[method-assign]


def work_key(run_id: str) -> str:
    return f"faults:work:{run_id}"


@fanout.function("fault-cancel-park", event="faults/cancel-park")
def cancel_park(ctx: Any) -> None:
    ctx.step.run("one", lambda: None)
    fanout.cancel(ctx.run_id, "cancelled while it ran")
    ctx.step.sleep("nap", "1h")


@fanout.function("fault-work", event=WORK_EVENT)
def work(ctx: Any) -> int:
    def body() -> int:
        time.sleep(float(ctx.event.data.get("seconds", 0)))
        return int(r.incr(work_key(ctx.run_id)))

    return int(ctx.step.run("work", body))


@fanout.function("fault-fan-out", event="faults/fan-out")
def fan_out(ctx: Any) -> int:
    n = int(ctx.event.data["n"])
    seconds = ctx.event.data.get("seconds", 0)
    ctx.step.send_event("send", [Event(name=WORK_EVENT, data={"i": i, "seconds": seconds})
                                 for i in range(n)])
    return n
