"""Publishing run messages: Celery's own publisher, or a pipelined fast path.

A run's task message is always the same but for its run id and task id. On a Redis
broker, with the function's queue on a direct exchange (Celery's default), the fast path
builds each message from a template made once with Celery's own ``as_task_v2`` and
pushes a chunk of them in one pipeline, as kombu's Redis transport would one by one.
Anything else — another broker, a topic or fanout exchange, ``task_send_sent_event``,
``fanout_fast_publish = False`` — goes through ``app.send_task`` (batched by kombu where
it can), so publish signals and sent events keep working there.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis

from .store.redis import connect

logger = logging.getLogger("fanout.publish")

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")
TID, TAG, BODY = "@@fanout-tid@@", "@@fanout-tag@@", "@@fanout-body@@"
EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'


class FastPublisher:
    """Pipelined publishing of run messages straight into a Redis broker's queues."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._client: redis.Redis[str] | None = None
        self._templates: dict[tuple[str, str], tuple[str, str] | None] = {}
        url = app.conf.broker_url
        options = app.conf.broker_transport_options or {}
        self.enabled = (
            bool(app.conf.get("fanout_fast_publish", True))
            and isinstance(url, str) and url.startswith(REDIS_SCHEMES)
            and ";" not in url  # failover URL lists: let kombu choose the server
            and not app.conf.task_send_sent_event
        )
        self._prefix = str(options.get("global_keyprefix", "") or "")

    @property
    def client(self) -> redis.Redis[str]:
        if self._client is None:
            self._client = connect(self.app.conf.broker_url)
        return self._client

    def _template(self, task: str, queue: str) -> tuple[str, str] | None:
        """``(redis list key, envelope with placeholders)`` or None: use the slow path."""
        cached = self._templates.get((task, queue), False)
        if cached is not False:
            return cached  # type: ignore[return-value]
        template = self._build(task, queue)
        self._templates[(task, queue)] = template
        return template

    def _build(self, task: str, queue: str) -> tuple[str, str] | None:
        amqp = self.app.amqp
        options: dict[str, Any] = {"queue": queue} if queue else {}
        route = amqp.router.route(options, task, (), {})
        q = route.get("queue")
        if q is None or getattr(q, "exchange", None) is None or q.exchange.type != "direct" \
                or set(route) - {"queue"}:
            return None
        msg = amqp.as_task_v2(TID, task, args=["@@rid@@"], kwargs={"event": "@@event@@"},
                              ignore_result=True)
        headers = msg.headers
        envelope = {
            "body": BODY, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": TID, "reply_to": self.app.thread_oid, "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": q.name}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": TAG,
            },
        }
        return self._prefix + q.name, json.dumps(envelope)

    def publish(self, runs: Sequence[tuple[str, str, str, str]]) -> bool:
        """Publish ``(run_id, task, queue, event_name)`` messages; False when the fast path
        does not apply to one of them (nothing was published then)."""
        if not self.enabled or not runs:
            return False
        by_key: dict[str, list[str]] = {}
        for run_id, task, queue, event_name in runs:
            template = self._template(task, queue)
            if template is None:
                return False
            key, envelope = template
            # Run ids are hex and event names cannot hold quotes or backslashes, so
            # they are put in the JSON as they are.
            body = (f'[["{run_id}"], {{"event": "{event_name}"}}, {EMBED}]').encode()
            by_key.setdefault(key, []).append(
                envelope.replace(TID, str(uuid.uuid4())).replace(TAG, str(uuid.uuid4()))
                .replace("@@rid@@", run_id).replace("@@event@@", event_name)
                .replace(BODY, base64.b64encode(body).decode()))
        pipe = self.client.pipeline(transaction=False)
        for key, messages in by_key.items():
            # One LPUSH of many values keeps their order: the first is consumed first.
            pipe.lpush(key, *messages)
        pipe.execute()
        return True
