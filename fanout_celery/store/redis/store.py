"""The Redis store: runs, their executions, and what happens to them from outside.

Queries live in ``queries.py`` and flow control in ``flow.py``; all three share one
client, one key layout and one set of scripts (``base.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from ...errors import CancelRequested, LeaseLostError
from ...model.records import ANY_BUCKET, NewRun, event_buckets
from ..port import (
    CancelEntry,
    Created,
    Dispatch,
    NotStarted,
    Resolution,
    Started,
    WaiterRef,
    Waiters,
)
from .base import RedisBase, expand, pack_meta, pairs, route_of
from .flow import FlowOps
from .lua import execute
from .queries import QueryOps


def _fenced(code: Any, run_id: str, what: str) -> None:
    if code == 0:
        raise LeaseLostError(f"run {run_id} lost its lease {what}")
    if code == -1:
        raise CancelRequested()


def _flat(fields: dict[str, str] | None) -> list[str]:
    out: list[str] = []
    for name, value in (fields or {}).items():
        out += [name, value]
    return out


class RedisStore(QueryOps, FlowOps, RedisBase):
    """Run state, indexes and subscriptions in Redis, under one key prefix."""

    # -- creating runs ----------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun], events: Sequence[dict[str, Any]], *,
                    now: int, dispatch_deadline: int, keep_events_ms: int,
                    lookback_ms: int) -> Created:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        by_name: dict[str, list[str]] = {}
        for ev in events:
            by_name.setdefault(ev["name"], []).append(ev["id"])
        keys: list[str] = [k.dispatch, k.events]
        args: list[Any] = [now, dispatch_deadline, keep_events_ms, len(events)]
        for ev in events:
            keys.append(k.event(ev["id"]))
            args += [ev["id"], json.dumps(ev, separators=(",", ":"))]
        for run in runs:
            keys += [k.run(run.run_id), k.function_runs(run.function_id),
                     k.event_runs(run.event_ids[0])]
            args += [run.run_id, pack_meta(run.meta), run.events_json]
        if runs or events:
            self.scripts.create_runs.queue(pipe, keys, args)
        named = {name: [e for e in events if e["name"] == name] for name in by_name}
        # After the events are stored: a wait registered between the two would otherwise
        # find the ids in `recent` but not the events.
        for name, group in named.items():
            self._queue_note(pipe, name, group, lookback_ms)
        results = execute(pipe, self.scripts, self.client)
        created = [bool(r) for r in results[0]] if (runs or events) else []
        notes = results[1:] if (runs or events) else results
        waiters = [self._noted(name, named[name], note, lookback_ms)
                   for name, note in zip(named, notes, strict=True)]
        # A batch run (several events) is listed under each of its events.
        extra = [(run, eid) for run, made in zip(runs, created, strict=True) if made
                 for eid in run.event_ids[1:]]
        if extra:
            pipe = self.client.pipeline(transaction=False)
            for run, eid in extra:
                pipe.sadd(k.event_runs(eid), run.run_id)
                pipe.pexpire(k.event_runs(eid), keep_events_ms)
            pipe.execute()
        return Created(created, waiters)

    def _queue_note(self, pipe: Any, name: str, events: Sequence[dict[str, Any]],
                    lookback_ms: int) -> None:
        """Queue ``note_events.lua`` for events of one name, with the buckets of the
        match paths this store last saw in use for it."""
        k = self.keys
        wait_paths, cancel_paths = self._paths.get(name, ((), ()))
        recent: dict[str, list[str]] = {}
        cancel_buckets: dict[str, None] = {}
        for ev in events:
            for bucket in event_buckets(ev, wait_paths):
                recent.setdefault(bucket, []).append(ev["id"])
            cancel_buckets.update(dict.fromkeys(event_buckets(ev, cancel_paths)))
        wait_keys = [k.waits(name, b) for b in [ANY_BUCKET, *recent]]
        cancel_keys = [k.cancels(name, b) for b in [ANY_BUCKET, *cancel_buckets]]
        args: list[Any] = [lookback_ms, ",".join(sorted(wait_paths)),
                           ",".join(sorted(cancel_paths)), len(recent), len(wait_keys),
                           len(cancel_keys), len(events), *(ev["id"] for ev in events)]
        for ids in recent.values():
            args += [len(ids), *ids]
        self.scripts.note_events.queue(
            pipe, [k.recent(name), k.wait_paths(name), k.cancel_paths(name),
                   *(k.recent_bucket(name, b) for b in recent), *wait_keys, *cancel_keys],
            args)

    def _noted(self, name: str, events: Sequence[dict[str, Any]], reply: Any,
               lookback_ms: int) -> Waiters:
        """The waiters ``note_events.lua`` returned; when the paths in use changed, note
        the events again with the current ones (a bounded number of times: paths change
        only when a waiter of a new path registers)."""
        for _ in range(10):
            if reply[0] != "paths":
                return Waiters(name, pairs(reply[0]), pairs(reply[1]))
            self._paths[name] = (tuple(p for p in reply[1].split(",") if p),
                                 tuple(p for p in reply[2].split(",") if p))
            pipe = self.client.pipeline(transaction=False)
            self._queue_note(pipe, name, events, lookback_ms)
            [reply] = execute(pipe, self.scripts, self.client)
        raise RuntimeError(f"the match paths of {name!r} keep changing; events not noted")

    def record_skipped(self, runs: Sequence[NewRun], reasons: Sequence[str], *, now: int,
                       retention_ms: int) -> None:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for run, reason in zip(runs, reasons, strict=True):
            error = json.dumps({"type": "Skipped", "message": reason})
            self.scripts.record_skipped.queue(
                pipe, [k.run(run.run_id), k.function_runs(run.function_id),
                       k.event_runs(run.event_ids[0]), k.done(run.run_id)],
                [run.run_id, now, retention_ms, pack_meta(run.meta), run.events_json, error])
        execute(pipe, self.scripts, self.client)

    def create_rerun(self, run: NewRun, steps: dict[str, str], *, now: int,
                     retention_ms: int, dispatch_deadline: int) -> None:
        k = self.keys
        # In this order, on one connection: the steps before the record that makes the
        # run visible, and the dispatch cover with it (it publishes a lost message).
        pipe = self.client.pipeline(transaction=False)
        if steps:
            mapping: dict[str | bytes, str] = dict(steps.items())
            pipe.hset(k.steps(run.run_id), mapping=mapping)
        fields: dict[str | bytes, str] = {
            "status": "queued", "created_at": str(now), "attempt": "0",
            "meta": pack_meta(run.meta), "events": run.events_json}
        pipe.hset(k.run(run.run_id), mapping=fields)
        pipe.zadd(k.dispatch, {run.run_id: dispatch_deadline})
        pipe.zadd(k.function_runs(run.function_id), {run.run_id: now})
        for eid in run.event_ids:
            pipe.sadd(k.event_runs(eid), run.run_id)
            pipe.pexpire(k.event_runs(eid), retention_ms)
        pipe.execute()

    def confirm_dispatched(self, run_ids: Sequence[str], redispatch_at: int) -> None:
        if run_ids:
            self.client.zadd(self.keys.dispatch, dict.fromkeys(run_ids, redispatch_at),
                             xx=True)

    # -- one execution ----------------------------------------------------------------
    def start(self, run_id: str, token: str, *, now: int, lease_exp: int,
              attempt: str = "") -> Started | NotStarted:
        k = self.keys
        raw = self.scripts.start(
            self.client, [k.run(run_id), k.steps(run_id), k.leases, k.timers, k.dispatch],
            [run_id, token, now, lease_exp, attempt])
        if raw[0] != "ok":
            return NotStarted(raw[0], raw[1])
        sep = raw.index("|")
        return Started(expand(pairs(raw[1:sep])), pairs(raw[sep + 1:]))

    def checkpoint(self, run_id: str, token: str, key: str, record: str, *,
                   lease_exp: int) -> None:
        k = self.keys
        code = self.scripts.checkpoint(
            self.client, [k.run(run_id), k.steps(run_id), k.leases],
            [run_id, token, lease_exp, key, record])
        _fenced(code, run_id, f"before step {key!r}")

    def settle(self, run_id: str, token: str, key: str, expect: str, record: str, *,
               lease_exp: int, waiter: WaiterRef | None = None) -> str | None:
        k = self.keys
        waits = k.waits(waiter.name, waiter.bucket) if waiter else k.run(run_id)
        raw = self.scripts.settle(
            self.client, [k.run(run_id), k.steps(run_id), k.leases, waits],
            [run_id, token, key, expect, record, lease_exp, waiter.field if waiter else ""])
        if isinstance(raw, list):
            return str(raw[1])
        _fenced(raw, run_id, f"at step {key!r}")
        return None

    def park(self, run_id: str, token: str, status: str, *, wake_at: int | None,
             step: tuple[str, str] | None = None, expect: tuple[str, str] | None = None,
             fields: dict[str, str] | None = None) -> str | None:
        k = self.keys
        key, record = step if step else (expect[0] if expect else "", "")
        raw = self.scripts.park(
            self.client, [k.run(run_id), k.steps(run_id), k.leases, k.timers],
            [run_id, token, status, "" if wake_at is None else wake_at, key, record,
             expect[1] if expect else "", *_flat(fields)])
        if isinstance(raw, list):
            return str(raw[1])
        _fenced(raw, run_id, "while parking")
        return None

    def park_waiting(self, run_id: str, token: str, key: str, record: str, *,
                     ref: WaiterRef, path: str | None, waiter: str, timeout_at: int,
                     path_expires: int, any_limit: int) -> list[str]:
        k = self.keys
        raw = self.scripts.park_waiting(
            self.client, [k.run(run_id), k.steps(run_id), k.leases, k.timers,
                          k.waits(ref.name, ref.bucket), k.wait_paths(ref.name),
                          k.recent(ref.name), k.recent_bucket(ref.name, ref.bucket)],
            [run_id, token, key, record, ref.field, waiter, timeout_at, path or "",
             path_expires, any_limit])
        _fenced(int(raw[0]), run_id, f"at step {key!r}")
        return list(raw[1]) if len(raw) > 1 else []

    def finish(self, run_id: str, token: str, status: str, fields: dict[str, str], *,
               retention_ms: int) -> None:
        k = self.keys
        code = self.scripts.finish(
            self.client, [k.run(run_id), k.steps(run_id), k.leases, k.timers, k.done(run_id)],
            [run_id, token, status, retention_ms, *_flat(fields)])
        _fenced(code, run_id, "while finishing")

    def renew(self, leases: Sequence[tuple[str, str]], lease_exp: int) -> list[bool]:
        if not leases:
            return []
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for run_id, token in leases:
            self.scripts.renew.queue(pipe, [k.run(run_id), k.leases],
                                     [run_id, token, lease_exp])
        return [bool(r) for r in execute(pipe, self.scripts, self.client)]

    def load_steps(self, run_id: str) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.steps(run_id)))

    def step_record(self, run_id: str, key: str) -> str | None:
        value = self.client.hget(self.keys.steps(run_id), key)
        return None if value is None else str(value)

    def run_field(self, run_id: str, name: str) -> str | None:
        value = self.client.hget(self.keys.run(run_id), name)
        return None if value is None else str(value)

    # -- from outside a run -----------------------------------------------------------
    def resolve(self, run_id: str, key: str, expect: str, record: str, *, deadline: int,
                waiter: WaiterRef | None = None) -> Resolution:
        k = self.keys
        waits = k.waits(waiter.name, waiter.bucket) if waiter else k.run(run_id)
        raw = self.scripts.resolve(
            self.client, [k.run(run_id), k.steps(run_id), k.timers, waits],
            [run_id, key, expect, record, waiter.field if waiter else "", deadline])
        return _resolution(raw)

    def join(self, parent: str, group: str, branch: str, record: str, *, branches: int,
             joined: str, deadline: int) -> Resolution:
        k = self.keys
        raw = self.scripts.join(self.client, [k.run(parent), k.steps(parent), k.timers],
                                [parent, group, branch, record, branches, joined, deadline])
        return _resolution(raw)

    def cancel(self, run_id: str, *, now: int, retention_ms: int,
               error: str) -> Literal["cancelled", "requested", "final", "missing"]:
        k = self.keys
        outcome = str(self.scripts.cancel(
            self.client, [k.run(run_id), k.steps(run_id), k.timers, k.leases, k.dispatch,
                          k.done(run_id)],
            [run_id, now, retention_ms, error]))
        assert outcome in ("cancelled", "requested", "final", "missing")
        return outcome  # type: ignore[return-value]

    def drop_waiters(self, entries: Sequence[WaiterRef]) -> None:
        self._hdel_all([(self.keys.waits(w.name, w.bucket), w.field) for w in entries])

    def drop_cancels(self, entries: Sequence[tuple[str, str, str]]) -> None:
        self._hdel_all([(self.keys.cancels(name, bucket), run_id)
                        for name, bucket, run_id in entries])

    def _hdel_all(self, entries: Sequence[tuple[str, str]]) -> None:
        if entries:
            pipe = self.client.pipeline(transaction=False)
            for key, member in entries:
                pipe.hdel(key, member)
            pipe.execute()

    def add_cancels(self, entries: Sequence[CancelEntry]) -> None:
        by_name: dict[str, list[CancelEntry]] = {}
        for entry in entries:
            by_name.setdefault(entry.name, []).append(entry)
        if not by_name:
            return
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for name, group in by_name.items():
            args: list[Any] = []
            for e in group:
                args += [e.run_id, e.entry, e.path or "", e.expires]
            self.scripts.add_cancels.queue(
                pipe, [k.cancel_paths(name), *(k.cancels(name, e.bucket) for e in group)],
                args)
        execute(pipe, self.scripts, self.client)

    def add_deadlines(self, entries: Sequence[tuple[str, int]]) -> None:
        if entries:
            self.client.zadd(self.keys.deadlines, dict(entries))

    def claim_deadlines(self, now: int, limit: int) -> list[str]:
        due = self.client.zrangebyscore(self.keys.deadlines, "-inf", now, start=0, num=limit)
        if due:
            # Another pump may claim the same members at once; cancelling twice is harmless.
            self.client.zrem(self.keys.deadlines, *due)
        return list(due)

    # -- the pump ---------------------------------------------------------------------
    def claim_due(self, now: int, deadline: int, limit: int) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        self.scripts.claim.queue(pipe, [self.keys.timers], [now, deadline, limit])
        self.scripts.claim.queue(pipe, [self.keys.dispatch], [now, deadline, limit])
        timers, dispatches = execute(pipe, self.scripts, self.client)
        return list(dict.fromkeys([*timers, *dispatches]))

    def expire_leases(self, now: int, deadline: int, limit: int) -> list[str]:
        k = self.keys
        candidates = self.client.zrangebyscore(k.leases, "-inf", now, start=0, num=limit)
        if not candidates:
            return []
        pipe = self.client.pipeline(transaction=False)
        for run_id in candidates:
            self.scripts.expire_lease.queue(pipe, [k.run(run_id), k.leases, k.timers],
                                            [run_id, now, deadline])
        results = execute(pipe, self.scripts, self.client)
        return [r for r, ok in zip(candidates, results, strict=True) if ok]

    def drop_timers(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(self.keys.timers, *run_ids)
            pipe.zrem(self.keys.dispatch, *run_ids)
            pipe.execute()

    def dispatches(self, run_ids: Sequence[str]) -> list[Dispatch | None]:
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), "status", "meta")
        return [None if meta is None else Dispatch(status or "", route_of(meta))
                for status, meta in pipe.execute()]


def _resolution(raw: Any) -> Resolution:
    if isinstance(raw, list):
        return Resolution("woken", route_of(raw[0]))
    return Resolution("executing" if raw else "none")
