"""The store's reads for ``async`` code, on ``redis.asyncio``.

A ``redis.asyncio`` client belongs to the event loop it was first used in, so there is
one per loop (an application may run several: a test suite, a thread with its own loop).
A waiter (``wait_finished``) holds one connection of its loop's pool while it blocks.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .base import expand
from .connect import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    OWN_OPTIONS,
    RETRIES,
    TRANSIENT,
    cluster_nodes,
    is_cluster,
    sentinel_target,
)
from .keys import Keys


def connect_async(url: str, redis_options: dict[str, Any] | None = None
                  ) -> aredis.Redis[str]:
    """An asyncio client for ``url`` (or a Sentinel service), retrying transient errors
    as ``connect`` does."""
    options = redis_options or {}
    target = sentinel_target(url, options)
    settings: dict[str, Any] = {
        "decode_responses": True, "health_check_interval": 30, "socket_keepalive": True,
        "retry": Retry(ExponentialBackoff(cap=BACKOFF_CAP, base=BACKOFF_BASE), RETRIES,
                       supported_errors=TRANSIENT),  # type: ignore[arg-type]
        "retry_on_error": list(TRANSIENT)}
    if target is not None:
        from redis.asyncio.sentinel import Sentinel

        settings.update(target.connection)
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=target.sentinel_kwargs,
                            **settings)
        master: aredis.Redis[str] = sentinel.master_for(target.service_name, **settings)
        return master
    if is_cluster(url, options):
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        nodes, login = cluster_nodes(url)
        settings.pop("health_check_interval")
        settings.update(login)
        settings.update({k: v for k, v in options.items() if k not in OWN_OPTIONS + ("db",)})
        cluster: aredis.Redis[str] = RedisCluster(  # type: ignore[assignment]
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            require_full_coverage=False, **settings)
        return cluster
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    settings.update({k: v for k, v in options.items() if k not in OWN_OPTIONS})
    client: aredis.Redis[str] = aredis.Redis.from_url(url, **settings)
    return client


class AsyncRedisReader:
    """``load_runs`` and ``wait_finished`` of ``RedisStore``, awaited."""

    def __init__(self, url: str, keys: Keys, options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.keys = keys
        self.options = dict(options or {})
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aredis.Redis[str]] = \
            weakref.WeakKeyDictionary()

    def _client(self) -> aredis.Redis[str]:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = connect_async(self.url, self.options)
        return client

    async def load_runs(self, run_ids: Sequence[str]
                        ) -> list[tuple[dict[str, str], dict[str, str]]]:
        pipe = self._client().pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(self.keys.steps(run_id))
        raw: list[Any] = await pipe.execute()
        return [(expand(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]

    async def wait_finished(self, run_id: str, timeout: float) -> bool:
        key = self.keys.done(run_id)
        moved = await self._client().blmove(key, key, timeout, "RIGHT", "LEFT")
        return moved is not None

    async def aclose(self) -> None:
        """Close the client of the running loop (the others close with their loops)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()  # type: ignore[attr-defined]
