"""The Redis store: creating runs and their executions.

Events meeting runs (waits, cancel_on) live in ``events.py``, the pump's timers and
leases in ``timers.py``, queries in ``queries.py`` and flow control in ``flow.py``; all
share one client, one key layout and one set of scripts (``base.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Literal

from ...model.definition import default_task
from ...model.records import NewRun
from ..port import Created, NotStarted, Resolution, Started
from .base import (
    EVENT_FIELDS,
    RedisBase,
    encode_event,
    event_fields,
    events_of,
    expand,
    fenced,
    flat,
    pairs,
    resolution,
    shared_fields,
    static_fields,
)
from .events import EventOps
from .flow import FlowOps
from .lua import execute
from .queries import QueryOps
from .timers import TimerOps


class RedisStore(QueryOps, FlowOps, EventOps, TimerOps, RedisBase):
    """Run state, indexes and subscriptions in Redis, under one key prefix."""

    # -- creating runs ----------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun], events: Sequence[dict[str, Any]], *,
                    now: int, dispatch_deadline: int, keep_events_ms: int,
                    lookback_ms: int) -> Created:
        k = self.keys
        # One create_runs.lua call per shard (one, on one Redis): the events stored there
        # and the runs that live there, with their dispatch cover, function history and
        # event run lists, in one slot.
        by_shard: dict[int, tuple[list[dict[str, Any]], list[int]]] = {}
        for ev in events:
            by_shard.setdefault(k.event_shard(ev["id"]), ([], []))[0].append(ev)
        for i, run in enumerate(runs):
            by_shard.setdefault(k.shard_of(run.run_id), ([], []))[1].append(i)
        # Each event is encoded once: for its record, and for the run it alone starts.
        encoded = {id(ev): encode_event(ev) for ev in events}
        compact = self.compact
        pipe = self.pipeline()
        for shard, (evs, indexes) in by_shard.items():
            keys: list[str] = [k.dispatch(shard), k.events(shard)]
            args: list[Any] = [self.as_set, dispatch_deadline, keep_events_ms, len(evs)]
            for ev in evs:
                keys.append(k.event(ev["id"]))
                args += [ev["id"], encoded[id(ev)][1]]
            # The static fields a fan-out's runs share, passed once for all of them.
            shared: dict[tuple[str, ...], int] = {}
            per_run: list[Any] = []
            for i in indexes:
                run = runs[i]
                keys += [k.run(run.run_id), k.function_runs(run.function_id, shard),
                         k.event_runs(run.event_ids[0], shard)]
                alone = encoded.get(id(run.events[0])) if len(run.events) == 1 else None
                fields = shared_fields(run, compact)
                ref = shared.setdefault(fields, len(shared) + 1)
                per_run += [run.run_id, ref, *event_fields(run, compact, alone and alone[0])]
            args.append(len(shared))
            for fields in shared:
                args += [len(fields), *fields]
            args += per_run
            self.scripts.create_runs.queue(pipe, keys, args)
        # After the events are stored: a wait registered between the two would otherwise
        # find the ids in `recent` but not the events.
        done, pipe = self.phase(pipe)
        named: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            named.setdefault(ev["name"], []).append(ev)
        for name, group in named.items():
            self._queue_note(pipe, name, group, lookback_ms)
        results = [*done, *execute(pipe, self.scripts, self.client)]
        created = [False] * len(runs)
        for (_, indexes), made in zip(by_shard.values(), results, strict=False):
            for i, flag in zip(indexes, made, strict=True):
                created[i] = bool(flag)
        notes = results[len(by_shard):]
        waiters = [self._noted(name, named[name], note, lookback_ms)
                   for name, note in zip(named, notes, strict=True)]
        # A batch run (several events) is listed under each of its events.
        extra = [(run, eid) for run, made in zip(runs, created, strict=True) if made
                 for eid in run.event_ids[1:]]
        if extra:
            pipe = self.pipeline()
            for run, eid in extra:
                self.scripts.list_runs.queue(pipe, [k.event_runs(eid, k.shard_of(run.run_id))],
                                             [keep_events_ms, self.as_set, run.run_id])
            execute(pipe, self.scripts, self.client)
        return Created(created, waiters)

    def record_skipped(self, runs: Sequence[NewRun], reasons: Sequence[str], *, now: int,
                       retention_ms: int) -> None:
        k = self.keys
        pipe = self.pipeline()
        for run, reason in zip(runs, reasons, strict=True):
            error = json.dumps({"type": "Skipped", "message": reason})
            shard = k.shard_of(run.run_id)
            self.scripts.record_skipped.queue(
                pipe, [k.run(run.run_id), k.function_runs(run.function_id, shard),
                       k.event_runs(run.event_ids[0], shard), k.done(run.run_id)],
                [run.run_id, now, retention_ms, error, self.as_set,
                 *static_fields(run, self.compact)])
        execute(pipe, self.scripts, self.client)

    def create_rerun(self, run: NewRun, steps: dict[str, str], *, now: int,
                     retention_ms: int, dispatch_deadline: int) -> None:
        k = self.keys
        shard = k.shard_of(run.run_id)
        # In this order, on one connection: the steps before the record that makes the
        # run visible, and the dispatch cover with it (it publishes a lost message).
        pipe = self.pipeline()
        if steps:
            mapping: dict[str | bytes, str] = dict(steps.items())
            pipe.hset(k.steps(run.run_id), mapping=mapping)
        pipe.hset(k.run(run.run_id), items=["status", "queued", "created_at", str(now),
                                            "attempt", "0", *static_fields(run, self.compact)])
        pipe.zadd(k.dispatch(shard), {run.run_id: dispatch_deadline})
        pipe.zadd(k.function_runs(run.function_id, shard), {run.run_id: now})
        for eid in run.event_ids:
            self.scripts.list_runs.queue(pipe, [k.event_runs(eid, shard)],
                                         [retention_ms, self.as_set, run.run_id])
        execute(pipe, self.scripts, self.client)

    def confirm_dispatched(self, run_ids: Sequence[str], redispatch_at: int) -> None:
        if not run_ids:
            return
        pipe = self.pipeline()
        for shard, ids in self.by_shard(run_ids).items():
            pipe.zadd(self.keys.dispatch(shard), dict.fromkeys(ids, redispatch_at), xx=True)
        pipe.execute()

    def start(self, run_id: str, token: str, *, now: int, lease_exp: int,
              attempt: str = "") -> Started | NotStarted:
        k = self.keys
        shard = k.shard_of(run_id)
        raw = self.scripts.start(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(shard), k.timers(shard),
                          k.dispatch(shard)],
            [run_id, token, now, lease_exp, attempt])
        if raw[0] != "ok":
            return NotStarted(raw[0], raw[1])
        sep = raw.index("|")
        return Started(expand(pairs(raw[1:sep])), pairs(raw[sep + 1:]))

    def checkpoint(self, run_id: str, token: str, key: str, record: str, *,
                   lease_exp: int) -> None:
        k = self.keys
        code = self.scripts.checkpoint(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(k.shard_of(run_id))],
            [run_id, token, lease_exp, key, record])
        fenced(code, run_id, f"before step {key!r}")

    def checkpoint_many(self, run_id: str, token: str, records: Sequence[tuple[str, str]],
                        *, lease_exp: int) -> None:
        if not records:
            return
        k = self.keys
        code = self.scripts.checkpoint(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(k.shard_of(run_id))],
            [run_id, token, lease_exp, *(part for pair in records for part in pair)])
        fenced(code, run_id, f"before step {records[0][0]!r}")

    def park(self, run_id: str, token: str, status: str, *, wake_at: int | None,
             step: tuple[str, str] | None = None, expect: tuple[str, str] | None = None,
             fields: dict[str, str] | None = None) -> str | None:
        k = self.keys
        key, record = step if step else (expect[0] if expect else "", "")
        shard = k.shard_of(run_id)
        raw = self.scripts.park(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(shard), k.timers(shard)],
            [run_id, token, status, "" if wake_at is None else wake_at, key, record,
             expect[1] if expect else "", *flat(fields)])
        if isinstance(raw, list):
            return str(raw[1])
        fenced(raw, run_id, "while parking")
        return None

    def finish(self, run_id: str, token: str, status: str, fields: dict[str, str], *,
               retention_ms: int, steps: Sequence[tuple[str, str]] = (),
               steps_retention_ms: int | None = None, archive_at: int = 0) -> None:
        k = self.keys
        shard = k.shard_of(run_id)
        code = self.scripts.finish(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(shard), k.timers(shard),
                          k.done(run_id), k.archive(shard)],
            [run_id, token, status, retention_ms,
             min(retention_ms, steps_retention_ms or retention_ms), archive_at, len(steps),
             *(part for pair in steps for part in pair), *flat(fields)])
        fenced(code, run_id, "while finishing")

    def renew(self, leases: Sequence[tuple[str, str]], lease_exp: int) -> list[bool]:
        if not leases:
            return []
        k = self.keys
        pipe = self.pipeline()
        for run_id, token in leases:
            self.scripts.renew.queue(pipe, [k.run(run_id), k.leases(k.shard_of(run_id))],
                                     [run_id, token, lease_exp])
        return [bool(r) for r in execute(pipe, self.scripts, self.client)]

    def load_steps(self, run_id: str) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.steps(run_id)))

    def step_record(self, run_id: str, key: str) -> str | None:
        value = self.client.hget(self.keys.steps(run_id), key)
        return None if value is None else str(value)

    def run_field(self, run_id: str, name: str) -> str | None:
        if name == "events":
            return events_of(self.client.hmget(self.keys.run(run_id), EVENT_FIELDS))
        value, meta, function = self.client.hmget(self.keys.run(run_id),
                                                  [name, "meta", "function"])
        if value is None and meta:  # a static field, in the earlier layout
            value = json.loads(meta).get(name)
        elif value is None and name == "task" and function is not None:
            value = default_task(function)  # the compact layout leaves it out
        return None if value is None else str(value)

    # -- from outside a run -----------------------------------------------------------
    def join(self, parent: str, group: str, branch: str, record: str, *, branches: int,
             joined: str, deadline: int) -> Resolution:
        k = self.keys
        raw = self.scripts.join(self.client, [k.run(parent), k.steps(parent),
                                              k.timers(k.shard_of(parent))],
                                [parent, group, branch, record, branches, joined, deadline])
        return resolution(raw)

    def cancel(self, run_id: str, *, now: int, retention_ms: int, error: str,
               archive: bool = False) -> Literal["cancelled", "requested", "final", "missing"]:
        k = self.keys
        shard = k.shard_of(run_id)
        outcome = str(self.scripts.cancel(
            self.client, [k.run(run_id), k.steps(run_id), k.timers(shard), k.leases(shard),
                          k.dispatch(shard), k.done(run_id), k.archive(shard)],
            [run_id, now, retention_ms, error, int(archive)]))
        assert outcome in ("cancelled", "requested", "final", "missing")
        return outcome  # type: ignore[return-value]


