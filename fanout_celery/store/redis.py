"""The Redis store: every read and write of run state goes through here."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from . import scripts
from .keys import Keys


def connect(url: str) -> redis.Redis[str]:
    """A client for ``redis://``, ``rediss://``, ``unix://`` or kombu's ``redis+socket://``."""
    if url.startswith("redis+socket://"):
        url = "unix://" + url[len("redis+socket://"):]
    return redis.Redis.from_url(
        url, decode_responses=True, health_check_interval=30,
        retry_on_timeout=True, socket_keepalive=True,
    )


@dataclass
class StartResult:
    """What ``start`` found: ``kind`` is ok, done, busy, early or missing."""

    kind: str
    info: str = ""
    run: dict[str, str] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Waiters:
    """Who waits for events of one name: step waiters and cancel_on entries (raw JSON)."""

    name: str
    steps: dict[str, str]
    cancels: dict[str, str]


@dataclass(frozen=True)
class NewRun:
    """A run to create: its id, function, and the fields of its record."""

    run_id: str
    function_id: str
    event_ids: Sequence[str]
    fields: dict[str, str]


class RedisStore:
    """Run state, indexes and subscriptions in Redis, under one key prefix."""

    def __init__(self, url: str, prefix: str = "fanout", client: redis.Redis[str] | None = None):
        self.url = url
        self.keys = Keys(prefix)
        self.client: redis.Redis[str] = client if client is not None else connect(url)
        self._create_batch = self.client.register_script(scripts.CREATE_BATCH)
        self._create_skipped = self.client.register_script(scripts.CREATE_SKIPPED)
        self._start = self.client.register_script(scripts.START)
        self._commit = self.client.register_script(scripts.COMMIT)
        self._renew = self.client.register_script(scripts.RENEW)
        self._claim = self.client.register_script(scripts.CLAIM)
        self._expire_lease = self.client.register_script(scripts.EXPIRE_LEASE)
        self._note_events = self.client.register_script(scripts.NOTE_EVENTS)
        self._register_wait = self.client.register_script(scripts.REGISTER_WAIT)
        self._resolve = self.client.register_script(scripts.RESOLVE)
        self._cancel = self.client.register_script(scripts.CANCEL)
        self._join = self.client.register_script(scripts.JOIN)

    # -- creating runs -------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun], events: Sequence[dict[str, Any]],
                    now_ms: int, dispatch_deadline_ms: int, retention_ms: int,
                    lookback_ms: int) -> tuple[list[bool], list[Waiters]]:
        """Store the events, note them as recent, read who waits for their names, and
        create the runs that do not exist yet — in one round trip.

        Returns, for each run, whether this call created it, and for each distinct event
        name (in first-seen order) its step waiters and cancel_on entries.
        """
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        by_name: dict[str, list[str]] = {}
        for ev in events:
            by_name.setdefault(ev["name"], []).append(ev["id"])
        keys: list[str] = [k.dispatch, k.events]
        args: list[Any] = [now_ms, dispatch_deadline_ms, retention_ms, len(events)]
        for ev in events:
            keys.append(k.event(ev["id"]))
            args += [ev["id"], json.dumps(ev, separators=(",", ":"))]
        for run in runs:
            keys += [k.run(run.run_id), k.function_runs(run.function_id),
                     k.event_runs(run.event_ids[0])]
            args += [run.run_id, pack_meta(run.fields), run.fields["events"]]
        if runs or events:
            self._create_batch(keys=keys, args=args, client=pipe)
        # After the events are stored: a wait registered between the two would otherwise
        # find the ids in `recent` but not the events.
        for name, ids in by_name.items():
            self._note_events(keys=[k.recent(name), k.waits(name), k.cancels(name)],
                              args=[now_ms, now_ms - lookback_ms, lookback_ms, *ids],
                              client=pipe)
        results = pipe.execute()
        created = [bool(r) for r in results[0]] if (runs or events) else []
        notes = results[1:] if (runs or events) else results
        waiters = [Waiters(name, _pairs(w), _pairs(c))
                   for name, (w, c) in zip(by_name, notes, strict=True)]
        # A batch run (several events) is listed under each of its events.
        extra = [(run, eid) for run, made in zip(runs, created, strict=True) if made
                 for eid in run.event_ids[1:]]
        if extra:
            pipe = self.client.pipeline(transaction=False)
            for run, eid in extra:
                pipe.sadd(k.event_runs(eid), run.run_id)
                pipe.pexpire(k.event_runs(eid), retention_ms)
            pipe.execute()
        return created, waiters

    def create_skipped(self, runs: Sequence[NewRun], now_ms: int, retention_ms: int) -> None:
        """Record runs that flow control skipped: visible in history, never executed.
        A run that exists (its event was sent before) is left as it is."""
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for run in runs:
            error = json.dumps({"type": "Skipped", "message": run.fields.get("skipped", "")})
            self._create_skipped(
                keys=[k.run(run.run_id), k.function_runs(run.function_id),
                      k.event_runs(run.event_ids[0])],
                args=[run.run_id, now_ms, retention_ms, pack_meta(run.fields),
                      run.fields["events"], error], client=pipe)
        pipe.execute()

    def create_rerun(self, run_id: str, function_id: str, fields: dict[str, str],
                     steps: dict[str, str], event_ids: Sequence[str], retention_ms: int,
                     now_ms: int) -> None:
        """Create a run (with a fresh id) whose step table starts with ``steps``."""
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        if steps:
            mapping: dict[str | bytes, str] = {key: value for key, value in steps.items()}
            pipe.hset(k.steps(run_id), mapping=mapping)
        run_fields: dict[str | bytes, str] = {
            "status": "queued", "created_at": str(now_ms), "attempt": "0",
            "meta": pack_meta(fields), "events": fields["events"]}
        pipe.hset(k.run(run_id), mapping=run_fields)
        pipe.zadd(k.dispatch, {run_id: now_ms + 30_000})
        pipe.zadd(k.function_runs(function_id), {run_id: now_ms})
        for eid in event_ids:
            pipe.sadd(k.event_runs(eid), run_id)
            pipe.pexpire(k.event_runs(eid), retention_ms)
        pipe.execute()

    def confirm_dispatched(self, run_ids: Sequence[str], redispatch_at_ms: int) -> None:
        """The runs' messages are on the broker. Each run stays covered until it starts
        (START drops it): if the broker loses its message, the pump publishes it again
        at ``redispatch_at_ms``, as it does for a claimed timer."""
        if run_ids:
            self.client.zadd(self.keys.dispatch, dict.fromkeys(run_ids, redispatch_at_ms),
                             xx=True)

    # -- executing a run -----------------------------------------------------------
    def start(self, run_id: str, token: str, now_ms: int, lease_exp_ms: int) -> StartResult:
        k = self.keys
        raw = self._start(
            keys=[k.run(run_id), k.steps(run_id), k.leases, k.timers, k.dispatch],
            args=[run_id, token, now_ms, lease_exp_ms],
        )
        if raw[0] != "ok":
            return StartResult(kind=raw[0], info=raw[1])
        sep = raw.index("|")
        return StartResult(kind="ok", run=expand(_pairs(raw[1:sep])),
                           steps=_pairs(raw[sep + 1:]))

    def commit(self, run_id: str, token: str, mode: str, *, step_key: str = "",
               step_json: str = "", ms: int | str = "", fields: dict[str, str] | None = None,
               expect: str = "", waits: tuple[str, str] | None = None,
               ) -> tuple[int, str | None]:
        """Checkpoint a step and/or move the run to ``mode`` (step, park, finish).

        Returns ``(1, None)`` when done, ``(0, None)`` when the lease is lost, ``(-1, None)``
        when a cancel was requested, and ``(2, record)`` when ``expect`` was given and the
        step's record is no longer in that status (``record`` is its current JSON).
        ``waits`` is ``(event name, field)`` of a waiter to remove.
        """
        k = self.keys
        flat: list[str] = []
        for name, value in (fields or {}).items():
            flat += [name, value]
        waits_key, waits_field = (k.waits(waits[0]), waits[1]) if waits else (k.run(run_id), "")
        raw = self._commit(
            keys=[k.run(run_id), k.steps(run_id), k.leases, k.timers, waits_key],
            args=[run_id, token, mode, step_key, step_json, ms, expect, waits_field, *flat],
        )
        if isinstance(raw, list):
            return 2, raw[1]
        return int(raw), None

    def register_wait(self, run_id: str, token: str, step_key: str, step_json: str,
                      event_name: str, field: str, waiter_json: str, timeout_ms: int,
                      since_ms: int) -> tuple[int, list[str]]:
        """Register a waiter and park the run; returns (1, ids of events of that name sent
        since ``since_ms``), (0, []) when the lease is lost, (-1, []) on cancel."""
        k = self.keys
        raw = self._register_wait(
            keys=[k.run(run_id), k.steps(run_id), k.leases, k.timers, k.waits(event_name),
                  k.recent(event_name)],
            args=[run_id, token, step_key, step_json, field, waiter_json, timeout_ms, since_ms],
        )
        return int(raw[0]), list(raw[1]) if len(raw) > 1 else []

    def resolve(self, run_id: str, step_key: str, expect: str, record_json: str,
                deadline_ms: int, waits: tuple[str, str] | None = None,
                ) -> tuple[str, str, str] | bool:
        """Resolve a waiting step from outside its run; ``(task, queue, event name)`` when
        the run must
        be enqueued now, True when it is executing, False when nothing was resolved."""
        k = self.keys
        waits_key, waits_field = (k.waits(waits[0]), waits[1]) if waits else (k.run(run_id), "")
        raw = self._resolve(
            keys=[k.run(run_id), k.steps(run_id), k.timers, waits_key],
            args=[run_id, step_key, expect, record_json, waits_field, deadline_ms],
        )
        if isinstance(raw, list):
            return _route(raw[0])
        return bool(raw)

    def join(self, parent: str, group: str, field: str, record_json: str, branches: int,
             joined_json: str, deadline_ms: int) -> tuple[str, str, str] | bool:
        """Record a branch result; ``(task, queue, event name)`` when the parent must be
        enqueued now."""
        k = self.keys
        raw = self._join(keys=[k.run(parent), k.steps(parent), k.timers],
                         args=[parent, group, field, record_json, branches, joined_json,
                               deadline_ms])
        if isinstance(raw, list):
            return _route(raw[0])
        return bool(raw)

    def load_steps(self, run_id: str) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.steps(run_id)))

    def cancel(self, run_id: str, now_ms: int, retention_ms: int, error_json: str) -> str:
        """Cancel a run; returns cancelled, requested (it is executing), final or missing."""
        k = self.keys
        return str(self._cancel(
            keys=[k.run(run_id), k.steps(run_id), k.timers, k.leases, k.dispatch],
            args=[run_id, now_ms, retention_ms, error_json],
        ))

    def get_events(self, event_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        if not event_ids:
            return []
        raw = self.client.mget([self.keys.event(e) for e in event_ids])
        return [None if r is None else dict(json.loads(r)) for r in raw]

    def drop_waiters(self, entries: Sequence[tuple[str, str]], cancels: bool = False) -> None:
        """Remove ``(event name, field)`` entries from the waits (or cancels) indexes."""
        if not entries:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, member in entries:
            pipe.hdel(self.keys.cancels(name) if cancels else self.keys.waits(name), member)
        pipe.execute()

    def add_cancels(self, entries: Sequence[tuple[str, str, str]]) -> None:
        """Register ``(event name, run id, JSON)`` cancel_on entries."""
        if not entries:
            return
        pipe = self.client.pipeline(transaction=False)
        for name, run_id, raw in entries:
            pipe.hset(self.keys.cancels(name), run_id, raw)
        pipe.execute()

    def add_deadlines(self, entries: Sequence[tuple[str, int]]) -> None:
        """Schedule ``(member, when_ms)`` timeouts (``start:<run>`` / ``finish:<run>``)."""
        if entries:
            self.client.zadd(self.keys.deadlines, {m: when for m, when in entries})

    def claim_deadlines(self, now_ms: int, limit: int = 500) -> list[str]:
        due = self.client.zrangebyscore(self.keys.deadlines, "-inf", now_ms, start=0, num=limit)
        if due:
            # Another pump may claim the same members at once; cancelling twice is harmless.
            self.client.zrem(self.keys.deadlines, *due)
        return list(due)

    def renew(self, leases: Sequence[tuple[str, str]], lease_exp_ms: int) -> list[bool]:
        """Renew the leases ``(run_id, token)`` still held; returns which were."""
        if not leases:
            return []
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for run_id, token in leases:
            self._renew(keys=[k.run(run_id), k.leases], args=[run_id, token, lease_exp_ms],
                        client=pipe)
        return [bool(r) for r in pipe.execute()]

    # -- the pump ------------------------------------------------------------------
    def claim_due(self, now_ms: int, deadline_ms: int, limit: int = 500) -> list[str]:
        """Claim due timers and stale dispatches; returns run ids to enqueue now."""
        pipe = self.client.pipeline(transaction=False)
        self._claim(keys=[self.keys.timers], args=[now_ms, deadline_ms, limit], client=pipe)
        self._claim(keys=[self.keys.dispatch], args=[now_ms, deadline_ms, limit], client=pipe)
        timers, dispatches = pipe.execute()
        return list(dict.fromkeys([*timers, *dispatches]))

    def expired_leases(self, now_ms: int, deadline_ms: int, limit: int = 500) -> list[str]:
        """Runs whose executing worker stopped renewing; returns those to enqueue now."""
        k = self.keys
        candidates = self.client.zrangebyscore(k.leases, "-inf", now_ms, start=0, num=limit)
        if not candidates:
            return []
        pipe = self.client.pipeline(transaction=False)
        for run_id in candidates:
            self._expire_lease(keys=[k.run(run_id), k.leases, k.timers],
                               args=[run_id, now_ms, deadline_ms], client=pipe)
        return [r for r, ok in zip(candidates, pipe.execute(), strict=True) if ok]

    def drop_timers(self, run_ids: Sequence[str]) -> None:
        """Forget timer and dispatch entries of runs that are final or gone."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrem(self.keys.timers, *run_ids)
        pipe.zrem(self.keys.dispatch, *run_ids)
        pipe.execute()

    def dispatch_info(self, run_ids: Sequence[str]) -> list[tuple[str, str, str, str] | None]:
        """``(task, queue, status, event name)`` of each run, ``None`` where it no longer
        exists."""
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), "status", "meta")
        out: list[tuple[str, str, str, str] | None] = []
        for status, meta in pipe.execute():
            if meta is None:
                out.append(None)
                continue
            task, queue, event_name = _route(meta)
            out.append((task, queue, status or "", event_name))
        return out

    # -- reading -------------------------------------------------------------------
    def load_runs(self, run_ids: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
        """The record and step table of each run (empty dicts where it does not exist)."""
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(self.keys.steps(run_id))
        raw = pipe.execute()
        return [(expand(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]

    def runs_for_event(self, event_id: str) -> list[str]:
        return sorted(self.client.smembers(self.keys.event_runs(event_id)))

    def run_field(self, run_id: str, name: str) -> str | None:
        """One field of a run's record (a field kept outside "meta")."""
        value = self.client.hget(self.keys.run(run_id), name)
        return None if value is None else str(value)

    def step_record(self, run_id: str, step_key: str) -> str | None:
        """The JSON record of one step of a run."""
        value = self.client.hget(self.keys.steps(run_id), step_key)
        return None if value is None else str(value)

    def function_run_ids(self, function_ids: Sequence[str], since_ms: int | None = None,
                         until_ms: int | None = None) -> list[tuple[float, str]]:
        """``(created_ms, run id)`` of the functions' runs in the range, newest first."""
        pipe = self.client.pipeline(transaction=False)
        for fid in function_ids:
            pipe.zrevrangebyscore(self.keys.function_runs(fid),
                                  "+inf" if until_ms is None else until_ms,
                                  "-inf" if since_ms is None else since_ms, withscores=True)
        return sorted(((score, rid) for rows in pipe.execute() for rid, score in rows),
                      reverse=True)

    def statuses(self, run_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(self.keys.run(rid), "status")
        return list(pipe.execute())

    def event_ids(self, since_ms: int | None, start: int, num: int) -> list[str]:
        """Stored event ids, newest first (``start``/``num`` page through them)."""
        return list(self.client.zrevrangebyscore(
            self.keys.events, "+inf", "-inf" if since_ms is None else since_ms,
            start=start, num=num))

    def maxmemory_policy(self) -> str | None:
        """Redis' eviction policy, or None where CONFIG is not allowed (managed Redis)."""
        try:
            return str(self.client.config_get("maxmemory-policy").get("maxmemory-policy"))
        except Exception:
            return None

    def runs_for_events(self, event_ids: Sequence[str]) -> list[list[str]]:
        pipe = self.client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.smembers(self.keys.event_runs(event_id))
        return [sorted(ids) for ids in pipe.execute()]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        if ":" in event_id:  # not an event id: "<id>:runs" is that event's set of runs
            return None
        raw = self.client.get(self.keys.event(event_id))
        return None if raw is None else dict(json.loads(raw))

    def recent_runs(self, function_id: str, limit: int = 100) -> list[str]:
        return list(self.client.zrevrange(self.keys.function_runs(function_id), 0, limit - 1))

    def trim_history(self, function_ids: Iterable[str], older_than_ms: int) -> None:
        """Forget history entries older than the retention (their runs have expired)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.events, "-inf", older_than_ms)
        for fid in function_ids:
            pipe.zremrangebyscore(self.keys.function_runs(fid), "-inf", older_than_ms)
        pipe.execute()

    # -- cron ----------------------------------------------------------------------
    def cron_marks(self, function_ids: Sequence[str]) -> list[int | None]:
        if not function_ids:
            return []
        raw = self.client.hmget(self.keys.cron, list(function_ids))
        return [None if v is None else int(v) for v in raw]

    def set_cron_marks(self, marks: dict[str, int]) -> None:
        if marks:
            mapping: dict[str | bytes, str] = {k: str(v) for k, v in marks.items()}
            self.client.hset(self.keys.cron, mapping=mapping)

    # -- subscriptions -------------------------------------------------------------
    def publish_subscriptions(self, subs: dict[str, str]) -> None:
        if subs:
            mapping: dict[str | bytes, str] = {k: v for k, v in subs.items()}
            self.client.hset(self.keys.subscriptions, mapping=mapping)

    def load_subscriptions(self) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.subscriptions))


# Fields of a run record set once at creation are kept in one JSON field, "meta", so a
# run is created with a handful of arguments; the fields that change stay separate.
HOT_FIELDS = frozenset({"status", "created_at", "attempt", "events"})


def pack_meta(fields: dict[str, str]) -> str:
    return json.dumps({k: v for k, v in fields.items() if k not in HOT_FIELDS},
                      separators=(",", ":"))


def expand(raw: dict[str, str]) -> dict[str, str]:
    """A run record with its "meta" fields in line, as callers read it."""
    meta = raw.pop("meta", None)
    if meta:
        return {**json.loads(meta), **raw}
    return raw


def _route(meta: str) -> tuple[str, str, str]:
    data = json.loads(meta) if meta else {}
    return str(data.get("task", "")), str(data.get("queue", "")), str(data.get("event_name", ""))


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
