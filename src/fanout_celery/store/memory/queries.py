"""Reads of the in-memory store (and its cron marks and subscriptions)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ...model.records import FINAL
from ..port import Waiters
from .base import MemoryBase


class MemoryAsyncReader:
    """The async reads of a ``MemoryStore``: its reads never block, its waits run in a
    thread."""

    def __init__(self, store: MemoryQueries) -> None:
        self.store = store

    async def load_runs(self, run_ids: Sequence[str]
                        ) -> list[tuple[dict[str, str], dict[str, str]]]:
        return self.store.load_runs(run_ids)

    async def wait_finished(self, run_id: str, timeout: float) -> bool:
        return await asyncio.to_thread(self.store.wait_finished, run_id, timeout)


class MemoryQueries(MemoryBase):
    """The read side of ``MemoryStore``."""

    # -- queries ----------------------------------------------------------------------
    def load_runs(self, run_ids: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
        with self._lock:
            return [(self._expanded(r), self.load_steps(r)) for r in run_ids]

    def statuses(self, run_ids: Sequence[str]) -> list[str | None]:
        with self._lock:
            return [(self._run(r) or {}).get("status") for r in run_ids]

    def wait_finished(self, run_id: str, timeout: float) -> bool:
        with self._finished:
            return self._finished.wait_for(
                lambda: (self._run(run_id) or {}).get("status") in FINAL, timeout)

    def async_reader(self) -> MemoryAsyncReader:
        return MemoryAsyncReader(self)

    def runs_for_events(self, event_ids: Sequence[str]) -> list[list[str]]:
        with self._lock:
            return [sorted(self.event_runs.get(e, ())) for e in event_ids]

    def function_run_ids(self, function_ids: Sequence[str], since: int | None = None,
                         until: int | None = None,
                         limit: int | None = None) -> list[tuple[float, str]]:
        with self._lock:
            rows = [(float(at), rid) for fid in function_ids
                    for rid, at in self._z(f"function:{fid}").items()
                    if (since is None or at >= since) and (until is None or at <= until)]
        rows.sort(reverse=True)
        return rows if limit is None else rows[:limit]

    def event_ids(self, since: int | None, start: int, num: int) -> list[str]:
        with self._lock:
            index = self._z("events")
            rows = sorted(((at, e) for e, at in index.items()
                           if since is None or at >= since), reverse=True)
        return [e for _, e in rows[start:start + num]]

    def get_events(self, event_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        now = self.clock()
        with self._lock:
            found = [self.events.get(e) for e in event_ids]
        return [None if f is None or f[1] <= now else dict(json.loads(f[0])) for f in found]

    def trim_history(self, function_ids: Iterable[str], older_than: int) -> None:
        with self._lock:
            for name in ["events", *(f"function:{f}" for f in function_ids)]:
                zset = self._z(name)
                for member in [m for m, at in zset.items() if at <= older_than]:
                    del zset[member]

    def inspect_run(self, run_id: str) -> dict[str, str]:
        with self._lock:
            run = self._run(run_id)
            if run is None:
                return {}
            return {**run, "meta": json.dumps(self.meta.get(run_id, {}))}

    def indexes_of(self, run_id: str) -> dict[str, float | None]:
        with self._lock:
            return {"timer": self._z("timers").get(run_id),
                    "lease": self._z("leases").get(run_id),
                    "dispatch": self._z("dispatch").get(run_id)}

    def waiters_of(self, event_name: str) -> Waiters:
        with self._lock:
            steps = {f: j for (name, _), table in self.waits.items() if name == event_name
                     for f, j in table.items()}
            cancels = {r: j for (name, _), table in self.cancels.items() if name == event_name
                       for r, j in table.items()}
            return Waiters(event_name, steps, cancels)

    def count(self, index: Literal["events", "deadlines", "timers", "leases",
                                   "dispatch"]) -> int:
        with self._lock:
            return len(self._z(index))

    def ttl_ms(self, run_id: str) -> int:
        with self._lock:
            if self._run(run_id) is None:
                return -2
            exp = self.expires.get(run_id)
            return -1 if exp is None else max(exp - self.clock(), 0)

    def server_info(self) -> dict[str, str]:
        return {"server": "memory", "version": ""}

    def cron_marks(self, function_ids: Sequence[str]) -> list[int | None]:
        with self._lock:
            return [self.cron.get(f) for f in function_ids]

    def set_cron_marks(self, marks: dict[str, int]) -> None:
        with self._lock:
            self.cron.update(marks)

    def set_paused(self, function_id: str, mode: str | None) -> None:
        with self._lock:
            if mode is None:
                self.paused_functions.pop(function_id, None)
            else:
                self.paused_functions[function_id] = mode

    def paused(self) -> dict[str, str]:
        with self._lock:
            return dict(self.paused_functions)

    def hold(self, function_id: str, run_id: str) -> None:
        with self._lock:
            self.held.setdefault(function_id, set()).add(run_id)

    def take_held(self, function_id: str) -> list[str]:
        with self._lock:
            return sorted(self.held.pop(function_id, set()))

    def publish_subscriptions(self, subs: dict[str, str]) -> None:
        with self._lock:
            self.subscriptions.update(subs)

    def load_subscriptions(self) -> dict[str, str]:
        with self._lock:
            return dict(self.subscriptions)
