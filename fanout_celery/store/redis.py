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
        self._create = self.client.register_script(scripts.CREATE)
        self._start = self.client.register_script(scripts.START)
        self._commit = self.client.register_script(scripts.COMMIT)
        self._renew = self.client.register_script(scripts.RENEW)
        self._claim = self.client.register_script(scripts.CLAIM)
        self._expire_lease = self.client.register_script(scripts.EXPIRE_LEASE)

    # -- creating runs -------------------------------------------------------------
    def create_runs(self, runs: Sequence[NewRun], events: Iterable[dict[str, Any]],
                    now_ms: int, dispatch_deadline_ms: int, retention_ms: int) -> list[bool]:
        """Store the events and create the runs that do not exist yet, in one pipeline.

        Returns, for each run, whether this call created it.
        """
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for ev in events:
            pipe.set(k.event(ev["id"]), json.dumps(ev, separators=(",", ":")),
                     nx=True, px=retention_ms)
        for run in runs:
            flat: list[str] = []
            for name, value in run.fields.items():
                flat += [name, value]
            self._create(
                keys=[k.run(run.run_id), k.dispatch, k.function_runs(run.function_id),
                      k.event_runs(run.event_ids[0])],
                args=[run.run_id, now_ms, dispatch_deadline_ms, retention_ms, *flat],
                client=pipe,
            )
        results = pipe.execute()
        created = [bool(r) for r in results[len(results) - len(runs):]]
        # A batch run (several events) is listed under each of its events.
        extra = [(run, eid) for run, made in zip(runs, created, strict=True) if made
                 for eid in run.event_ids[1:]]
        if extra:
            pipe = self.client.pipeline(transaction=False)
            for run, eid in extra:
                pipe.sadd(k.event_runs(eid), run.run_id)
                pipe.pexpire(k.event_runs(eid), retention_ms)
            pipe.execute()
        return created

    def confirm_dispatched(self, run_ids: Sequence[str]) -> None:
        """The runs' messages are on the broker: the sender no longer needs cover."""
        if run_ids:
            self.client.zrem(self.keys.dispatch, *run_ids)

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
        return StartResult(kind="ok", run=_pairs(raw[1:sep]), steps=_pairs(raw[sep + 1:]))

    def commit(self, run_id: str, token: str, mode: str, *, step_key: str = "",
               step_json: str = "", ms: int | str = "", fields: dict[str, str] | None = None,
               ) -> bool:
        """Checkpoint a step and/or move the run to ``mode`` (step, park, finish)."""
        k = self.keys
        flat: list[str] = []
        for name, value in (fields or {}).items():
            flat += [name, value]
        return bool(self._commit(
            keys=[k.run(run_id), k.steps(run_id), k.leases, k.timers],
            args=[run_id, token, mode, step_key, step_json, ms, *flat],
        ))

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

    def dispatch_info(self, run_ids: Sequence[str]) -> list[tuple[str, str, str] | None]:
        """``(task, queue, status)`` of each run, ``None`` where it no longer exists."""
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), "task", "queue", "status")
        out: list[tuple[str, str, str] | None] = []
        for task, queue, status in pipe.execute():
            out.append(None if task is None else (task, queue or "", status or ""))
        return out

    # -- reading -------------------------------------------------------------------
    def load_runs(self, run_ids: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
        """The record and step table of each run (empty dicts where it does not exist)."""
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(self.keys.steps(run_id))
        raw = pipe.execute()
        return [(raw[i], raw[i + 1]) for i in range(0, len(raw), 2)]

    def runs_for_event(self, event_id: str) -> list[str]:
        return sorted(self.client.smembers(self.keys.event_runs(event_id)))

    def runs_for_events(self, event_ids: Sequence[str]) -> list[list[str]]:
        pipe = self.client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.smembers(self.keys.event_runs(event_id))
        return [sorted(ids) for ids in pipe.execute()]

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.event(event_id))
        return None if raw is None else dict(json.loads(raw))

    def recent_runs(self, function_id: str, limit: int = 100) -> list[str]:
        return list(self.client.zrevrange(self.keys.function_runs(function_id), 0, limit - 1))

    def trim_history(self, function_ids: Iterable[str], older_than_ms: int) -> None:
        pipe = self.client.pipeline(transaction=False)
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


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
