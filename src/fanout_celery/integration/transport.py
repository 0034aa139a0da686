"""kombu's Redis transport, with the errors a failover or a full Redis raises counted as
connection errors, so Celery reconnects instead of stopping the worker.

Celery keeps consuming through a *connection* error (it reconnects, with back-off); any
other error from the broker stops the consumer, and a late acknowledgement that fails
with one stops the worker process ("Unrecoverable error"). kombu's Redis transport
counts a broken socket as a connection error, but not the replies a Redis gives while it
cannot take writes for now:

- ``OOM`` (``maxmemory`` reached with ``noeviction``): kombu acknowledges in a
  ``MULTI`` block, which Redis refuses;
- ``READONLY`` (a coordinated failover demoted the primary), ``LOADING``,
  ``MASTERDOWN``, ``TRYAGAIN``, ``CLUSTERDOWN``.

``Transport`` below adds those (``store.redis.TRANSIENT``) to its ``connection_errors``.
A refused ack is then logged and the message stays unacknowledged (kombu restores it;
the run's lease or dispatch cover in the store brings the run back either way), and a
refused ``BRPOP`` makes the consumer reconnect until Redis takes writes again.

A refused acknowledgement still frees the message's prefetch slot (``QoS``), or a few of
them would stop the consumer taking messages for good.

It also guards the task channel of a connection Celery has already collected (after a
connection error it closes the channels and detaches the transport): a late ack or a
restore of unacknowledged messages then needs a client the channel can no longer build,
and kombu raised ``AttributeError`` there, which stopped the consumer for good. The
guard raises a connection error instead; the messages concerned come back after the
visibility timeout.

``use_guarded_transport(app)`` makes an app's Redis broker use it (``Fanout`` does it
unless ``fanout_broker_transport = False``). ``tests/test_transport.py`` fails if a kombu
upgrade moves the hooks this relies on.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from ..model.settings import read_setting
from ..store.redis import TRANSIENT

logger = logging.getLogger("fanout.transport")

TRANSPORT = "fanout_celery.integration.transport:Transport"
# Broker URL schemes served by kombu's Redis transport that this one replaces. A rediss://
# broker is replaced only when broker_use_ssl is set: kombu reads its TLS defaults from
# the scheme name otherwise.
SCHEMES = ("redis://", "redis+socket://", "socket://")


class QoS(kombu_redis.QoS):
    """kombu's Redis QoS, which frees a message's prefetch slot even when Redis refused
    to forget the message (its ack or reject raised).

    The message's entry then stays in Redis's "unacked" set and comes back after the
    visibility timeout (the run answers "done" or "busy"); without this, a few refused
    acks would fill the prefetch window and the worker would never consume again."""

    def ack(self, delivery_tag: Any) -> None:
        try:
            self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        try:
            if requeue:
                self.restore_by_tag(delivery_tag, leftmost=True)
            else:
                self._remove_from_indices(delivery_tag).execute()
        finally:
            virtual.QoS.ack(self, delivery_tag)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, which refuses to build a client once its transport is
    detached (raising a connection error, not ``AttributeError``)."""

    QoS = QoS

    def _connparams(self, asynchronous: bool = False) -> Any:
        transport = getattr(self, "connection", None)  # None once fully closed
        if transport is None or getattr(transport, "client", None) is None:
            # OSError: among the connection errors of the transport, so Celery
            # reconnects instead of stopping its consumer.
            raise ConnectionError(
                "the broker connection of this channel was closed; its unacknowledged "
                "messages come back after the visibility timeout")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport; see the module docstring."""

    Channel = Channel
    connection_errors = tuple(dict.fromkeys(
        (*kombu_redis.Transport.connection_errors, *TRANSIENT)))


def use_guarded_transport(app: Any) -> bool:
    """Make ``app``'s Redis broker use ``Transport``, unless the app chose a transport of
    its own or ``fanout_broker_transport`` is False. Returns whether it does."""
    conf = app.conf
    url = conf.broker_url or ""
    if not read_setting(app, "broker_transport") or conf.broker_transport:
        return bool(conf.broker_transport == TRANSPORT)
    if not isinstance(url, str) or ";" in url:
        return False  # failover URL lists: each may name another transport
    if url.startswith(SCHEMES) or (url.startswith("rediss://") and conf.broker_use_ssl):
        conf.broker_transport = TRANSPORT
        return True
    return False
