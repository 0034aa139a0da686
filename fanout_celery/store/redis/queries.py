"""Reads of the Redis store: runs, events, history, inspection, cron marks and
subscriptions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ..port import Waiters
from .aio import AsyncRedisReader
from .base import RedisBase, expand


class QueryOps(RedisBase):
    """The read side of ``RedisStore`` (plus the small writes of cron marks and
    subscriptions)."""

    _async: AsyncRedisReader | None = None  # made on first use

    def load_runs(self, run_ids: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
        pipe = self.client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hgetall(self.keys.run(run_id))
            pipe.hgetall(self.keys.steps(run_id))
        raw = pipe.execute()
        return [(expand(raw[i]), raw[i + 1]) for i in range(0, len(raw), 2)]

    def wait_finished(self, run_id: str, timeout: float) -> bool:
        key = self.keys.done(run_id)
        # A rotation of the one-entry list onto itself: it blocks until the entry is
        # pushed, and leaves it there for every other waiter (and its expiry as it was).
        return self.client.blmove(key, key, timeout, "RIGHT", "LEFT") is not None

    def async_reader(self) -> AsyncRedisReader:
        if self._async is None:
            self._async = AsyncRedisReader(self.url, self.keys, self.options)
        return self._async

    def statuses(self, run_ids: Sequence[str]) -> list[str | None]:
        pipe = self.client.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(self.keys.run(rid), "status")
        return list(pipe.execute())

    def runs_for_events(self, event_ids: Sequence[str]) -> list[list[str]]:
        pipe = self.client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.smembers(self.keys.event_runs(event_id))
        return [sorted(ids) for ids in pipe.execute()]

    def function_run_ids(self, function_ids: Sequence[str], since: int | None = None,
                         until: int | None = None,
                         limit: int | None = None) -> list[tuple[float, str]]:
        pipe = self.client.pipeline(transaction=False)
        for fid in function_ids:
            pipe.zrevrangebyscore(self.keys.function_runs(fid),
                                  "+inf" if until is None else until,
                                  "-inf" if since is None else since, withscores=True,
                                  start=None if limit is None else 0, num=limit)
        rows = sorted(((score, rid) for rows in pipe.execute() for rid, score in rows),
                      reverse=True)
        return rows if limit is None else rows[:limit]

    def event_ids(self, since: int | None, start: int, num: int) -> list[str]:
        return list(self.client.zrevrangebyscore(
            self.keys.events, "+inf", "-inf" if since is None else since,
            start=start, num=num))

    def get_events(self, event_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        # "<id>:runs" is not an event id but that event's set of runs: never read it.
        wanted = [e for e in event_ids if ":" not in e]
        raw = dict(zip(wanted, self.client.mget([self.keys.event(e) for e in wanted]),
                       strict=True)) if wanted else {}
        out: list[dict[str, Any] | None] = []
        for event_id in event_ids:
            found = raw.get(event_id)
            out.append(None if found is None else dict(json.loads(found)))
        return out

    def trim_history(self, function_ids: Iterable[str], older_than: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.zremrangebyscore(self.keys.events, "-inf", older_than)
        for fid in function_ids:
            pipe.zremrangebyscore(self.keys.function_runs(fid), "-inf", older_than)
        pipe.execute()

    # -- inspection -------------------------------------------------------------------
    def inspect_run(self, run_id: str) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.run(run_id)))

    def indexes_of(self, run_id: str) -> dict[str, float | None]:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        for key in (k.timers, k.leases, k.dispatch):
            pipe.zscore(key, run_id)
        timer, lease, dispatch = pipe.execute()
        return {"timer": timer, "lease": lease, "dispatch": dispatch}

    def waiters_of(self, event_name: str) -> Waiters:
        out: list[dict[str, str]] = []
        for pattern in (self.keys.waits(event_name, "*"), self.keys.cancels(event_name, "*")):
            merged: dict[str, str] = {}
            # The bucket "*" is a literal key too, and a pattern matching every bucket.
            for key in self.client.scan_iter(match=pattern, count=500):
                merged.update(self.client.hgetall(key))
            out.append(merged)
        return Waiters(event_name, out[0], out[1])

    def count(self, index: Literal["events", "deadlines", "timers", "leases",
                                   "dispatch"]) -> int:
        return int(self.client.zcard(getattr(self.keys, index)))

    def ttl_ms(self, run_id: str) -> int:
        return int(self.client.pttl(self.keys.run(run_id)))

    def server_info(self) -> dict[str, str]:
        try:
            info = self.client.info("server")
        except Exception:  # INFO refused (managed Redis, ACL): nothing known
            return {}
        name = "valkey" if "valkey_version" in info else "redis"
        out = {"server": name, "version": str(info.get(f"{name}_version") or
                                               info.get("redis_version", ""))}
        try:
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy")
            if policy:
                out["maxmemory_policy"] = str(policy)
        except Exception:  # CONFIG not allowed
            pass
        return out

    # -- cron and subscriptions -------------------------------------------------------
    def cron_marks(self, function_ids: Sequence[str]) -> list[int | None]:
        if not function_ids:
            return []
        raw = self.client.hmget(self.keys.cron, list(function_ids))
        return [None if v is None else int(v) for v in raw]

    def set_cron_marks(self, marks: dict[str, int]) -> None:
        if marks:
            mapping: dict[str | bytes, str] = {k: str(v) for k, v in marks.items()}
            self.client.hset(self.keys.cron, mapping=mapping)

    def publish_subscriptions(self, subs: dict[str, str]) -> None:
        if subs:
            mapping: dict[str | bytes, str] = dict(subs.items())
            self.client.hset(self.keys.subscriptions, mapping=mapping)

    def load_subscriptions(self) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.subscriptions))
