"""The Celery app the beat tests run in ``celery beat`` and worker subprocesses.

A 6-field cron function fires every 2 seconds and records its slot in Redis
(``cron:fired``); a user's own ``beat_schedule`` entry (declared before the Fanout)
counts its ticks in ``cron:user-beat``. ``FANOUT_TEST_WORKER_TOKEN`` names the
readiness key ``crash:ready:<token>`` that ``tests/procs.py`` waits for.
"""

from __future__ import annotations

from typing import Any

from .base import URL, worker_app

app, fanout, r = worker_app(
    "cron_app",
    fanout_cron_interval=0.5,
    redbeat_redis_url=URL,
    redbeat_key_prefix="redbeat-test",
    # The user's own schedule, set before any cron function is declared.
    beat_schedule={"user-heartbeat": {"task": "cron_app.user_beat", "schedule": 1.0}},
)


@app.task(name="cron_app.user_beat")
def user_beat() -> None:
    r.incr("cron:user-beat")


def _record(slot_ms: int) -> int:
    r.rpush("cron:fired", slot_ms)
    return slot_ms


@fanout.function("every-two-seconds", cron="* * * * * */2", retries=0)
def every_two_seconds(ctx: Any) -> int:
    return int(ctx.step.run("record", _record, ctx.event.data["scheduled_ms"]))
