"""The Celery app of the upgrade test (``tests/test_upgrade.py``), imported by workers
and senders of this release and of 0.1.0 alike: it uses only what 0.1.0 has, and
imports nothing else of the tests.

``FANOUT_TEST_REDIS_URL`` names the Redis (broker and state), ``FANOUT_TEST_WORKER_TOKEN``
the readiness key (as ``tests/procs.py`` waits for it), and ``FANOUT_UPGRADE_ROLLING=1``
gives a process of this release the setting a rolling upgrade needs
(``fanout_compact_records = False``: records that 0.1.0 reads). Step bodies count their
executions under ``upgrade:count:<run id>:<step>`` and note which release ran them.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery
from celery.signals import worker_ready

import fanout_celery
from fanout_celery import Fanout

URL = os.environ["FANOUT_TEST_REDIS_URL"]
RELEASE = fanout_celery.__version__

app = Celery("upgrade_app", broker=URL, set_as_current=False)
app.conf.update({
    "fanout_redis_url": URL,
    "result_backend": None,
    "task_default_queue": "celery",
    "broker_connection_retry_on_startup": True,
    "fanout_lease_seconds": 2,
    "fanout_pump_interval": 0.05,
})
if os.environ.get("FANOUT_UPGRADE_ROLLING") == "1" and RELEASE != "0.1.0":
    app.conf.fanout_compact_records = False
fanout = Fanout(app)
r = redis.Redis.from_url(URL, decode_responses=True)


def _body(run_id: str, step: str) -> str:
    r.incr(f"upgrade:count:{run_id}:{step}")
    r.sadd(f"upgrade:releases:{step}", RELEASE)
    return RELEASE


@fanout.function("upgrade-flow", event="upgrade/start", retries=0)
def flow(ctx: Any) -> dict[str, Any]:
    """A step, a durable sleep, a wait for an event, a step: each part may run on a
    worker of either release."""
    first = ctx.step.run("first", _body, ctx.run_id, "first")
    ctx.step.sleep("nap", 1)
    go = ctx.step.wait_for_event("go", event="upgrade/go", timeout="5m", match="data.key")
    last = ctx.step.run("last", _body, ctx.run_id, "last")
    return {"first": first, "last": last, "answer": None if go is None else go.data["n"]}


def announce_ready(sender: Any = None, **kwargs: Any) -> None:
    fanout.publish_subscriptions()
    r.set(f"crash:ready:{os.environ.get('FANOUT_TEST_WORKER_TOKEN', '')}", os.getpid())


worker_ready.connect(announce_ready, weak=False)
