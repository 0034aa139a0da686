"""Pushing prepared messages straight into a kombu Redis broker's queues.

Used by the Celery integration's fast publish path (``integration/publisher.py``), which
builds each message with Celery's own encoder; this module only speaks Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis

from .connect import connect


class BrokerQueues:
    """The lists of a Redis broker, written in one pipeline per call."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis[str] | None = None

    @property
    def client(self) -> redis.Redis[str]:
        if self._client is None:
            self._client = connect(self.url)
        return self._client

    def push(self, messages: Mapping[str, Sequence[str]]) -> None:
        """LPUSH each list's messages; kombu's Redis transport consumes with BRPOP, so
        the first message of each list is consumed first."""
        pipe = self.client.pipeline(transaction=False)
        for key, items in messages.items():
            if items:
                pipe.lpush(key, *items)
        pipe.execute()
