"""Flow control in the in-memory store: the same rules as ``store/redis/flow.py``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from ...model.records import FINAL, NewRun
from ..port import FlowKey, Gate, SlotSet
from .base import MemoryBase


class MemoryFlow(MemoryBase):
    """The flow-control verbs of ``MemoryStore``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.slots: dict[SlotSet, dict[str, float]] = {}
        self.queues: dict[SlotSet, dict[str, float]] = {}
        self.claims: dict[FlowKey, tuple[str, int, int | None]] = {}  # run, at, expiry
        self.tats: dict[FlowKey, tuple[int, int]] = {}  # throttle: (tat, expiry)
        self.logs: dict[FlowKey, dict[str, int]] = {}
        self.buffers: dict[FlowKey, dict[str, str]] = {}
        self.registry: dict[SlotSet, SlotSet] = {}  # queue -> its slot set, while it holds runs

    def _slot_key(self, s: SlotSet) -> SlotSet:
        return SlotSet(s.scope, s.value, 0)  # the limit is not part of the key

    def gate(self, run_id: str, *, now: int, slot_exp: int, slots: Sequence[SlotSet],
             throttle: tuple[FlowKey, int, int] | None, queue_score: float) -> Gate:
        with self._lock:
            run = self._run(run_id)
            if run is None or run["status"] in FINAL:
                return Gate("ok")
            wake = run.get("wake_at")
            if wake and int(wake) > now:
                return Gate("ok")
            held = [self.slots.setdefault(self._slot_key(s), {}) for s in slots]
            for i, (s, taken) in enumerate(zip(slots, held, strict=True)):
                for member in [m for m, exp in taken.items() if exp <= now]:
                    del taken[member]
                if run_id not in taken and len(taken) >= s.limit:
                    self.queues.setdefault(self._slot_key(s), {}).setdefault(run_id,
                                                                             queue_score)
                    self.registry[self._slot_key(s)] = s
                    for j, other in enumerate(held):
                        if j != i:
                            other.pop(run_id, None)
                    return Gate("wait")
            if throttle is not None and "started_at" not in run:
                key, interval, tolerance = throttle
                tat, expiry = self.tats.get(key, (0, 0))
                tat = max(tat if expiry > now else 0, now)
                allow_at = tat - tolerance
                if now < allow_at:
                    run["wake_at"] = str(allow_at)
                    self._z("timers")[run_id] = allow_at
                    return Gate("later", allow_at)
                self.tats[key] = (tat + interval, now + tolerance + 2 * interval + 1000)
            for s, taken in zip(slots, held, strict=True):
                taken[run_id] = slot_exp
                self.queues.get(self._slot_key(s), {}).pop(run_id, None)
            return Gate("ok")

    def release(self, run_id: str, slots: Sequence[SlotSet], *, now: int, deadline: int,
                reserve_until: int) -> list[str]:
        out: list[str] = []
        with self._lock:
            for s in slots:
                taken = self.slots.setdefault(self._slot_key(s), {})
                queue = self.queues.setdefault(self._slot_key(s), {})
                taken.pop(run_id, None)
                for member in [m for m, exp in taken.items() if exp <= now]:
                    del taken[member]
                room = s.limit - len(taken)
                for member in sorted(queue, key=lambda m: (queue[m], m))[:max(room, 0)]:
                    del queue[member]
                    taken[member] = reserve_until
                    self._z("timers")[member] = deadline
                    out.append(member)
                if not queue:
                    self.registry.pop(self._slot_key(s), None)
        return out

    def waiting_queues(self, cursor: int = 0, count: int = 200) -> tuple[int, list[SlotSet]]:
        with self._lock:
            sets = sorted(self.registry.values(), key=lambda s: (s.scope, s.value))
        page = sets[cursor:cursor + count]
        return (cursor + count if cursor + count < len(sets) else 0), page

    def reconcile(self, slots: Sequence[SlotSet], *, now: int, deadline: int,
                  reserve_until: int) -> list[list[str]]:
        return [self.release("", [s], now=now, deadline=deadline, reserve_until=reserve_until)
                for s in slots]

    def slot_state(self, slot_set: SlotSet) -> tuple[list[str], list[str]]:
        with self._lock:
            taken = self.slots.get(self._slot_key(slot_set), {})
            queue = self.queues.get(self._slot_key(slot_set), {})
            return (sorted(taken, key=lambda m: (taken[m], m)),
                    sorted(queue, key=lambda m: (queue[m], m)))

    def renew_slots(self, entries: Sequence[tuple[str, Sequence[SlotSet]]], exp: int) -> None:
        with self._lock:
            for run_id, slot_sets in entries:
                for s in slot_sets:
                    taken = self.slots.get(self._slot_key(s), {})
                    if run_id in taken:
                        taken[run_id] = exp

    def rate(self, key: FlowKey, *, now: int, period_ms: int, limit: int, member: str) -> bool:
        with self._lock:
            log = self.logs.setdefault(key, {})
            for m in [m for m, at in log.items() if at <= now - period_ms]:
                del log[m]
            if len(log) >= limit:
                return False
            log[member] = now
            return True

    def claim_key(self, key: FlowKey, run_id: str, *, now: int, window_ms: int | None) -> str:
        with self._lock:
            held = self.claims.get(key)
            if held is not None and (held[2] is None or held[2] > now):
                holder, at, _ = held
                if window_ms is None or now - at < window_ms:
                    return holder
            self.claims[key] = (run_id, now, None if window_ms is None else now + 2 * window_ms)
            return ""

    def unclaim_key(self, key: FlowKey, run_id: str) -> None:
        with self._lock:
            if self.claims.get(key, ("",))[0] == run_id:
                del self.claims[key]

    def buffer(self, mode: Literal["debounce", "batch"], key: FlowKey, run: NewRun, *,
               now: int, period_ms: int, cap_ms: int | None, max_size: int,
               retention_ms: int) -> tuple[str, str]:
        with self._lock:
            buf = self.buffers.get(key)
            event = run.events[0]
            pending = self._run(buf["run"]) if buf else None
            if buf and pending is not None and pending["status"] == "queued" \
                    and "started_at" not in pending:
                pid = buf["run"]
                events = [event] if mode == "debounce" else [*json.loads(pending["events"]),
                                                              event]
                pending["events"] = json.dumps(events, separators=(",", ":"))
                buf["count"] = str(int(buf["count"]) + 1)
                self.event_runs.setdefault(event["id"], set()).add(pid)
                if mode == "batch":
                    if int(buf["count"]) >= max_size:
                        del self.buffers[key]
                        pending.pop("wake_at", None)
                        self._z("timers")[pid] = now
                        return pid, "full"
                    return pid, "added"
                wake = now + period_ms
                if cap_ms is not None:
                    wake = min(wake, int(buf["first_at"]) + cap_ms)
                pending["wake_at"] = str(wake)
                self._z("timers")[pid] = wake
                return pid, "added"
            wake = now + period_ms
            self.buffers[key] = {"run": run.run_id, "first_at": str(now), "count": "1"}
            self.runs[run.run_id] = {"status": "queued", "created_at": str(now),
                                     "attempt": "0", "events": run.events_json,
                                     "wake_at": str(wake)}
            self.meta[run.run_id] = dict(run.meta)
            self.steps[run.run_id] = {}
            self._z("timers")[run.run_id] = wake
            self._z(f"function:{run.function_id}")[run.run_id] = now
            self.event_runs.setdefault(event["id"], set()).add(run.run_id)
            if mode == "batch" and max_size <= 1:
                del self.buffers[key]
                self._z("timers")[run.run_id] = now
                return run.run_id, "full"
            return run.run_id, "new"

    def close_buffer(self, key: FlowKey, run_id: str) -> None:
        with self._lock:
            if self.buffers.get(key, {}).get("run") == run_id:
                del self.buffers[key]
