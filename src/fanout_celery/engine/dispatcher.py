"""From events to runs: route each event to its subscribers, let flow control decide,
create the runs (one store call per chunk), publish their messages, then resolve the
waits and cancellations the events match."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidEventError, NoSubscriptionsError
from ..model.definition import Subscription
from ..model.events import now_ms, prepare
from ..model.records import FINAL, NewRun, RunMessage, branch_runs, new_run
from ..model.settings import Settings
from ..store.port import Store
from .admission import Admission
from .lifecycle import Lifecycle
from .ports import Broker
from .router import Router

logger = logging.getLogger("fanout")

# Runs are created and published in chunks of this many: one pipeline per chunk.
CHUNK = 500


class Dispatcher:
    """Creates and publishes the runs events start."""

    def __init__(self, store: Store, router: Router, broker: Broker, admission: Admission,
                 settings: Settings) -> None:
        self.store = store
        self.router = router
        self.broker = broker
        self.admission = admission
        self.settings = settings
        self.lifecycle = Lifecycle(store, router, broker, admission, settings,
                                   emit=self.send_system)

    def dispatch(self, records: Sequence[dict[str, Any]], parent: tuple[str, str] | None = None,
                 only: Subscription | None = None, notify_parent: bool = False) -> int:
        """Create the runs ``records`` (validated events) start, publish the new ones;
        returns how many. ``only``: start that function's run only (invoke, cron)."""
        self.router.ensure_published()
        context = self.broker.context()
        if not only and self.router.table_missing_for_sender():
            raise NoSubscriptionsError(
                "no functions are published in Redis, so these events would start no run: "
                "no worker has started since Redis lost its data (or ever). Start a worker "
                "(it publishes its functions), or call fanout.publish_subscriptions() in a "
                "process that declares them; nothing was sent")
        s = self.settings
        count = 0
        for start in range(0, len(records), CHUNK):
            chunk = records[start:start + CHUNK]
            now = now_ms()
            # By run id, in order: flow control sees the runs admitted before (and may
            # drop one, replaced by a singleton in cancel mode).
            admitted: dict[str, NewRun] = {}
            skipped: list[tuple[NewRun, str]] = []
            for record in chunk:
                for sub in [only] if only else self.router.subscribers(record):
                    run: NewRun | None = new_run(sub, [record], parent=parent,
                                                 notify_parent=notify_parent,
                                                 extra=context or None)
                    if sub.flow and run is not None:
                        run = self._admit(sub, run, record, now, admitted, skipped)
                    if run is not None:
                        admitted.setdefault(run.run_id, run)
            runs = list(admitted.values())
            if skipped:
                self.store.record_skipped([r for r, _ in skipped], [w for _, w in skipped],
                                          now=now, retention_ms=s.retention_ms)
            created = self.store.create_runs(
                runs, chunk, now=now, dispatch_deadline=now + s.lease_ms,
                keep_events_ms=s.keep_events_ms, lookback_ms=s.lookback_ms)
            fresh = [run for run, made in zip(runs, created.created, strict=True) if made]
            self.broker.publish([run.message for run in fresh])
            self.store.confirm_dispatched([run.run_id for run in fresh],
                                          now_ms() + s.redispatch_ms)
            self.lifecycle.after_create(chunk, created.waiters, fresh)
            count += len(fresh)
        return count

    def _admit(self, sub: Subscription, run: NewRun, record: dict[str, Any], now: int,
               pending: dict[str, NewRun],
               skipped: list[tuple[NewRun, str]]) -> NewRun | None:
        """Act on flow control's decision: the run to create, or None. ``pending``: the
        runs admitted for earlier events of this chunk, to be written with it."""
        decision = self.admission.admit(sub, run, record, now, pending)
        if decision.fate == "skip":
            skipped.append((run, decision.reason))
            return None
        if decision.fate == "buffered":
            if decision.publish is not None:
                self.broker.publish([decision.publish.message])
            return None
        if decision.cancel is not None and decision.cancel in pending:
            # Replacing a run of this same send: it is never written, so never starts.
            replaced = pending.pop(decision.cancel)
            skipped.append((replaced, f"singleton: replaced by run {run.run_id} of the "
                                      "same send"))
            assert decision.key is not None
            self.admission.take_over(decision.key, decision.cancel, run.run_id, now)
        elif decision.cancel is not None:
            self.lifecycle.cancel(decision.cancel, f"singleton: replaced by run {run.run_id}")
            assert decision.key is not None
            self.admission.take_over(decision.key, decision.cancel, run.run_id, now)
        return run.with_meta(**decision.meta) if decision.meta else run

    def send_system(self, event: dict[str, Any], parent: tuple[str, str]) -> None:
        """Send a lifecycle event (``fanout/function.*``) if anything subscribes to it.

        Announcing never fails the run it announces: an output too large for an event is
        left out (``output_omitted`` says so: read it with ``fanout.get_run``), and an
        event that still cannot be built is logged and not sent."""
        if not self.router.subscribers(event):
            return
        limit = self.settings.max_event_bytes * 4
        try:
            record = prepare(event, max_bytes=limit, allow_system=True)
        except InvalidEventError:
            data = {k: v for k, v in event.get("data", {}).items() if k != "output"}
            data["output_omitted"] = f"over the {limit}-byte event limit"
            try:
                record = prepare({**event, "data": data}, max_bytes=limit, allow_system=True)
            except InvalidEventError as exc:
                logger.error("%s of run %s not sent: %s", event.get("name"), parent[0], exc)
                return
        self.dispatch([record], parent=parent)

    def start_branches(self, parent_id: str, parent: dict[str, str], key: str, n: int) -> None:
        """Create (once) and publish the branch runs of parallel group ``key``."""
        sub = self.router.get(parent.get("function"))
        if sub is None:  # the function is declared in this process, so this cannot be
            raise LookupError(f"function {parent.get('function')!r} is not registered")
        runs = branch_runs(sub, parent_id, json.loads(parent.get("events", "[]")), key, n)
        context = self.broker.context()
        if context:
            runs = [r.with_meta(**context) for r in runs]
        now = now_ms()
        s = self.settings
        created = self.store.create_runs(runs, [], now=now, dispatch_deadline=now + s.lease_ms,
                                         keep_events_ms=s.retention_ms, lookback_ms=0)
        self.broker.publish([r.message for r, made in zip(runs, created.created, strict=True)
                             if made])

    def enqueue(self, run_ids: Sequence[str]) -> int:
        """Publish the messages of existing runs that are not final (woken from a wait
        queue, or found due by the pump); forget the timers of those that are."""
        if not run_ids:
            return 0
        messages, gone = [], []
        for run_id, found in zip(run_ids, self.store.dispatches(run_ids), strict=True):
            if found is None or found.status in FINAL:
                gone.append(run_id)
            else:
                messages.append(RunMessage(run_id, found.route))
        if gone:
            self.store.drop_timers(gone)
        self.broker.publish(messages)
        return len(messages)
