"""The Celery app of the pump opt-out test: a function that sleeps, on its own queue.

Its workers run with ``--queues=sleepers``; a worker started ``--without-fanout-pump``
executes the run but never wakes it, a worker with the pump (on another queue) does.
"""

from __future__ import annotations

from typing import Any

from .base import worker_app

app, fanout, r = worker_app("pump_app")

QUEUE = "sleepers"


@fanout.function("pump-napper", event="test/pump.nap", queue=QUEUE, retries=0)
def napper(ctx: Any) -> str:
    ctx.step.run("before", lambda: None)
    ctx.step.sleep("nap", 0.2)
    return "woken"
