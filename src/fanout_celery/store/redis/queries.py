"""Reads of the Redis store: runs, events, history, inspection, cron marks and
subscriptions."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ..port import Waiters
from .aio import AsyncRedisReader
from .base import RedisBase, expand, read_event
from .lua import execute


class QueryOps(RedisBase):
    """The read side of ``RedisStore`` (plus the small writes of cron marks and
    subscriptions)."""

    _async: AsyncRedisReader | None = None  # made on first use

    def load_runs(self, run_ids: Sequence[str]) -> list[tuple[dict[str, str], dict[str, str]]]:
        pipe = self.pipeline()
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
        pipe = self.pipeline()
        for rid in run_ids:
            pipe.hget(self.keys.run(rid), "status")
        return list(pipe.execute())

    def runs_for_events(self, event_ids: Sequence[str]) -> list[list[str]]:
        k = self.keys
        pipe = self.pipeline()
        for event_id in event_ids:
            for shard in k.all_shards:  # an event's runs are listed in their own shards
                self.scripts.listed_runs.queue(pipe, [k.event_runs(event_id, shard)], [])
        found = iter(execute(pipe, self.scripts, self.client))
        n = len(k.all_shards)
        return [sorted(set().union(*(next(found) for _ in range(n)))) for _ in event_ids]

    def function_run_ids(self, function_ids: Sequence[str], since: int | None = None,
                         until: int | None = None,
                         limit: int | None = None) -> list[tuple[float, str]]:
        pipe = self.pipeline()
        for fid in function_ids:
            for shard in self.keys.all_shards:
                pipe.zrevrangebyscore(self.keys.function_runs(fid, shard),
                                      "+inf" if until is None else until,
                                      "-inf" if since is None else since, withscores=True,
                                      start=None if limit is None else 0, num=limit)
        rows = sorted(((score, rid) for rows in pipe.execute() for rid, score in rows),
                      reverse=True)
        return rows if limit is None else rows[:limit]

    def event_ids(self, since: int | None, start: int, num: int) -> list[str]:
        k = self.keys
        if not k.sharded:
            return list(self.client.zrevrangebyscore(
                k.events(), "+inf", "-inf" if since is None else since,
                start=start, num=num))
        # Each shard's newest start + num, merged: the page is among them.
        pipe = self.pipeline()
        for shard in k.all_shards:
            pipe.zrevrangebyscore(k.events(shard), "+inf", "-inf" if since is None else since,
                                  start=0, num=start + num, withscores=True)
        rows = sorted(((score, eid) for found in pipe.execute() for eid, score in found),
                      reverse=True)
        return [eid for _, eid in rows[start:start + num]]

    def get_events(self, event_ids: Sequence[str]) -> list[dict[str, Any] | None]:
        # "<id>:runs" is not an event id but that event's set of runs: never read it.
        wanted = [e for e in event_ids if ":" not in e]
        pipe = self.pipeline()
        for event_id in wanted:
            pipe.get(self.keys.event(event_id))
        raw = dict(zip(wanted, pipe.execute(), strict=True)) if wanted else {}
        out: list[dict[str, Any] | None] = []
        for event_id in event_ids:
            found = raw.get(event_id)
            out.append(None if found is None else read_event(event_id, found))
        return out

    def trim_history(self, function_ids: Iterable[str], older_than: int) -> None:
        k = self.keys
        fids = list(function_ids)
        pipe = self.pipeline()
        for shard in k.all_shards:
            pipe.zremrangebyscore(k.events(shard), "-inf", older_than)
            for fid in fids:
                pipe.zremrangebyscore(k.function_runs(fid, shard), "-inf", older_than)
        pipe.execute()

    # -- inspection -------------------------------------------------------------------
    def inspect_run(self, run_id: str) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.run(run_id)))

    def indexes_of(self, run_id: str) -> dict[str, float | None]:
        k = self.keys
        shard = k.shard_of(run_id)
        pipe = self.pipeline()
        for key in (k.timers(shard), k.leases(shard), k.dispatch(shard)):
            pipe.zscore(key, run_id)
        timer, lease, dispatch = pipe.execute()
        return {"timer": timer, "lease": lease, "dispatch": dispatch}

    def waiters_of(self, event_name: str) -> Waiters:
        out: list[dict[str, str]] = []
        for pattern in (self.keys.waits(event_name, "*"), self.keys.cancels(event_name, "*")):
            merged: dict[str, str] = {}
            # The bucket "*" is a literal key too, and a pattern matching every bucket.
            for key in self._scan(pattern):
                merged.update(self.client.hgetall(key))
            out.append(merged)
        return Waiters(event_name, out[0], out[1])

    def _scan(self, pattern: str) -> list[str]:
        """Keys matching ``pattern`` (on every master of a cluster)."""
        if self.cluster:
            return list(self.client.scan_iter(match=pattern, count=500,
                                              target_nodes="primaries"))
        return list(self.client.scan_iter(match=pattern, count=500))

    def count(self, index: Literal["events", "deadlines", "timers", "leases",
                                   "dispatch"]) -> int:
        key = getattr(self.keys, index)
        pipe = self.pipeline()
        for shard in self.keys.all_shards:
            pipe.zcard(key(shard))
        return sum(int(n) for n in pipe.execute())

    def ttl_ms(self, run_id: str) -> int:
        return int(self.client.pttl(self.keys.run(run_id)))

    def server_info(self) -> dict[str, str]:
        try:
            info = self._first(self.client.info("server"))
        except Exception:  # INFO refused (managed Redis, ACL): nothing known
            return {}
        name = "valkey" if "valkey_version" in info else "redis"
        out = {"server": name, "version": str(info.get(f"{name}_version") or
                                               info.get("redis_version", ""))}
        try:
            if self.cluster:  # every master's: the worst is the one that matters
                replies = self.client.config_get(
                    "maxmemory-policy", target_nodes="primaries")
                policies = [str(r.get("maxmemory-policy") or "") for r in
                            (replies.values() if self._per_node(replies) else [replies])]
            else:
                policies = [str(self.client.config_get("maxmemory-policy").get(
                    "maxmemory-policy") or "")]
            policy = next((p for p in policies if p.startswith("allkeys")),
                          next((p for p in policies if p), ""))
            if policy:
                out["maxmemory_policy"] = policy
        except Exception:  # CONFIG not allowed
            pass
        return out

    def _per_node(self, reply: Any) -> bool:
        return bool(self.cluster and isinstance(reply, dict) and reply and all(
            isinstance(v, dict) for v in reply.values()) and all(
            ":" in str(k) for k in reply))

    def _first(self, reply: Any) -> dict[str, Any]:
        """A per-node reply of a cluster client (``{node: reply}``) as one node's."""
        if self._per_node(reply):
            return dict(next(iter(reply.values())))
        return dict(reply)

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

    # -- pauses ------------------------------------------------------------------------
    def set_paused(self, function_id: str, mode: str | None) -> None:
        if mode is None:
            self.client.hdel(self.keys.paused, function_id)
        else:
            self.client.hset(self.keys.paused, function_id, mode)

    def paused(self) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.paused))

    def hold(self, function_id: str, run_id: str) -> None:
        self.client.sadd(self.keys.held(function_id), run_id)

    def take_held(self, function_id: str) -> list[str]:
        # SPOP takes and forgets atomically (no MULTI: a client that waits for replicas
        # builds no transactions).
        taken: list[str] = []
        while batch := self.client.spop(self.keys.held(function_id), 1000):
            taken += [str(run_id) for run_id in batch]
        return sorted(taken)

    def publish_subscriptions(self, subs: dict[str, str]) -> None:
        if subs:
            mapping: dict[str | bytes, str] = dict(subs.items())
            self.client.hset(self.keys.subscriptions, mapping=mapping)

    def load_subscriptions(self) -> dict[str, str]:
        return dict(self.client.hgetall(self.keys.subscriptions))
