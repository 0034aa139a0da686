"""What every test worker app shares: the Redis it is pointed at, the settings that make
recovery quick, and the readiness signal ``tests/procs.py`` waits for.

A worker subprocess runs ``celery -A tests.apps.<name>`` with ``FANOUT_TEST_REDIS_URL``
(fanout state unless ``FANOUT_TEST_STATE_URL`` names another, such as a Redis Cluster;
the broker unless ``FANOUT_TEST_BROKER_URL`` names another, such as a RabbitMQ; the app's
own bookkeeping) and ``FANOUT_TEST_WORKER_TOKEN`` in its environment; once the
worker is ready it publishes its subscriptions (a test process that declares no functions
routes through them) and then writes its pid under ``crash:ready:<token>``.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

import redis
from celery import Celery
from celery.signals import worker_ready

from fanout_celery import Fanout
from fanout_celery.store.redis import connect

URL = os.environ["FANOUT_TEST_REDIS_URL"]
BROKER_URL = os.environ.get("FANOUT_TEST_BROKER_URL", "").strip() or URL


def _state_url() -> str:
    """The session's state Redis when it is not URL: a Redis Cluster
    (FANOUT_TEST_STATE=cluster), for workers on the session's Redis only; a test that
    starts a Redis of its own (a restart, a failover) keeps the state there."""
    state = os.environ.get("FANOUT_TEST_STATE_URL", "").strip()
    session = os.environ.get("FANOUT_TEST_SESSION_REDIS", "").strip()
    if state and (not session or urlsplit(session).netloc == urlsplit(URL).netloc):
        return state
    return URL


STATE_URL = _state_url()


def ready_key(token: str) -> str:
    return f"crash:ready:{token}"


def worker_app(name: str, **conf: Any) -> tuple[Celery, Fanout, redis.Redis[str]]:
    """A Celery app on the test Redis (and broker), its Fanout, and a Redis client for the
    app's own bookkeeping. ``conf`` is applied before the Fanout is created (a lease of
    2 s and a pump every 0.05 s unless given)."""
    app = Celery(name, broker=BROKER_URL, set_as_current=False)
    app.conf.update({
        "fanout_redis_url": STATE_URL,
        "result_backend": None,
        "task_default_queue": "celery",
        "broker_connection_retry_on_startup": True,
        "fanout_lease_seconds": 2,
        "fanout_pump_interval": 0.05,
        # On RabbitMQ, the AMQP heartbeat's timer makes Celery's event loop poll for up to
        # 10 s, and a warm shutdown waits for that poll: without it, a stop takes ~1 s.
        **({"broker_heartbeat": 0} if BROKER_URL.startswith("amqp") else {}),
        **conf,
    })
    fanout = Fanout(app)
    # The package's client: it retries what a failover or a full Redis refuses for now.
    client: redis.Redis[str] = connect(URL)

    def announce_ready(sender: Any = None, **kwargs: Any) -> None:
        fanout.publish_subscriptions()
        client.set(ready_key(os.environ.get("FANOUT_TEST_WORKER_TOKEN", "")), os.getpid())

    worker_ready.connect(announce_ready, weak=False)
    return app, fanout, client
