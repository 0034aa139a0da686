"""Time in the in-memory store: deadlines, timers, leases and the dispatch cover, as the
pump reads them (``store/redis/timers.py`` on Redis)."""

from __future__ import annotations

from collections.abc import Sequence

from ..port import Dispatch
from .base import MemoryBase


class MemoryAnnouncements:
    """``TimerAnnouncements`` of the in-memory store."""

    def __init__(self, store: MemoryTimers) -> None:
        self.store = store
        self.announced: list[int] = []
        with store._lock:
            store._listeners.append(self)

    def wait(self, timeout: float) -> int | None:
        with self.store._lock:
            if not self.announced:
                self.store._announced.wait(timeout)
            earliest = min(self.announced) if self.announced else None
            self.announced.clear()
            return earliest

    def close(self) -> None:
        with self.store._lock:
            if self in self.store._listeners:
                self.store._listeners.remove(self)


class MemoryTimers(MemoryBase):
    """The pump's verbs of ``MemoryStore``."""

    def add_deadlines(self, entries: Sequence[tuple[str, int]]) -> None:
        with self._lock:
            self._z("deadlines").update(dict(entries))

    def claim_deadlines(self, now: int, limit: int) -> list[str]:
        with self._lock:
            deadlines = self._z("deadlines")
            due = sorted((m for m, at in deadlines.items() if at <= now),
                         key=lambda m: (deadlines[m], m))[:limit]
            for member in due:
                del deadlines[member]
            return due

    # -- the pump ---------------------------------------------------------------------
    def _claim(self, index: str, now: int, deadline: int, limit: int) -> list[str]:
        zset = self._z(index)
        due = sorted((m for m, at in zset.items() if at <= now),
                     key=lambda m: (zset[m], m))[:limit]
        for member in due:
            zset[member] = deadline
        return due

    def claim_due(self, now: int, deadline: int, limit: int) -> list[str]:
        with self._lock:
            due = sorted([(self._z(index)[m], m) for index in ("timers", "dispatch")
                          for m in self._z(index) if self._z(index)[m] <= now])
            claimed = {*self._claim("timers", now, deadline, limit),
                       *self._claim("dispatch", now, deadline, limit)}
            return list(dict.fromkeys(m for _, m in due if m in claimed))

    def announce_timer(self, wake_at: int) -> None:
        with self._lock:
            for listener in list(self._listeners):
                listener.announced.append(int(wake_at))
            self._announced.notify_all()

    def timer_announcements(self) -> MemoryAnnouncements:
        return MemoryAnnouncements(self)

    def claim_archive(self, now: int, deadline: int, limit: int) -> list[str]:
        with self._lock:
            return self._claim("archive", now, deadline, limit)

    def drop_archive(self, run_ids: Sequence[str]) -> None:
        with self._lock:
            for run_id in run_ids:
                self._z("archive").pop(run_id, None)

    def next_due(self) -> int | None:
        with self._lock:
            timers = self._z("timers")
            return int(min(timers.values())) if timers else None

    def expire_leases(self, now: int, deadline: int, limit: int) -> list[str]:
        with self._lock:
            leases = self._z("leases")
            out = []
            for run_id in sorted((m for m, at in leases.items() if at <= now),
                                 key=lambda m: (leases[m], m))[:limit]:
                run = self._run(run_id)
                if run is not None and int(run.get("lease_exp", 0)) > now:
                    leases[run_id] = int(run["lease_exp"])
                    continue
                del leases[run_id]
                if run is None or run["status"] != "running":
                    continue
                run.pop("lease", None)
                run.pop("lease_exp", None)
                run["status"] = "queued"
                self._z("timers")[run_id] = deadline
                out.append(run_id)
            return out

    def drop_timers(self, run_ids: Sequence[str]) -> None:
        with self._lock:
            for run_id in run_ids:
                self._z("timers").pop(run_id, None)
                self._z("dispatch").pop(run_id, None)

    def dispatches(self, run_ids: Sequence[str]) -> list[Dispatch | None]:
        with self._lock:
            return [None if self._run(r) is None
                    else Dispatch(self.runs[r]["status"], self._route(r)) for r in run_ids]

