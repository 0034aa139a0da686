"""The state of the in-memory store, and the helpers its parts share.

For unit tests and ``fanout_celery.testing``: each verb does what its Lua script does,
atomically (one lock), so code under test sees the same answers it would from Redis.
Expiry is lazy, against ``clock`` (epoch ms): a record past its expiry reads as gone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import LeaseLostError
from ...model.records import Route, route_of_meta


def _wall_ms() -> int:
    return int(time.time() * 1000)


class MemoryBase:
    """Dicts standing for the Redis keys, and one lock that makes each verb atomic."""

    def __init__(self, prefix: str = "fanout", clock: Callable[[], int] = _wall_ms) -> None:
        self.prefix = prefix
        self.clock = clock
        self._lock = threading.RLock()
        # Notified whenever a run becomes final (wait_finished waits on it).
        self._finished = threading.Condition(self._lock)
        self._announced = threading.Condition(self._lock)
        self._listeners: list[Any] = []
        self.paused_functions: dict[str, str] = {}
        self.held: dict[str, set[str]] = {}
        self.runs: dict[str, dict[str, str]] = {}   # changing fields
        self.meta: dict[str, dict[str, str]] = {}   # static fields
        self.steps: dict[str, dict[str, str]] = {}
        self.expires: dict[str, int] = {}           # run id -> expiry (ms)
        self.zsets: dict[str, dict[str, float]] = {}
        self.events: dict[str, tuple[str, int]] = {}  # id -> (json, expiry)
        self.event_runs: dict[str, set[str]] = {}
        # (event name, bucket) -> field -> JSON; event name -> path -> (added, expiry)
        self.waits: dict[tuple[str, str], dict[str, str]] = {}
        self.cancels: dict[tuple[str, str], dict[str, str]] = {}
        self.wait_paths: dict[str, dict[str, tuple[int, int]]] = {}
        self.cancel_paths: dict[str, dict[str, tuple[int, int]]] = {}
        self.subscriptions: dict[str, str] = {}
        self.cron: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} prefix={self.prefix!r} runs={len(self.runs)}>"

    def transient(self, exc: BaseException) -> bool:
        return False  # nothing here is ever away

    # -- helpers (call with the lock held) --------------------------------------------
    def _run(self, run_id: str) -> dict[str, str] | None:
        exp = self.expires.get(run_id)
        if exp is not None and exp <= self.clock():
            for table in (self.runs, self.meta, self.steps, self.expires):
                table.pop(run_id, None)
        return self.runs.get(run_id)

    def _z(self, name: str) -> dict[str, float]:
        return self.zsets.setdefault(name, {})

    def _holds(self, run_id: str, token: str) -> dict[str, str]:
        run = self._run(run_id)
        if run is None or run.get("lease") != token:
            raise LeaseLostError(f"run {run_id} lost its lease")
        return run

    def _unlease(self, run_id: str, run: dict[str, str]) -> None:
        run.pop("lease", None)
        run.pop("lease_exp", None)
        self._z("leases").pop(run_id, None)

    def _expanded(self, run_id: str) -> dict[str, str]:
        run = self._run(run_id)
        return {} if run is None else {**self.meta.get(run_id, {}), **run}

    def _route(self, run_id: str) -> Route:
        return route_of_meta(self.meta.get(run_id, {}))

    def _live_paths(self, table: dict[str, dict[str, tuple[int, int]]], name: str,
                    now: int) -> list[str]:
        paths = table.get(name, {})
        for path in [p for p, (_, expiry) in paths.items() if expiry <= now]:
            del paths[path]
        return sorted(paths)

    def _use_path(self, table: dict[str, dict[str, tuple[int, int]]], name: str, path: str,
                  now: int, expiry: int) -> int:
        """Note ``path`` in use until ``expiry``; returns since when it has been."""
        paths = table.setdefault(name, {})
        added, was = paths.get(path, (now, 0))
        if was <= now:
            added, was = now, 0
        paths[path] = (added, max(was, expiry))
        return added

    def load_steps(self, run_id: str) -> dict[str, str]:
        with self._lock:
            return dict(self.steps.get(run_id, {})) if self._run(run_id) is not None else {}
