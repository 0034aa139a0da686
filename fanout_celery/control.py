"""What happens to runs from outside their execution: matching waits, cancellation,
timeouts, and telling a parent that its invoked child finished."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .events import FUNCTION_CANCELLED, derived_id, dumps, now_ms, resolve_path
from .runs import FINAL
from .waiting import event_matches, split_waiter_field, waiter_field

if TYPE_CHECKING:
    from .fanout import Fanout
    from .routing import Subscription
    from .store.redis import NewRun, Waiters

logger = logging.getLogger("fanout.control")


def resolve_waits(fanout: Fanout, name: str, waiters: dict[str, str],
                  events: Sequence[dict[str, Any]]) -> int:
    """Resolve every step waiting for ``name`` that one of ``events`` matches (the
    earliest matching event wins) and enqueue the woken runs at once; returns how many."""
    store = fanout.store
    now = now_ms()
    woken = 0
    stale: list[tuple[str, str]] = []
    for field, raw in waiters.items():
        waiter = json.loads(raw)
        if int(waiter.get("timeout_at", 0)) < now:
            continue  # its run's timer settles it
        match = next((e for e in sorted(events, key=lambda e: e.get("ts", 0))
                      if e["name"] == name and event_matches(waiter, e)), None)
        if match is None:
            continue
        run_id, step_key = split_waiter_field(field)
        # The step's seq and start time live in its record; keep them.
        record = _merge_record(fanout, run_id, step_key, {
            "status": "completed", "output": match, "attempts": 1, "ended_at": now})
        if record is None:
            stale.append((name, field))
            continue
        outcome = store.resolve(run_id, step_key, "waiting", record,
                                now + int(fanout.settings.redispatch_seconds * 1000),
                                waits=(name, field))
        if isinstance(outcome, tuple):
            fanout.publish_run(run_id, *outcome)
            woken += 1
    store.drop_waiters(stale)
    return woken


def _merge_record(fanout: Fanout, run_id: str, step_key: str,
                  new: dict[str, Any]) -> str | None:
    current = fanout.store.step_record(run_id, step_key)
    if current is None:
        return None
    return dumps({**json.loads(current), **new})


def after_create(fanout: Fanout, records: Sequence[dict[str, Any]],
                 waiters: Sequence[Waiters], fresh: Sequence[NewRun],
                 subs: dict[str, Subscription]) -> None:
    """After a chunk of events is stored: wake matching waits, cancel matching
    ``cancel_on`` runs, and register the new runs' own cancel_on and start timeouts."""
    now = now_ms()
    for group in waiters:
        named = [r for r in records if r["name"] == group.name]
        if group.steps:
            resolve_waits(fanout, group.name, group.steps, named)
        if group.cancels:
            _cancel_matching(fanout, group.name, group.cancels, named, now)
    cancels: list[tuple[str, str, str]] = []
    deadlines: list[tuple[str, int]] = []
    for run in fresh:
        sub = subs[run.function_id]
        trigger = json.loads(run.fields["events"])[0]
        for event, path, timeout in sub.cancel_on:
            value = None if path is None else resolve_path(trigger, path)
            expires = 0 if timeout is None else now + int(float(timeout) * 1000)
            cancels.append((event, run.run_id, json.dumps(
                {"path": path, "value": value, "expires": expires})))
        if sub.start_timeout is not None:
            deadlines.append((f"start:{run.run_id}", now + int(sub.start_timeout * 1000)))
    fanout.store.add_cancels(cancels)
    fanout.store.add_deadlines(deadlines)


def _cancel_matching(fanout: Fanout, name: str, entries: dict[str, str],
                     events: Sequence[dict[str, Any]], now: int) -> None:
    stale: list[tuple[str, str]] = []
    for run_id, raw in entries.items():
        entry = json.loads(raw)
        if entry.get("expires") and int(entry["expires"]) < now:
            stale.append((name, run_id))
            continue
        hit = next((e for e in events if event_matches(entry, e)), None)
        if hit is not None:
            cancel(fanout, run_id, f"cancelled by event {name} ({hit['id']})")
            stale.append((name, run_id))
    fanout.store.drop_waiters(stale, cancels=True)


def cancel(fanout: Fanout, run_id: str, reason: str = "cancelled") -> str:
    """Cancel one run: at once if it is queued or parked, at its next step boundary if
    it is executing. Returns cancelled, requested, final or missing."""
    s = fanout.settings
    info = {"type": "Cancelled", "message": reason}
    outcome = fanout.store.cancel(run_id, now_ms(), int(s.retention * 1000), dumps(info))
    if outcome == "cancelled":
        raw, steps = fanout.store.load_runs([run_id])[0]
        # A parked wait_for_event's waiter is removed only when it resolves or times out,
        # neither of which can happen any more: drop it, or it stays in the index forever.
        fanout.store.drop_waiters([
            (rec["event"], waiter_field(run_id, key))
            for key, rec in ((k, json.loads(v)) for k, v in steps.items())
            if rec.get("kind") == "wait_for_event" and rec.get("status") == "waiting"])
        function_id = raw.get("function", "")
        logger.info("run %s of %s cancelled: %s", run_id, function_id, reason)
        run_ended(fanout, run_id, raw, {"status": "failed", "error": info})
        # The same data as the event an executing run emits when it stops (execution.py).
        trigger = (json.loads(raw.get("events") or "[]") or [None])[0]
        fanout.send_system({"name": FUNCTION_CANCELLED, "id": derived_id(run_id,
                            FUNCTION_CANCELLED), "data": {"function_id": function_id,
                            "run_id": run_id, "event": trigger, "error": info}},
                           parent=(run_id, ""))
    return outcome


def cancel_runs(fanout: Fanout, function_id: str, started_after: int | None,
                started_before: int | None) -> int:
    """Cancel the function's runs created in the time range (ms); returns how many."""
    ids = [rid for _, rid in fanout.store.function_run_ids([function_id], started_after,
                                                         started_before)]
    return sum(1 for run_id in ids if cancel(fanout, run_id, "cancelled in bulk")
               in ("cancelled", "requested"))


def run_ended(fanout: Fanout, run_id: str, run: dict[str, str],
              outcome: dict[str, Any]) -> None:
    """A run reached a final status: resolve its parent's invoke step, and drop its
    cancel_on entries. Idempotent."""
    sub = fanout.subscription_of(run.get("function"))
    if sub is not None and sub.cancel_on:
        fanout.store.drop_waiters([(event, run_id) for event, _, _ in sub.cancel_on],
                                  cancels=True)
    if run.get("singleton"):
        from .admission import run_ended as flow_ended

        flow_ended(fanout, run, run_id)
    if run.get("branch_of"):
        from .parallel import join

        join(fanout, run, outcome)
        return
    parent, step_key = run.get("parent_run_id"), run.get("parent_step_id")
    if not run.get("notify_parent") or not parent or not step_key:
        return
    now = now_ms()
    record = _merge_record(fanout, parent, step_key, {**outcome, "attempts": 1,
                                                      "ended_at": now})
    if record is None:
        return
    resolved = fanout.store.resolve(parent, step_key, "invoking", record,
                                    now + int(fanout.settings.redispatch_seconds * 1000))
    if isinstance(resolved, tuple):
        fanout.publish_run(parent, *resolved)


def expire_deadlines(fanout: Fanout) -> int:
    """Cancel runs whose start or finish timeout passed; returns how many."""
    due = fanout.store.claim_deadlines(now_ms())
    if not due:
        return 0
    loaded = fanout.store.load_runs([m.split(":", 1)[1] for m in due])
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
        if cancel(fanout, run_id, reason) in ("cancelled", "requested"):
            count += 1
    return count
