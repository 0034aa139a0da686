"""Time in the Redis store: timers, leases, the dispatch cover and deadlines, read by
the pump (every shard of them, on a Redis Cluster)."""

from __future__ import annotations

from collections.abc import Sequence

from ..port import Dispatch
from .base import RedisBase, route_of
from .lua import execute


class TimerOps(RedisBase):
    """The pump's verbs of ``RedisStore``."""

    def add_deadlines(self, entries: Sequence[tuple[str, int]]) -> None:
        if not entries:
            return
        # Members are "<kind>:<run id>": each goes to its run's shard.
        by_shard: dict[int, dict[str, int]] = {}
        for member, when in entries:
            shard = self.keys.shard_of(member.rsplit(":", 1)[-1])
            by_shard.setdefault(shard, {})[member] = when
        pipe = self.pipeline()
        for shard, mapping in by_shard.items():
            pipe.zadd(self.keys.deadlines(shard), mapping)
        pipe.execute()

    def claim_deadlines(self, now: int, limit: int) -> list[str]:
        k = self.keys
        pipe = self.pipeline()
        for shard in k.all_shards:
            pipe.zrangebyscore(k.deadlines(shard), "-inf", now, start=0, num=limit)
        found = pipe.execute()
        due = [(shard, list(ids)) for shard, ids in zip(k.all_shards, found, strict=True)
               if ids]
        if due:
            # Another pump may claim the same members at once; cancelling twice is harmless.
            pipe = self.pipeline()
            for shard, ids in due:
                pipe.zrem(k.deadlines(shard), *ids)
            pipe.execute()
        return [member for _, ids in due for member in ids][:limit]

    def claim_due(self, now: int, deadline: int, limit: int) -> list[str]:
        k = self.keys
        zsets = [key for shard in k.all_shards for key in (k.timers(shard), k.dispatch(shard))]
        if k.sharded:
            zsets.append(k.woken)
        pipe = self.pipeline()
        for key in zsets:
            self.scripts.claim.queue(pipe, [key], [now, deadline, limit])
        found = execute(pipe, self.scripts, self.client)
        return list(dict.fromkeys(rid for ids in found for rid in ids))

    def expire_leases(self, now: int, deadline: int, limit: int) -> list[str]:
        k = self.keys
        pipe = self.pipeline()
        for shard in k.all_shards:
            pipe.zrangebyscore(k.leases(shard), "-inf", now, start=0, num=limit)
        candidates = [rid for ids in pipe.execute() for rid in ids]
        if not candidates:
            return []
        pipe = self.pipeline()
        for run_id in candidates:
            shard = k.shard_of(run_id)
            self.scripts.expire_lease.queue(
                pipe, [k.run(run_id), k.leases(shard), k.timers(shard)],
                [run_id, now, deadline])
        results = execute(pipe, self.scripts, self.client)
        return [r for r, ok in zip(candidates, results, strict=True) if ok]

    def drop_timers(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            pipe = self.pipeline()
            for shard, ids in self.by_shard(run_ids).items():
                pipe.zrem(self.keys.timers(shard), *ids)
                pipe.zrem(self.keys.dispatch(shard), *ids)
            if self.keys.sharded:
                pipe.zrem(self.keys.woken, *run_ids)
            pipe.execute()

    def dispatches(self, run_ids: Sequence[str]) -> list[Dispatch | None]:
        pipe = self.pipeline()
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), "status", "meta")
        return [None if meta is None else Dispatch(status or "", route_of(meta))
                for status, meta in pipe.execute()]
