"""What every part of the Redis store shares: the client, the key layout, the scripts,
and the encoding of a run record's static fields."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import redis

from ...model.records import Route, route_of_meta
from .connect import ReplicatedClient, connect, is_transient
from .keys import Keys
from .lua import Scripts

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
        self.keys = Keys(prefix)
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


def pack_meta(fields: dict[str, str]) -> str:
    return json.dumps({k: v for k, v in fields.items() if k not in HOT_FIELDS},
                      separators=(",", ":"))


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
