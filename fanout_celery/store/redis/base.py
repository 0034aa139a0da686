"""What every part of the Redis store shares: the client, the key layout, the scripts,
and the encoding of a run record's static fields."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import redis

from ...errors import CancelRequested, LeaseLostError
from ...model.records import Route, route_of_meta
from ..port import Resolution
from .connect import DEFAULT_SHARDS, ReplicatedClient, connect, is_cluster, is_transient
from .keys import Keys
from .lua import Scripts, execute

# Fields of a run record set once at creation are kept in one JSON field, "meta", so a
# run is created with a handful of arguments; the fields that change stay separate.
HOT_FIELDS = frozenset({"status", "created_at", "attempt", "events"})

_SCRIPTS: Scripts | None = None


def _scripts() -> Scripts:
    global _SCRIPTS
    if _SCRIPTS is None:  # read once per process: the sources never change
        _SCRIPTS = Scripts()
    return _SCRIPTS


class RedisBase:
    """One client, one prefix."""

    def __init__(self, url: str, prefix: str = "fanout",
                 client: redis.Redis[str] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.url = url
        self.prefix = prefix
        self.options = dict(options or {})
        # A Redis Cluster: sharded keys, and pipelines executed in ordered phases (a
        # cluster pipeline runs each master's part at once, in no order between them).
        self.cluster = is_cluster(url, self.options)
        self.keys = Keys(prefix, int(self.options.get("shards") or DEFAULT_SHARDS)
                         if self.cluster else 0)
        if client is None:
            client = connect(url, self.options)
            replicas = int(self.options.get("wait_replicas") or 0)
            if replicas:
                timeout_ms = int(float(self.options.get("wait_timeout", 1.0)) * 1000)
                client = ReplicatedClient(client, replicas, timeout_ms)  # type: ignore[assignment]
        self.client: redis.Redis[str] = client
        self.scripts = _scripts()
        # The match paths waiters and cancel_on entries of each event name were last seen
        # using (note_events.lua corrects it when it is out of date).
        self._paths: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.prefix!r}>"

    def close(self) -> None:
        self.client.close()

    def transient(self, exc: BaseException) -> bool:
        return is_transient(exc)

    def by_shard(self, run_ids: Sequence[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for run_id in run_ids:
            out.setdefault(self.keys.shard_of(run_id), []).append(run_id)
        return out

    # -- one execution ----------------------------------------------------------------

    def pipeline(self) -> Any:
        """A non-transactional pipeline (a cluster pipeline on a cluster)."""
        return self.client.pipeline(transaction=False)

    def phase(self, pipe: Any) -> Any:
        """End a phase of ordered writes: on a cluster, execute ``pipe`` now (what
        follows must not start before it) and return ``(results, new pipeline)``; on one
        Redis, whose pipeline runs in order, keep queuing (``([], pipe)``)."""
        if not self.cluster:
            return [], pipe
        return execute(pipe, self.scripts, self.client), self.pipeline()


def pack_meta(fields: dict[str, str]) -> str:
    return _packed(tuple(fields.items()))


@functools.lru_cache(maxsize=1024)
def _packed(items: tuple[tuple[str, str], ...]) -> str:
    # The runs of a fan-out share their static fields: encoded once, not once a run.
    return json.dumps({k: v for k, v in items if k not in HOT_FIELDS}, separators=(",", ":"))


def expand(raw: dict[str, str]) -> dict[str, str]:
    """A run record with its "meta" fields in line, as callers read it."""
    meta = raw.pop("meta", None)
    if meta:
        return {**json.loads(meta), **raw}
    return raw


def route_of(meta: str) -> Route:
    return route_of_meta(json.loads(meta) if meta else {})


def pairs(flat: Sequence[Any]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def fenced(code: Any, run_id: str, what: str) -> None:
    if code == 0:
        raise LeaseLostError(f"run {run_id} lost its lease {what}")
    if code == -1:
        raise CancelRequested()


def flat(fields: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for name, value in (fields or {}).items():
        out += [name, value]
    return out

def server_now(client: Any) -> int:
    """The server's clock, in ms (TIME of the node a keyless command goes to)."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def resolution(raw: Any) -> Resolution:
    if isinstance(raw, list):
        return Resolution("woken", route_of(raw[0]))
    return Resolution("executing" if raw else "none")
