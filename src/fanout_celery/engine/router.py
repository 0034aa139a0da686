"""Subscriptions: which functions an event name starts, across every process.

Each process that defines functions publishes them to the store, so a process that
imports none of them (a web app) still reaches every subscriber.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..model.definition import Subscription
from ..model.forksafe import ForkSafeLock
from ..store.port import Store

logger = logging.getLogger("fanout")

# How long a process trusts its copy of the published subscriptions.
CACHE_SECONDS = 1.0
# Event names whose subscribers are remembered (per copy of the subscriptions): beyond
# this many distinct names, the memo starts again.
NAMES_KEPT = 1024


class Router:
    """Resolves event names to subscriptions: this process's own, plus the published ones."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.local: dict[str, Subscription] = {}
        self.table_missing = False
        self._published = True
        self._remote: dict[str, Subscription] = {}
        self._loaded_at = float("-inf")
        self._lock = ForkSafeLock()
        # Event name -> the subscriptions whose patterns match it: a send matches each
        # event's name once per name, not against every subscription.
        self._by_name: dict[str, list[Subscription]] = {}

    def add(self, sub: Subscription) -> None:
        with self._lock:
            self.local[sub.function_id] = sub
            self._published = False
            self._by_name = {}

    def publish(self) -> None:
        """Publish this process's subscriptions, so processes without them can route."""
        self.store.publish_subscriptions({fid: s.dumps() for fid, s in self.local.items()})
        self._published = True
        self.table_missing = False

    def ensure_published(self) -> None:
        """Publish before the first send after a function was declared."""
        if not self._published and self.local:
            self.publish()

    def all(self) -> dict[str, Subscription]:
        """Every subscription, the published ones refreshed at most once a second.

        A table that is gone while this process has functions of its own means Redis
        lost its data (restarted without persistence, flushed): they are published again
        at once, so senders elsewhere route to them again."""
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[dict[str, Subscription], dict[str, list[Subscription]]]:
        """Every subscription, and the memo of subscribers by name made from them (read
        together: a memo filled from an older table is never the current one)."""
        now = time.monotonic()
        with self._lock:
            if now - self._loaded_at > CACHE_SECONDS:
                raw_table = self.store.load_subscriptions()
                if not raw_table and self.local:
                    logger.warning("router: the published functions are gone from Redis "
                                   "(it lost its data?); publishing this process's again")
                    self.publish()
                    raw_table = self.store.load_subscriptions()
                remote: dict[str, Subscription] = {}
                for fid, raw in raw_table.items():
                    try:
                        remote[fid] = Subscription.loads(fid, raw)
                    except (ValueError, KeyError, TypeError):
                        continue  # written by an incompatible version; ignore it
                self.table_missing = not raw_table
                self._remote = remote
                self._loaded_at = now
                self._by_name = {}
            return {**self._remote, **self.local}, self._by_name

    def table_missing_for_sender(self) -> bool:
        """True when no function is published at all and this process declares none: a
        send would start nothing, silently."""
        if self.local:
            return False
        self.all()
        return self.table_missing

    def get(self, function_id: Any) -> Subscription | None:
        """The subscription of a function declared here or published by another process."""
        if not isinstance(function_id, str):
            return None
        local = self.local.get(function_id)
        return local if local is not None else self.all().get(function_id)

    def subscribers(self, event: dict[str, Any]) -> list[Subscription]:
        table, by_name = self._snapshot()
        name = event["name"]
        named = by_name.get(name)
        if named is None:
            if len(by_name) >= NAMES_KEPT:
                by_name.clear()
            named = by_name[name] = [s for s in table.values() if s.listens_to(name)]
        return [s for s in named if s.admits(event)]
