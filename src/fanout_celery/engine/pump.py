"""One round of the timer pump: what is due goes back on the broker.

Due timers (sleeps, retry back-off, wait timeouts), run messages the broker lost, runs
whose worker died (an expired lease), expired start/finish timeouts, and runs waiting
for a concurrency slot that has freed. Claims are atomic in the store, so any number of
workers may pump at once. The loop that calls ``round`` lives in the Celery integration
(a worker bootstep).
"""

from __future__ import annotations

import logging

from ..model.events import now_ms
from ..model.settings import Settings
from ..store.port import Store
from .admission import Admission
from .archive import Archiver
from .dispatcher import Dispatcher
from .pauses import Pauses
from .router import Router

logger = logging.getLogger("fanout.pump")


class Pump:
    """The pump's work, one round at a time."""

    def __init__(self, store: Store, dispatcher: Dispatcher, admission: Admission,
                 router: Router, settings: Settings, archiver: Archiver | None = None) -> None:
        self.archiver = archiver
        self.pauses: Pauses | None = None
        self.store = store
        self.dispatcher = dispatcher
        self.admission = admission
        self.router = router
        self.settings = settings

    def round(self, limit: int = 500) -> int:
        """Publish what is due now; returns how many runs were enqueued."""
        now = now_ms()
        deadline = now + self.settings.redispatch_ms
        self.router.all()  # at most once a second: republishes what Redis lost
        self.dispatcher.lifecycle.expire_deadlines()
        woken = self.admission.reconcile()
        run_ids = self.store.claim_due(now, deadline, limit)
        expired = self.store.expire_leases(now, deadline, limit)
        if expired:
            logger.info("pump: %d run(s) lost their worker; resuming them", len(expired))
        sent = self.dispatcher.enqueue(list(dict.fromkeys([*woken, *run_ids, *expired])))
        if self.archiver is not None:
            try:
                self.archiver.round()
            except Exception:  # the sink's failure: its runs are offered again later
                logger.warning("pump: the history sink refused runs; retrying in a minute",
                               exc_info=True)
        return sent

    def pause(self, interval: float) -> float:
        """Seconds to wait before the next round: until the earliest timer is due, at most
        ``interval`` (which bounds how late a timer set by another process meanwhile, a
        lost message or an expired lease is found)."""
        due = self.store.next_due()
        if due is None:
            return interval
        return min(interval, max(0.001, (due - now_ms()) / 1000))

    def housekeeping(self) -> None:
        """Publish this process's subscriptions again (a Redis that lost its data
        relearns them) and forget history entries older than the retention."""
        if self.router.local:
            self.router.publish()
        if self.pauses is not None:
            try:
                self.pauses.sweep()
            except Exception:  # never at the cost of the round that follows
                logger.warning("pump: publishing held runs failed; next time",
                               exc_info=True)
        cutoff = now_ms() - self.settings.retention_ms
        self.store.trim_history(list(self.router.all()), cutoff)
