"""Subscriptions: which functions an event name starts, across every process.

Each process that defines functions publishes them to Redis, so a process that
imports none of them (a web app) still reaches every subscriber.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .events import SYSTEM_PREFIX, resolve_path

PATTERN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-./:@+]{0,254}\Z")
# How long a process trusts its copy of the published subscriptions.
CACHE_SECONDS = 1.0


def check_pattern(pattern: Any) -> str:
    """Validate an ``event=`` trigger: an exact name, or ``prefix/*`` / ``prefix.*``."""
    if not isinstance(pattern, str):
        raise ConfigurationError(f"an event trigger is a string, not {type(pattern).__name__}")
    if "*" in pattern:
        head = pattern[:-1]
        if not pattern.endswith("*") or "*" in head or not head.endswith(("/", ".")) \
                or not PATTERN_RE.match(head):
            raise ConfigurationError(
                f"invalid wildcard {pattern!r}: a wildcard is a trailing '*' after '/' or '.', "
                "as in 'app/*' or 'app/user.*'"
            )
        if head.startswith(SYSTEM_PREFIX):
            raise ConfigurationError(
                f"wildcards over {SYSTEM_PREFIX!r} system events are not allowed "
                "(a function could trigger itself); subscribe to the exact name"
            )
        return pattern
    if not PATTERN_RE.match(pattern):
        raise ConfigurationError(
            f"invalid event name {pattern!r}: 1-255 letters, digits and _-./:@+"
        )
    return pattern


def matches(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1]) and not name.startswith(SYSTEM_PREFIX)
    return pattern == name


@dataclass(frozen=True)
class Subscription:
    """One function's event triggers and where its runs go."""

    function_id: str
    events: tuple[str, ...]
    task: str
    queue: str = ""
    # Equality filters on the event, by dotted path (used by on_failure handlers).
    where: tuple[tuple[str, Any], ...] = ()
    # Cron triggers (texts as declared) and what to do with slots missed while down.
    crons: tuple[str, ...] = ()
    missed: str = "latest"
    missed_limit: int = 10
    # (event, match path, timeout seconds) of each cancel_on, and the start timeout.
    cancel_on: tuple[tuple[Any, ...], ...] = ()
    start_timeout: float | None = None
    # Flow-control options (FlowControl.as_dict()), enforced by senders and workers.
    flow: dict[str, Any] | None = None

    def accepts(self, event: dict[str, Any]) -> bool:
        if not any(matches(p, event["name"]) for p in self.events):
            return False
        return all(resolve_path(event, path) == value for path, value in self.where)

    def dumps(self) -> str:
        return json.dumps({"events": list(self.events), "task": self.task, "queue": self.queue,
                           "where": [list(w) for w in self.where], "crons": list(self.crons),
                           "missed": self.missed, "missed_limit": self.missed_limit,
                           "cancel_on": [list(c) for c in self.cancel_on],
                           "start_timeout": self.start_timeout, "flow": self.flow})

    @classmethod
    def loads(cls, function_id: str, raw: str) -> Subscription:
        data = json.loads(raw)
        return cls(function_id=function_id, events=tuple(data["events"]), task=data["task"],
                   queue=data.get("queue", ""),
                   where=tuple((p, v) for p, v in data.get("where", [])),
                   crons=tuple(data.get("crons", [])), missed=data.get("missed", "latest"),
                   missed_limit=int(data.get("missed_limit", 10)),
                   cancel_on=tuple(tuple(c) for c in data.get("cancel_on", [])),
                   start_timeout=data.get("start_timeout"), flow=data.get("flow"))


class Router:
    """Resolves event names to subscriptions: this process's own, plus the published ones."""

    def __init__(self, load_remote: Callable[[], dict[str, str]]) -> None:
        self._load_remote = load_remote
        self.local: dict[str, Subscription] = {}
        self._remote: dict[str, Subscription] = {}
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def add(self, sub: Subscription) -> None:
        self.local[sub.function_id] = sub

    def all(self) -> dict[str, Subscription]:
        now = time.monotonic()
        with self._lock:
            if now - self._loaded_at > CACHE_SECONDS:
                remote: dict[str, Subscription] = {}
                for fid, raw in self._load_remote().items():
                    try:
                        remote[fid] = Subscription.loads(fid, raw)
                    except (ValueError, KeyError, TypeError):
                        continue  # written by an incompatible version; ignore it
                self._remote = remote
                self._loaded_at = now
            return {**self._remote, **self.local}

    def subscribers(self, event: dict[str, Any]) -> list[Subscription]:
        return [s for s in self.all().values() if s.events and s.accepts(event)]
