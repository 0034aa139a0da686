"""What happens to runs from outside their execution: an event resolving the waits it
matches, cancellation (by hand, by ``cancel_on``, by a timeout), and the end of a run
reaching its parent (an ``invoke`` step, or a ``parallel`` group).

Every operation here is idempotent: a crash half-way is repaired by doing it again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from ..model.events import FUNCTION_CANCELLED, derived_id, dumps, now_ms
from ..model.patterns import resolve_path
from ..model.records import (
    ANY_BUCKET,
    FINAL,
    NewRun,
    RunMessage,
    branch_field,
    cancelled_info,
    event_matches,
    match_bucket,
    pack_step,
    split_waiter_field,
    unpack_step,
    waiter_field,
)
from ..model.settings import Settings
from ..store.port import CancelEntry, Resolution, Store, WaiterRef, Waiters
from .admission import Admission
from .ports import Broker
from .router import Router

logger = logging.getLogger("fanout.lifecycle")

# A cancel_on entry without an expiry keeps its path in use this long.
FOREVER = 2**62


def cancel_bucket(path: str | None, value: Any) -> str:
    """The bucket of a cancel_on entry: by value, or with those matching any event when
    the trigger has no value at the path (an event without it matches then)."""
    return match_bucket(path, value) if value is not None else ANY_BUCKET


# Sends a system event (cancelled, finished...) for the run ``parent[0]``.
Emit = Callable[[dict[str, Any], tuple[str, str]], None]


class Lifecycle:
    """Run lifecycle over one store; ``emit`` sends lifecycle events (the dispatcher)."""

    def __init__(self, store: Store, router: Router, broker: Broker, admission: Admission,
                 settings: Settings, emit: Emit) -> None:
        self.store = store
        self.router = router
        self.broker = broker
        self.admission = admission
        self.settings = settings
        self.emit = emit

    def _wake(self, run_id: str, resolution: Resolution) -> bool:
        if resolution.outcome == "woken" and resolution.route is not None:
            self.broker.publish([RunMessage(run_id, resolution.route)])
            return True
        return False

    # -- events arriving --------------------------------------------------------------
    def after_create(self, records: Sequence[dict[str, Any]], waiters: Sequence[Waiters],
                     fresh: Sequence[NewRun]) -> None:
        """After a chunk of events is stored: wake matching waits, cancel matching
        ``cancel_on`` runs, and register the new runs' own cancel_on and start timeouts."""
        now = now_ms()
        for group in waiters:
            named = [r for r in records if r["name"] == group.name]
            if group.steps:
                self.resolve_waits(group.name, group.steps, named)
            if group.cancels:
                self._cancel_matching(group.name, group.cancels, named, now)
        cancels: list[CancelEntry] = []
        deadlines: list[tuple[str, int]] = []
        for run in fresh:
            sub = self.router.get(run.function_id)
            if sub is None:
                continue
            trigger = run.events[0]
            for event, path, timeout in sub.cancel_on:
                value = None if path is None else resolve_path(trigger, path)
                bucket = cancel_bucket(path, value)
                expires = 0 if timeout is None else now + int(float(timeout) * 1000)
                cancels.append(CancelEntry(event, bucket, path, run.run_id, json.dumps(
                    {"path": path, "value": value, "expires": expires, "bucket": bucket}),
                    expires or FOREVER))
            if sub.start_timeout is not None:
                deadlines.append((f"start:{run.run_id}", now + int(sub.start_timeout * 1000)))
        self.store.add_cancels(cancels)
        self.store.add_deadlines(deadlines)

    def resolve_waits(self, name: str, waiters: dict[str, str],
                      events: Sequence[dict[str, Any]]) -> int:
        """Resolve every step waiting for ``name`` that one of ``events`` matches (the
        earliest matching event wins) and enqueue the woken runs; returns how many."""
        now = now_ms()
        woken = 0
        stale: list[WaiterRef] = []
        ordered = sorted(events, key=lambda e: e.get("ts", 0))
        for entry, raw in waiters.items():
            waiter = json.loads(raw)
            if int(waiter.get("timeout_at", 0)) < now:
                continue  # its run's timer settles it
            match = next((e for e in ordered if e["name"] == name
                          and event_matches(waiter, e)), None)
            if match is None:
                continue
            run_id, step_key = split_waiter_field(entry)
            ref = WaiterRef(name, waiter.get("bucket", ANY_BUCKET), entry)
            # The step's seq and start time live in its record; keep them.
            record = self._merged(run_id, step_key, {
                "status": "completed", "output": match, "attempts": 1, "ended_at": now})
            if record is None:
                stale.append(ref)
                continue
            woken += self._wake(run_id, self.store.resolve(
                run_id, step_key, "waiting", record,
                deadline=now + self.settings.redispatch_ms, waiter=ref))
        self.store.drop_waiters(stale)
        return woken

    def _merged(self, run_id: str, step_key: str, new: dict[str, Any]) -> str | None:
        current = self.store.step_record(run_id, step_key)
        if current is None:
            return None
        return pack_step({**unpack_step(current), **new}, self.settings.compact_records)

    def _cancel_matching(self, name: str, entries: dict[str, str],
                         events: Sequence[dict[str, Any]], now: int) -> None:
        stale: list[tuple[str, str, str]] = []
        for run_id, raw in entries.items():
            entry = json.loads(raw)
            where = (name, entry.get("bucket", ANY_BUCKET), run_id)
            if entry.get("expires") and int(entry["expires"]) < now:
                stale.append(where)
                continue
            hit = next((e for e in events if event_matches(entry, e)), None)
            if hit is not None:
                self.cancel(run_id, f"cancelled by event {name} ({hit['id']})")
                stale.append(where)
        self.store.drop_cancels(stale)

    # -- cancellation -----------------------------------------------------------------
    def cancel(self, run_id: str, reason: str = "cancelled",
               ) -> Literal["cancelled", "requested", "final", "missing"]:
        """Cancel one run: at once if it is queued or parked, at its next step boundary if
        it is executing. Returns cancelled, requested, final or missing."""
        info = cancelled_info(reason)
        outcome = self.store.cancel(run_id, now=now_ms(),
                                    retention_ms=self.settings.retention_ms,
                                    error=dumps(info),
                                    archive=self.settings.history_sink is not None)
        if outcome == "cancelled":
            raw, steps = self.store.load_runs([run_id])[0]
            # A parked wait_for_event's waiter is removed only when it resolves or times
            # out, neither of which can happen any more: drop it, or it stays forever.
            self.store.drop_waiters([
                WaiterRef(rec["event"], rec.get("bucket", ANY_BUCKET), waiter_field(run_id, key))
                for key, rec in ((k, unpack_step(v)) for k, v in steps.items())
                if rec.get("kind") == "wait_for_event" and rec.get("status") == "waiting"])
            function_id = raw.get("function", "")
            logger.info("run %s of %s cancelled: %s", run_id, function_id, reason)
            self.run_ended(run_id, raw, {"status": "failed", "error": info})
            # The same data as the event an executing run emits when it stops.
            trigger = (json.loads(raw.get("events") or "[]") or [None])[0]
            self.emit({"name": FUNCTION_CANCELLED, "id": derived_id(run_id, FUNCTION_CANCELLED),
                       "data": {"function_id": function_id, "run_id": run_id,
                                "event": trigger, "error": info}}, (run_id, ""))
        return outcome

    def cancel_runs(self, function_id: str, started_after: int | None,
                    started_before: int | None) -> int:
        """Cancel the function's runs created in the time range (ms); returns how many."""
        ids = [rid for _, rid in self.store.function_run_ids([function_id], started_after,
                                                             started_before)]
        return sum(1 for run_id in ids
                   if self.cancel(run_id, "cancelled in bulk") in ("cancelled", "requested"))

    def expire_deadlines(self) -> int:
        """Cancel runs whose start or finish timeout passed; returns how many."""
        due = self.store.claim_deadlines(now_ms(), 500)
        if not due:
            return 0
        loaded = self.store.load_runs([m.split(":", 1)[1] for m in due])
        count = 0
        for member, (raw, _) in zip(due, loaded, strict=True):
            kind, run_id = member.split(":", 1)
            status = raw.get("status")
            if not raw or status in FINAL:
                continue
            if kind == "start" and (status != "queued" or raw.get("started_at")):
                continue
            reason = "start timeout: still queued" if kind == "start" else \
                "finish timeout: not finished in time"
            if self.cancel(run_id, reason) in ("cancelled", "requested"):
                count += 1
        return count

    # -- the end of a run -------------------------------------------------------------
    def run_ended(self, run_id: str, run: dict[str, str], outcome: dict[str, Any]) -> None:
        """A run reached a final status: drop its cancel_on entries, release its
        singleton key, and resolve its parent's invoke step or parallel group."""
        sub = self.router.get(run.get("function"))
        if sub is not None and sub.cancel_on:
            trigger = (json.loads(run.get("events") or "[]") or [{}])[0]
            self.store.drop_cancels([
                (event, cancel_bucket(path, None if path is None else
                                      resolve_path(trigger, path)), run_id)
                for event, path, _ in sub.cancel_on])
        self.admission.run_ended(run, run_id)
        if run.get("branch_of"):
            self._join(run, outcome)
            return
        parent, step_key = run.get("parent_run_id"), run.get("parent_step_id")
        if not run.get("notify_parent") or not parent or not step_key:
            return
        now = now_ms()
        record = self._merged(parent, step_key, {**outcome, "attempts": 1, "ended_at": now})
        if record is not None:
            self._wake(parent, self.store.resolve(parent, step_key, "invoking", record,
                                                  deadline=now + self.settings.redispatch_ms))

    def _join(self, run: dict[str, str], outcome: dict[str, Any]) -> None:
        """A branch run ended: record its result in the parent; the last one wakes it."""
        parent, group, index = run["branch_of"], run["branch_step"], int(run["branch_index"])
        current = self.store.step_record(parent, group)
        if current is None:
            return
        record = unpack_step(current)
        now = now_ms()
        result = {"status": outcome["status"], "kind": "branch", "attempts": 1,
                  "started_at": int(run.get("started_at") or now), "ended_at": now,
                  "seq": record.get("seq", 0), "branch": index}
        if outcome["status"] == "completed":
            result["output"] = outcome.get("output")
        else:
            result["error"] = outcome.get("error")
        compact = self.settings.compact_records
        joined = pack_step({**record, "status": "joined", "ended_at": now}, compact)
        self._wake(parent, self.store.join(
            parent, group, branch_field(group, index), pack_step(result, compact),
            branches=int(record.get("branches", 0)), joined=joined,
            deadline=now + self.settings.redispatch_ms))
