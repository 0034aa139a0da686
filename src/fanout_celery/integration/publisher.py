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
import os
import re
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from celery import current_task

from ..model.records import Route, RunMessage
from ..store.redis.broker import BrokerQueues

logger = logging.getLogger("fanout.publish")

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+socket://")
TID, TAG, BODY = "@@fanout-tid@@", "@@fanout-tag@@", "@@fanout-body@@"
PARENT, ROOT = "@@fanout-parent@@", "@@fanout-root@@"
EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
# The placeholders of a message template, in the order of the values that fill them.
SLOTS = (f'"{PARENT}"', ROOT, TID, TAG, "@@rid@@", "@@event@@", BODY)
_SLOT_RE = re.compile("(" + "|".join(re.escape(slot) for slot in SLOTS) + ")")
# Messages published by kombu are batched in chunks of at most this many.
BATCH = 1000


def uuid4() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` without the object."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Template:
    """A message envelope cut at its placeholders: filled in one pass."""

    def __init__(self, envelope: str) -> None:
        parts = _SLOT_RE.split(envelope)
        self.literals = parts[0::2]
        self.slots = [SLOTS.index(p) for p in parts[1::2]]

    def fill(self, values: Sequence[str]) -> str:
        out = [self.literals[0]]
        for slot, literal in zip(self.slots, self.literals[1:], strict=True):
            out.append(values[slot])
            out.append(literal)
        return "".join(out)


def _batch(producer: Any) -> AbstractContextManager[Any]:
    """Pipeline the messages published in the block when kombu can (its Redis
    transport, kombu >= 5.7): one round trip per chunk instead of one per message."""
    batch = getattr(producer, "batch", None)
    return batch(max_size=BATCH) if batch is not None else nullcontext()


class CeleryBroker:
    """The engine's ``Broker`` port on a Celery app."""

    def __init__(self, app: Any, fast: bool) -> None:
        self.app = app
        self._templates: dict[tuple[str, str], tuple[str, Template] | None] = {}
        url = app.conf.broker_url
        options = app.conf.broker_transport_options or {}
        self.fast = (
            fast and isinstance(url, str) and url.startswith(REDIS_SCHEMES)
            and ";" not in url  # failover URL lists: let kombu choose the server
            and not app.conf.task_send_sent_event
        )
        self._queues = BrokerQueues(url) if self.fast else None
        self._prefix = str(options.get("global_keyprefix", "") or "")

    def publish(self, messages: Sequence[RunMessage]) -> None:
        if not messages:
            return
        if self.fast and self._publish_fast(messages):
            return
        with self.app.producer_or_acquire() as producer, _batch(producer):
            for message in messages:
                self.send(message, producer)

    def context(self) -> dict[str, str]:
        """The task this process is executing, so that the runs it creates (and each of
        their attempts, published later by the pump) link to it in Flower."""
        task = current_task
        request = getattr(task, "request", None) if task else None
        task_id = getattr(request, "id", None)
        if not task_id:
            return {}
        return {"parent_task": str(task_id),
                "root_task": str(getattr(request, "root_id", None) or task_id)}

    def send(self, message: RunMessage, producer: Any = None) -> None:
        """Publish one run's message with ``app.send_task``. The run id is the only
        argument that matters; the event name rides along so Flower shows it."""
        route = message.route
        options: dict[str, Any] = {"producer": producer} if producer is not None else {}
        if route.queue:
            options["queue"] = route.queue
        if route.parent_task:
            options.update(parent_id=route.parent_task, root_id=route.root_task)
        if route.priority is not None:
            options["priority"] = route.priority
        self.app.send_task(route.task, args=[message.run_id],
                           kwargs={"event": route.event_name} if route.event_name else None,
                           serializer="json", **options)

    # -- the fast path ----------------------------------------------------------------
    def _template(self, route: Route) -> tuple[str, Template] | None:
        """``(redis list key, envelope with placeholders)`` or None: use the slow path."""
        key = (route.task, route.queue)
        if key not in self._templates:
            self._templates[key] = self._build(route.task, route.queue)
        return self._templates[key]

    def _build(self, task: str, queue: str) -> tuple[str, Template] | None:
        amqp = self.app.amqp
        options: dict[str, Any] = {"queue": queue} if queue else {}
        route = amqp.router.route(options, task, (), {})
        q = route.get("queue")
        if q is None or getattr(q, "exchange", None) is None or q.exchange.type != "direct" \
                or set(route) - {"queue"}:
            return None
        msg = amqp.as_task_v2(TID, task, args=["@@rid@@"], kwargs={"event": "@@event@@"},
                              ignore_result=True, root_id=ROOT, parent_id=PARENT)
        envelope = {
            "body": BODY, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": msg.headers,
            "properties": {
                "correlation_id": TID, "reply_to": self.app.thread_oid, "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": q.name}, "priority": 0,
                "body_encoding": "base64", "delivery_tag": TAG,
            },
        }
        return self._prefix + q.name, Template(json.dumps(envelope))

    def _publish_fast(self, messages: Sequence[RunMessage]) -> bool:
        """False when the fast path does not apply to one of them (nothing published)."""
        assert self._queues is not None
        by_key: dict[str, list[str]] = {}
        for message in messages:
            if message.route.priority is not None:
                return False  # a message priority is Celery's to encode
            template = self._template(message.route)
            if template is None:
                return False
            key, envelope = template
            run_id, event_name = message.run_id, message.route.event_name
            parent, root = message.route.parent_task, message.route.root_task
            # Run ids are hex and event names cannot hold quotes or backslashes, so
            # they are put in the JSON as they are.
            body = (f'[["{run_id}"], {{"event": "{event_name}"}}, {EMBED}]').encode()
            task_id = uuid4()
            by_key.setdefault(key, []).append(envelope.fill((
                json.dumps(parent) if parent else "null", root or task_id, task_id, uuid4(),
                run_id, event_name, base64.b64encode(body).decode())))
        self._queues.push(by_key)
        return True
