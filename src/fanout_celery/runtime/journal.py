"""The journal of one execution: its writes to the run's state, fenced by its lease.

Every write goes to the store port with this execution's lease token; the store raises
``LeaseLostError`` when the lease was taken over (nothing is written) and
``CancelRequested`` when a cancel was asked for (the run stops at this step boundary).
"""

from __future__ import annotations

from collections.abc import Callable

from ..model.settings import Settings
from ..store.port import Store, WaiterRef


class Journal:
    """Writes of one execution of one run."""

    def __init__(self, store: Store, run_id: str, token: str, settings: Settings,
                 clock: Callable[[], int]) -> None:
        self.store = store
        self.clock = clock
        self.run_id = run_id
        self.token = token
        self.settings = settings

    def _lease_exp(self) -> int:
        return self.clock() + self.settings.lease_ms

    def checkpoint(self, key: str, record: str) -> None:
        """Write a step record (and extend the lease)."""
        self.store.checkpoint(self.run_id, self.token, key, record, lease_exp=self._lease_exp())

    def checkpoint_many(self, records: list[tuple[str, str]]) -> None:
        """Write step records in order, in one round trip (and extend the lease)."""
        self.store.checkpoint_many(self.run_id, self.token, records,
                                   lease_exp=self._lease_exp())

    def settle(self, key: str, expect: str, record: str,
               waiter: WaiterRef | None = None) -> str | None:
        """Write ``record`` if the step is still ``expect``; else return the one that won."""
        return self.store.settle(self.run_id, self.token, key, expect, record,
                                 lease_exp=self._lease_exp(), waiter=waiter)

    def park(self, status: str, wake_at: int | None, step: tuple[str, str] | None = None,
             expect: tuple[str, str] | None = None,
             fields: dict[str, str] | None = None) -> str | None:
        """Park the run until ``wake_at``; with ``expect``, only if that step is still in
        that status (else return its record)."""
        parked = self.store.park(self.run_id, self.token, status, wake_at=wake_at,
                                 step=step, expect=expect, fields=fields)
        if parked is None and wake_at is not None \
                and wake_at - self.clock() < self.settings.pump_interval * 1000:
            # Due before a pump that planned its wait already would look again: tell the
            # pumps (best effort; without it the timer waits at most one interval).
            try:
                self.store.announce_timer(wake_at)
            except Exception:
                pass
        return parked

    def register_waiter(self, ref: WaiterRef, *, path: str | None, waiter: str, since: int,
                        timeout_at: int, any_limit: int) -> list[str]:
        """Register a wait's waiter again; returns ids of events of that name noted since
        ``since``."""
        return self.store.register_waiter(
            ref, path=path, waiter=waiter, since=since,
            path_expires=timeout_at + self.settings.lookback_ms, any_limit=any_limit)

    def park_waiting(self, key: str, record: str, *, ref: WaiterRef, path: str | None,
                     waiter: str, timeout_at: int, any_limit: int) -> list[str]:
        """Register a wait and park; returns ids of events of that name noted since the
        run was created and still recent (those that can match, where the store can
        tell)."""
        return self.store.park_waiting(
            self.run_id, self.token, key, record, ref=ref, path=path, waiter=waiter,
            timeout_at=timeout_at, path_expires=timeout_at + self.settings.lookback_ms,
            any_limit=any_limit, lease_exp=self._lease_exp())

    def finish(self, status: str, fields: dict[str, str],
               steps: list[tuple[str, str]] | None = None) -> None:
        """Mark the run final (writing ``steps`` first, in the same round trip)."""
        s = self.settings
        now = self.clock()
        expiry = {} if s.output_retention is None else \
            {"steps_until": str(now + s.output_retention_ms)}
        self.store.finish(self.run_id, self.token, status,
                          {"ended_at": str(now), **fields, **expiry},
                          retention_ms=s.retention_ms, steps=steps or (),
                          steps_retention_ms=s.output_retention_ms,
                          archive_at=now if s.history_sink is not None else 0)

    def load_steps(self) -> dict[str, str]:
        return self.store.load_steps(self.run_id)

    def field(self, name: str) -> str | None:
        return self.store.run_field(self.run_id, name)
