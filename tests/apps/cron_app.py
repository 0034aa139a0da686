"""The Celery app the beat tests run in ``celery beat`` and worker subprocesses.

A 6-field cron function fires every 2 seconds and records its slot in Redis
(``cron:fired``); a user's own ``beat_schedule`` entry (declared before the Fanout)
counts its ticks in ``cron:user-beat``. ``FANOUT_TEST_WORKER_TOKEN`` names the
readiness key ``crash:ready:<token>`` that ``tests/procs.py`` waits for.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

from fanout_celery import Fanout

URL = os.environ["FANOUT_TEST_REDIS_URL"]

app = Celery("cron_app", broker=URL, set_as_current=False)
app.conf.update(
    result_backend=None,
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    fanout_lease_seconds=2,
    fanout_pump_interval=0.05,
    fanout_cron_interval=0.5,
    redbeat_redis_url=URL,
    redbeat_key_prefix="redbeat-test",
    # The user's own schedule, set before any cron function is declared.
    beat_schedule={"user-heartbeat": {"task": "cron_app.user_beat", "schedule": 1.0}},
)
fanout = Fanout(app)
r = redis.Redis.from_url(URL, decode_responses=True)


@app.task(name="cron_app.user_beat")
def user_beat() -> None:
    r.incr("cron:user-beat")


def _record(slot_ms: int) -> int:
    r.rpush("cron:fired", slot_ms)
    return slot_ms


@fanout.function("every-two-seconds", cron="* * * * * */2", retries=0)
def every_two_seconds(ctx: Any) -> int:
    return int(ctx.step.run("record", _record, ctx.event.data["scheduled_ms"]))


@worker_ready.connect
def _announce_ready(sender: Any = None, **kwargs: Any) -> None:
    fanout.publish_subscriptions()
    r.set(f"crash:ready:{os.environ.get('FANOUT_TEST_WORKER_TOKEN', '')}", os.getpid())
