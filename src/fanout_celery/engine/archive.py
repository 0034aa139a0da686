"""Handing finished runs to the history sink before they expire (``fanout_history_sink``).

A run's end queues it in the store's archive index in the same write that ends it; each
pump round claims a batch (moved a minute ahead, so a pump that dies before the sink
took them leaves them to another), loads them with their steps and child run ids, gives
them to the sink, and only then forgets them. A sink that raises gets the same runs
again a minute later; one that is down longer than the retention loses the runs that
expired meanwhile (each is logged).
"""

from __future__ import annotations

import logging

from ..model.events import now_ms
from ..model.history import HistorySink, archive_record
from ..model.runs import Run
from ..store.port import Store

logger = logging.getLogger("fanout.archive")

RETRY_MS = 60_000


class Archiver:
    """One pump round's share of archiving."""

    def __init__(self, store: Store, sink: HistorySink) -> None:
        self.store = store
        self.sink = sink

    def round(self, limit: int = 200) -> int:
        """Give the sink up to ``limit`` finished runs; returns how many it took."""
        now = now_ms()
        run_ids = self.store.claim_archive(now, now + RETRY_MS, limit)
        if not run_ids:
            return 0
        records = []
        for run_id, (raw, steps) in zip(run_ids, self.store.load_runs(run_ids), strict=True):
            if not raw:
                logger.error("run %s expired before the history sink took it", run_id)
                continue
            records.append(archive_record(run_id, raw, steps, self._children(run_id, raw,
                                                                              steps), now))
        if records:
            self.sink.write(records)  # raises: the runs stay claimed, offered again later
        self.store.drop_archive(run_ids)
        return len(records)

    def _children(self, run_id: str, raw: dict[str, str], steps: dict[str, str]) -> list[str]:
        """Ids of the runs its steps started: invoked children and the runs of the
        events it sent."""
        run = Run.from_store(run_id, raw, steps)
        if run is None:
            return []
        kids = [str(s.detail["child_run_id"]) for s in run.steps if "child_run_id" in s.detail]
        sent = [eid for s in run.steps if s.kind == "send_event" and s.status == "completed"
                and isinstance(s.output, list) for eid in s.output]
        if sent:
            kids += [rid for ids in self.store.runs_for_events(sent) for rid in ids]
        return list(dict.fromkeys(kids))
