"""Time in the Redis store: timers, leases, the dispatch cover and deadlines, read by
the pump (every shard of them, on a Redis Cluster)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from ..port import Dispatch
from .base import ROUTE_FIELDS, RedisBase, route_of
from .lua import execute


class Announcements:
    """A pump's subscription to the announced timers (``TimerAnnouncements``)."""

    def __init__(self, client: Any, channel: str) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)

    def wait(self, timeout: float) -> int | None:
        earliest: int | None = None
        message = self._pubsub.get_message(timeout=max(0.0, timeout))
        while message is not None:
            if message.get("type") == "message":
                try:
                    due = int(message["data"])
                except (TypeError, ValueError):  # not ours: ignored
                    due = None
                if due is not None and (earliest is None or due < earliest):
                    earliest = due
            message = self._pubsub.get_message(timeout=0)
        return earliest

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._pubsub.close()


class TimerOps(RedisBase):
    """The pump's verbs of ``RedisStore``."""

    def announce_timer(self, wake_at: int) -> None:
        self.client.publish(self.keys.pump_channel, str(int(wake_at)))

    def timer_announcements(self) -> Announcements:
        return Announcements(self.client, self.keys.pump_channel)

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
        # Earliest due first across every index and shard: 1,000 sleepers due at once
        # are published in the order they were due.
        due = sorted((int(float(pairs[i + 1])), pairs[i]) for pairs in found
                     for i in range(0, len(pairs), 2))
        return list(dict.fromkeys(rid for _, rid in due))

    def claim_archive(self, now: int, deadline: int, limit: int) -> list[str]:
        k = self.keys
        pipe = self.pipeline()
        for shard in k.all_shards:
            self.scripts.claim.queue(pipe, [k.archive(shard)], [now, deadline, limit])
        found = execute(pipe, self.scripts, self.client)
        due = sorted((int(float(pairs[i + 1])), pairs[i]) for pairs in found
                     for i in range(0, len(pairs), 2))
        return [rid for _, rid in due][:limit]

    def drop_archive(self, run_ids: Sequence[str]) -> None:
        if run_ids:
            pipe = self.pipeline()
            for shard, ids in self.by_shard(run_ids).items():
                pipe.zrem(self.keys.archive(shard), *ids)
            pipe.execute()

    def next_due(self) -> int | None:
        k = self.keys
        pipe = self.pipeline()
        zsets = [k.timers(shard) for shard in k.all_shards]
        if k.sharded:
            zsets.append(k.woken)
        for key in zsets:
            pipe.zrange(key, 0, 0, withscores=True)
        scores = [int(first[0][1]) for first in pipe.execute() if first]
        return min(scores) if scores else None

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
            pipe.hmget(self.keys.run(run_id), "status", "meta", *ROUTE_FIELDS)
        # No static fields in either layout: no run (a remnant, or none at all).
        return [None if meta is None and fields[-1] is None
                else Dispatch(status or "", route_of([meta, *fields]))
                for status, meta, *fields in pipe.execute()]
