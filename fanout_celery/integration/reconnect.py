"""A consumer bootstep that lets a worker outlive a restart of its Redis broker.

When the broker connection breaks, Celery's consumer ``collect()``s the connection: it
closes the channels, then detaches the transport (``transport.client = None``). With
kombu's Redis transport, two things may still use the task channel afterwards:

- closing it again (Celery then ``close()``s the connection): when the first close was
  cut short (its pending ``BRPOP`` reply could not be read), this one tries to restore
  the channel's unacknowledged messages;
- the late acknowledgement of a task that was executing during the outage.

Both need a Redis client, which the channel builds from its transport's connection
details; the transport being detached, that fails with ``AttributeError``. Celery
expects a connection error there (it logs it and carries on); an ``AttributeError`` is
an "unrecoverable error" instead: the consumer stops for good while the worker process
stays up, consuming nothing.

This step makes the task channel of each new broker connection raise a connection error
in that case. The messages concerned stay in the transport's "unacked" set in Redis and
come back after its visibility timeout, as when Redis is down during the restore or ack
(a function run receives such a duplicate as "already done" or "busy").
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

logger = logging.getLogger("fanout.reconnect")


def guard_detached_channel(channel: Any) -> None:
    """Make a kombu Redis ``channel`` raise ``ConnectionError``, not
    ``AttributeError``, when it needs a client after it was closed or its transport
    detached."""
    connparams = getattr(channel, "_connparams", None)
    if connparams is None or getattr(channel, "_fanout_guarded", False) \
            or not type(channel).__module__.startswith("kombu.transport.redis"):
        return

    def guarded(*args: Any, **kwargs: Any) -> Any:
        transport = getattr(channel, "connection", None)  # None once fully closed
        if transport is None or getattr(transport, "client", None) is None:
            # OSError: among the connection errors of kombu's Redis transport, so Celery
            # reconnects instead of stopping its consumer.
            raise ConnectionError(
                "the broker connection of this channel was closed; its unacknowledged "
                "messages come back after the visibility timeout")
        return connparams(*args, **kwargs)

    channel._connparams = guarded
    channel._fanout_guarded = True


class GuardReconnectStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: guards the task channel of each new broker connection."""

    label = "fanout-reconnect"
    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, consumer: Any) -> None:
        connection = getattr(consumer, "connection", None)
        if connection is None:
            return
        try:
            # The task consumer's channel: the one holding unacknowledged messages.
            guard_detached_channel(connection.default_channel)
        except Exception:  # never keep a worker from starting
            logger.warning("reconnect: could not guard the broker channel", exc_info=True)
