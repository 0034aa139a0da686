"""Where events meet runs in the Redis store: noting sent events for the waits and
``cancel_on`` entries of their name, registering waits, and resolving them.

On a Redis Cluster the waiters of an event name are in that name's slot, not in their
runs': the steps that touch both are ordered so that no event is missed (see
``park_waiting``), and a waiter is dropped only after its run's record is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...model.records import ANY_BUCKET, event_buckets
from ..port import CancelEntry, Resolution, WaiterRef, Waiters
from .base import RedisBase, fenced, pairs, resolution, server_now
from .lua import execute


class EventOps(RedisBase):
    """The event-facing verbs of ``RedisStore``."""

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
            pipe = self.pipeline()
            self._queue_note(pipe, name, events, lookback_ms)
            [reply] = execute(pipe, self.scripts, self.client)
        raise RuntimeError(f"the match paths of {name!r} keep changing; events not noted")

    def settle(self, run_id: str, token: str, key: str, expect: str, record: str, *,
               lease_exp: int, waiter: WaiterRef | None = None) -> str | None:
        k = self.keys
        # On a cluster the waiter is in its name's slot: it is dropped after the record.
        inline = waiter is not None and not k.sharded
        waits = k.waits(waiter.name, waiter.bucket) if waiter and inline else k.run(run_id)
        raw = self.scripts.settle(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(k.shard_of(run_id)), waits],
            [run_id, token, key, expect, record, lease_exp,
             waiter.field if waiter and inline else ""])
        if isinstance(raw, list):
            return str(raw[1])
        if waiter is not None and not inline:
            self.client.hdel(k.waits(waiter.name, waiter.bucket), waiter.field)
        fenced(raw, run_id, f"at step {key!r}")
        return None

    def park_waiting(self, run_id: str, token: str, key: str, record: str, *,
                     ref: WaiterRef, path: str | None, waiter: str, timeout_at: int,
                     path_expires: int, any_limit: int, lease_exp: int = 0) -> list[str]:
        k = self.keys
        if k.sharded:
            return self._park_waiting_sharded(run_id, token, key, record, ref=ref,
                                              path=path, waiter=waiter,
                                              timeout_at=timeout_at,
                                              path_expires=path_expires,
                                              any_limit=any_limit, lease_exp=lease_exp)
        raw = self.scripts.park_waiting(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(), k.timers(),
                          k.waits(ref.name, ref.bucket), k.wait_paths(ref.name),
                          k.recent(ref.name), k.recent_bucket(ref.name, ref.bucket)],
            [run_id, token, key, record, ref.field, waiter, timeout_at, path or "",
             path_expires, any_limit])
        fenced(int(raw[0]), run_id, f"at step {key!r}")
        return list(raw[1]) if len(raw) > 1 else []

    def register_waiter(self, ref: WaiterRef, *, path: str | None, waiter: str, since: int,
                        path_expires: int, any_limit: int) -> list[str]:
        k = self.keys
        return list(self.scripts.register_wait(
            self.client, [k.waits(ref.name, ref.bucket), k.wait_paths(ref.name),
                          k.recent(ref.name), k.recent_bucket(ref.name, ref.bucket)],
            [ref.field, waiter, since, path or "", path_expires, any_limit]))

    def _park_waiting_sharded(self, run_id: str, token: str, key: str, record: str, *,
                              ref: WaiterRef, path: str | None, waiter: str,
                              timeout_at: int, path_expires: int, any_limit: int,
                              lease_exp: int) -> list[str]:
        """park_waiting on a cluster, where the run and the waiters of its event name are
        in different slots, in three steps ordered so that no event is missed:

        1. the step's record, "waiting", is checkpointed (the run keeps executing);
        2. the waiter is registered with the events noted since the run's creation
           (register_wait.lua, in the name's slot): an event noted before is returned,
           one noted after resolves the step's record;
        3. the run parks, only if that record is still "waiting"; if an event resolved it
           meanwhile, the run is queued at once instead, and resumes with it.

        A crash after 1 or 2 leaves the run executing: its lease expires, the run resumes
        and registers the waiter again (the same field: idempotent)."""
        k = self.keys
        shard = k.shard_of(run_id)
        pipe = self.pipeline()
        self.scripts.checkpoint.queue(pipe, [k.run(run_id), k.steps(run_id), k.leases(shard)],
                                      [run_id, token, lease_exp, key, record])
        pipe.hget(k.run(run_id), "created_at")
        code, created_at = execute(pipe, self.scripts, self.client)
        fenced(code, run_id, f"at step {key!r}")
        recent = self.register_waiter(ref, path=path, waiter=waiter,
                                      since=int(created_at or 0), path_expires=path_expires,
                                      any_limit=any_limit)
        raw = self.scripts.park(
            self.client, [k.run(run_id), k.steps(run_id), k.leases(shard), k.timers(shard)],
            [run_id, token, "waiting", timeout_at, key, "", "waiting"])
        if isinstance(raw, list):  # resolved between 2 and 3: run it again now
            raw = self.scripts.park(
                self.client, [k.run(run_id), k.steps(run_id), k.leases(shard),
                              k.timers(shard)],
                [run_id, token, "queued", server_now(self.client), "", "", ""])
        if raw == -1:
            self.client.hdel(k.waits(ref.name, ref.bucket), ref.field)
        fenced(raw, run_id, f"at step {key!r}")
        return recent

    def resolve(self, run_id: str, key: str, expect: str, record: str, *, deadline: int,
                waiter: WaiterRef | None = None) -> Resolution:
        k = self.keys
        inline = waiter is not None and not k.sharded
        waits = k.waits(waiter.name, waiter.bucket) if waiter and inline else k.run(run_id)
        raw = self.scripts.resolve(
            self.client, [k.run(run_id), k.steps(run_id), k.timers(k.shard_of(run_id)), waits],
            [run_id, key, expect, record, waiter.field if waiter and inline else "",
             deadline])
        outcome = resolution(raw)
        if waiter is not None and not inline and outcome.outcome != "none":
            # On a cluster, after the record: a crash in between leaves a waiter whose
            # step is resolved, which the next matching event finds resolved and drops.
            self.client.hdel(k.waits(waiter.name, waiter.bucket), waiter.field)
        return outcome

    def drop_waiters(self, entries: Sequence[WaiterRef]) -> None:
        self._hdel_all([(self.keys.waits(w.name, w.bucket), w.field) for w in entries])

    def drop_cancels(self, entries: Sequence[tuple[str, str, str]]) -> None:
        self._hdel_all([(self.keys.cancels(name, bucket), run_id)
                        for name, bucket, run_id in entries])

    def _hdel_all(self, entries: Sequence[tuple[str, str]]) -> None:
        if entries:
            pipe = self.pipeline()
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
        pipe = self.pipeline()
        for name, group in by_name.items():
            args: list[Any] = []
            for e in group:
                args += [e.run_id, e.entry, e.path or "", e.expires]
            self.scripts.add_cancels.queue(
                pipe, [k.cancel_paths(name), *(k.cancels(name, e.bucket) for e in group)],
                args)
        execute(pipe, self.scripts, self.client)
