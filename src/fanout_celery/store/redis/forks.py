"""redis-py clients that a forked child can use.

Celery's prefork pool forks its children from a worker whose own threads (the pump, the
lease keeper) use the same clients. redis-py's connection pool notices a fork (its pid
changed) and resets itself at the child's first command; but since redis-py 8 that reset
takes the pool's ``_lock``, and a lock that a parent thread held at the instant of the
fork stays locked in the child for ever: the child hangs at its first command (found by
``tests/test_duplicates.py``: a pool child, forked while the pump held the pool's lock,
hung in ``ConnectionPool.reset``). The same holds for the cluster client's locks.

Each client made by ``connect`` is registered here; right after a fork, the child gives
its pools and cluster maps new, released locks, before anything uses them. The pools
then reset as redis-py intends, opening new connections.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from typing import Any

_clients: weakref.WeakSet[Any] = weakref.WeakSet()
_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())


def guard(client: Any) -> Any:
    """Register ``client`` (a ``Redis`` or ``RedisCluster``); returns it."""
    _clients.add(client)
    return client


def _parts(client: Any) -> Iterator[Any]:
    """The objects of a client that hold locks: itself, its pool; for a cluster, its map
    of nodes and each node's client and pool."""
    yield client
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        yield pool
    nodes = getattr(client, "nodes_manager", None)
    if nodes is not None:
        yield nodes
        for node in list(getattr(nodes, "nodes_cache", {}).values()):
            node_client = getattr(node, "redis_connection", None)
            if node_client is not None:
                yield node_client
                if node_client.connection_pool is not None:
                    yield node_client.connection_pool


def _renew_locks(part: Any) -> None:
    try:
        fields = list(vars(part).items())
    except TypeError:  # no __dict__
        return
    for name, value in fields:
        if isinstance(value, _RLOCK):
            setattr(part, name, threading.RLock())
        elif isinstance(value, _LOCK):
            setattr(part, name, threading.Lock())


def _after_fork_in_child() -> None:
    for client in list(_clients):
        for part in _parts(client):
            _renew_locks(part)


os.register_at_fork(after_in_child=_after_fork_in_child)
