"""Flow control in Redis: concurrency slots and their wait queues, throttle (GCRA),
rate limits, singleton and idempotency claims, debounce and batch buffers.

Every limit is global across workers because it lives here. Concurrency slots are zset
members scored by the holder's lease expiry, so a killed worker's slot frees itself when
its lease runs out; runs over a limit wait in a per-key zset (FIFO, or by priority) and
are released when a slot frees, not by re-polling the broker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from ...model.records import NewRun
from ..port import FlowKey, Gate, SlotSet
from .base import RedisBase, pack_meta
from .lua import execute


def _registry_entry(s: SlotSet) -> str:
    return f"{s.scope}|{s.value}|{s.limit}"


class FlowOps(RedisBase):
    """The flow-control verbs of ``RedisStore``."""

    def gate(self, run_id: str, *, now: int, slot_exp: int, slots: Sequence[SlotSet],
             throttle: tuple[FlowKey, int, int] | None, queue_score: float) -> Gate:
        k = self.keys
        if k.sharded:
            # The run is in another slot than the limits: read what gate.lua checks.
            status, wake, started = self.client.hmget(k.run(run_id), "status", "wake_at",
                                                      "started_at")
            state = f"{status or ''}|{wake or ''}|{1 if started else 0}"
            keys = [k.waiting, k.woken]
        else:
            state = ""
            keys = [k.run(run_id), k.timers()]
        keys += [k.flow(throttle[0]) if throttle else k.waiting, k.waiting]
        args: list[Any] = [run_id, now, slot_exp, throttle[1] if throttle else "",
                           throttle[2] if throttle else 0, queue_score, state]
        for s in slots:
            keys += [k.slots(s), k.queue(s)]
            args += [s.limit, _registry_entry(s)]
        raw = self.scripts.gate(self.client, keys, args)
        return Gate(raw[0], int(raw[1]) if len(raw) > 1 else 0)

    def release(self, run_id: str, slots: Sequence[SlotSet], *, now: int, deadline: int,
                reserve_until: int) -> list[str]:
        if not slots:
            return []
        k = self.keys
        keys = [k.woken, k.waiting]
        for s in slots:
            keys += [k.slots(s), k.queue(s)]
        return list(self.scripts.release(
            self.client, keys, [run_id, now, deadline, reserve_until,
                                *[s.limit for s in slots]]))

    def waiting_queues(self, cursor: int = 0, count: int = 200) -> tuple[int, list[SlotSet]]:
        cursor, found = self.client.hscan(self.keys.waiting, cursor, count=count)
        out = []
        for raw in found.values():
            parts = raw.split("|")
            if len(parts) == 3 and parts[2].isdigit():  # else written by another version
                out.append(SlotSet(parts[0], parts[1], int(parts[2])))
        return int(cursor), out

    def reconcile(self, slots: Sequence[SlotSet], *, now: int, deadline: int,
                  reserve_until: int) -> list[list[str]]:
        if not slots:
            return []
        k = self.keys
        pipe = self.pipeline()
        for s in slots:
            self.scripts.release.queue(pipe, [k.woken, k.waiting, k.slots(s), k.queue(s)],
                                       ["", now, deadline, reserve_until, s.limit])
        return [list(r) for r in execute(pipe, self.scripts, self.client)]

    def slot_state(self, slot_set: SlotSet) -> tuple[list[str], list[str]]:
        pipe = self.pipeline()
        pipe.zrange(self.keys.slots(slot_set), 0, -1)
        pipe.zrange(self.keys.queue(slot_set), 0, -1)
        holders, queued = pipe.execute()
        return list(holders), list(queued)

    def renew_slots(self, entries: Sequence[tuple[str, Sequence[SlotSet]]], exp: int) -> None:
        pipe = self.pipeline()
        for run_id, slot_sets in entries:
            for s in slot_sets:
                pipe.zadd(self.keys.slots(s), {run_id: exp}, xx=True)
        pipe.execute()

    def rate(self, key: FlowKey, *, now: int, period_ms: int, limit: int, member: str) -> bool:
        return bool(self.scripts.rate(self.client, [self.keys.flow(key)],
                                      [now, period_ms, limit, member]))

    def claim_key(self, key: FlowKey, run_id: str, *, now: int, window_ms: int | None) -> str:
        held = self.scripts.claim_key(self.client, [self.keys.flow(key)],
                                      [run_id, now, "" if window_ms is None else window_ms])
        return str(held).split("|", 1)[0] if held else ""

    def unclaim_key(self, key: FlowKey, run_id: str) -> None:
        self.scripts.unclaim_key(self.client, [self.keys.flow(key)], [run_id])

    def buffer(self, mode: Literal["debounce", "batch"], key: FlowKey, run: NewRun, *,
               now: int, period_ms: int, cap_ms: int | None, max_size: int,
               retention_ms: int) -> tuple[str, str]:
        k = self.keys
        buffer_key = k.flow(key)
        # On a cluster the pending run lives in the buffer's shard (its id says so), with
        # its timer, history and event run list: the script touches one slot.
        shard = k.flow_shard(key)
        new_id = k.colocated(run.run_id, shard)
        event = run.events_json[1:-1]  # the one event, as JSON
        while True:
            pending = self.client.hget(buffer_key, "run") or ""
            raw = self.scripts.buffer(
                self.client,
                [buffer_key, k.run(pending or new_id), k.run(new_id), k.timers(shard),
                 k.function_runs(run.function_id, shard),
                 k.event_runs(run.event_ids[0], shard)],
                [mode, new_id, now, period_ms, "" if cap_ms is None else cap_ms,
                 max_size, event, pack_meta(run.meta), retention_ms, pending, self.as_set])
            if raw[0] != "retry":  # else another sender changed the buffer: read it again
                return str(raw[0]), str(raw[1])

    def close_buffer(self, key: FlowKey, run_id: str) -> None:
        self.scripts.close_buffer(self.client, [self.keys.flow(key)], [run_id])
