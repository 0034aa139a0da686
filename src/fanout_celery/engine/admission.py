"""Flow control's decisions: when a sender creates a run (``admit``), and when a worker
starts one (``gate``) or stops executing it (``release``).

``admit`` returns a ``Decision``; the dispatcher acts on it. The limits themselves are
kept by the store, so they hold across every sender and worker.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Any, Literal

from ..model.definition import FunctionDef, Subscription
from ..model.events import now_ms
from ..model.flowcontrol import IDEMPOTENCY_WINDOW, FlowControl, key_value, priority_of
from ..model.records import FINAL, NewRun
from ..model.settings import Settings
from ..store.port import FlowKey, SlotSet, Store

logger = logging.getLogger("fanout.flow")


def _ms(seconds: Any) -> int:
    return int(float(seconds) * 1000)  # validated to seconds when declared


@dataclass(frozen=True)
class Decision:
    """A new run's fate. ``create`` it (with ``meta`` added to its record, after
    cancelling ``cancel`` and taking over its singleton ``key``); ``skip`` it (recorded as
    skipped, for ``reason``); or ``buffered`` (a debounce or batch took the event;
    ``publish``: the run of a batch that is now full)."""

    fate: Literal["create", "skip", "buffered"]
    reason: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    cancel: str | None = None
    key: FlowKey | None = None
    publish: NewRun | None = None


CREATE = Decision("create")


class Admission:
    """Flow control over one store."""

    def __init__(self, store: Store, settings: Settings, clock: Callable[[], int]) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock  # idempotency windows (tests move it a day on)
        self._cursor = 0  # where the pump's next reconcile takes up

    # -- senders ----------------------------------------------------------------------
    def admit(self, sub: Subscription, run: NewRun, event: dict[str, Any],
              now: int, pending: Container[str] = ()) -> Decision:
        """Decide the fate of ``run``, which ``event`` would start for ``sub``.
        ``pending``: the runs admitted for earlier events of the same send, not written
        yet (a singleton key one of them holds is held by an active run)."""
        flow = sub.flow_control
        fid = sub.function_id
        if flow.debounce is not None or flow.batch is not None:
            return self._buffer(flow, fid, run, event, now)
        if flow.idempotency is not None:
            key = FlowKey("idempotency", fid, key_value(flow.idempotency, event))
            held = self.store.claim_key(key, run.run_id, now=self.clock(),
                                        window_ms=int(IDEMPOTENCY_WINDOW * 1000))
            if held and held != run.run_id:
                return Decision("skip", f"idempotency: run {held} already handled this key")
        if flow.rate_limit is not None:
            rl = flow.rate_limit
            key = FlowKey("rate", fid, key_value(rl.key, event))
            if not self.store.rate(key, now=now, period_ms=_ms(rl.period), limit=rl.limit,
                                   member=run.run_id):
                return Decision("skip", f"rate limit: {rl.limit} per {rl.period}s reached")
        if flow.singleton is not None:
            key = FlowKey("singleton", fid, key_value(flow.singleton.key, event))
            meta = {"singleton": key.dumps()}
            held = self.store.claim_key(key, run.run_id, now=now, window_ms=None)
            if held and held != run.run_id:
                [status] = self.store.statuses([held])
                if status is None and held in pending:
                    status = "queued"
                if status is None or status in FINAL:
                    self.take_over(key, held, run.run_id, now)
                elif flow.singleton.mode == "skip":
                    return Decision("skip", f"singleton: run {held} is active")
                else:
                    return Decision("create", meta=meta, cancel=held, key=key)
            return Decision("create", meta=meta)
        return CREATE

    def take_over(self, key: FlowKey, held: str, run_id: str, now: int) -> None:
        """Give a singleton key held by ``held`` (ended, or just cancelled) to ``run_id``."""
        self.store.unclaim_key(key, held)
        self.store.claim_key(key, run_id, now=now, window_ms=None)

    def _buffer(self, flow: FlowControl, fid: str, run: NewRun, event: dict[str, Any],
                now: int) -> Decision:
        if flow.debounce is not None:
            d = flow.debounce
            key = FlowKey("debounce", fid, key_value(d.key, event))
            mode: Literal["debounce", "batch"] = "debounce"
            period, cap, size = d.period, d.timeout, 0
        else:
            assert flow.batch is not None
            key = FlowKey("batch", fid, key_value(flow.batch.key, event))
            mode, period, cap, size = "batch", flow.batch.timeout, None, flow.batch.max_size
        pending, state = self.store.buffer(
            mode, key, run.with_meta(buffer=key.dumps()), now=now, period_ms=_ms(period),
            cap_ms=None if cap is None else _ms(cap), max_size=size,
            retention_ms=self.settings.keep_events_ms)
        full = NewRun(pending, fid, run.events, run.meta) if state == "full" else None
        return Decision("buffered", publish=full)

    # -- workers ----------------------------------------------------------------------
    def slot_sets(self, function: FunctionDef, event: dict[str, Any]) -> list[SlotSet]:
        return [SlotSet(function.function_id if c.scope == "function" else f"global:{c.key}",
                        key_value(c.key, event), c.limit)
                for c in function.flow.concurrency]

    def gate(self, function: FunctionDef, run_id: str) -> tuple[str, list[SlotSet]]:
        """Before a run starts: take its concurrency slots and pass its throttle.
        Returns ('ok' | 'wait' | 'later', the run's slot sets)."""
        flow = function.flow
        raw = self.store.run_field(run_id, "events")
        if raw is None:
            return "ok", []
        event = json.loads(raw)[0]
        slots = self.slot_sets(function, event)
        throttle = None
        if flow.throttle is not None:
            t = flow.throttle
            interval = _ms(t.period) // t.limit
            throttle = (FlowKey("throttle", function.function_id, key_value(t.key, event)),
                        interval, interval * (t.burst - 1))
        now = now_ms()
        # Higher priority first, then first come first served.
        score = -priority_of(flow, event) * 1e13 + now
        gate = self.store.gate(run_id, now=now, slot_exp=now + self.settings.lease_ms,
                               slots=slots, throttle=throttle, queue_score=score)
        if gate.kind == "later":
            logger.debug("run %s throttled until %s", run_id, gate.when)
        return gate.kind, slots

    def release(self, run_id: str, slots: list[SlotSet]) -> list[str]:
        """Free ``run_id``'s slots ('' frees none) and return the runs woken into them,
        each with a slot reserved. A woken run that ended while it waited (cancelled)
        passes its reserved slot straight on, rather than holding it until the
        reservation expires."""
        if not slots:
            return []
        s = self.settings
        now = now_ms()
        freed, woken = [run_id], []
        while freed:
            popped = [w for rid in freed
                      for w in self.store.release(rid, slots, now=now,
                                                  deadline=now + s.redispatch_ms,
                                                  reserve_until=now + s.lease_ms)]
            found = self.store.dispatches(popped) if popped else []
            freed = [rid for rid, d in zip(popped, found, strict=True)
                     if d is None or d.status in FINAL]
            woken += [rid for rid in popped if rid not in freed]
        return woken

    def reconcile(self, count: int = 200) -> list[str]:
        """Start waiting runs wherever slots are free (after a holder's lease expired,
        or a run waiting for a slot was cancelled). Run by the pump: each round looks at
        about ``count`` wait queues, in one round trip, taking up where the last left
        off, so a round costs the same with ten queues or ten thousand."""
        self._cursor, sets = self.store.waiting_queues(self._cursor, count)
        if not sets:
            return []
        s = self.settings
        now = now_ms()
        popped = self.store.reconcile(sets, now=now, deadline=now + s.redispatch_ms,
                                      reserve_until=now + s.lease_ms)
        woken = [(slot_set, rid) for slot_set, ids in zip(sets, popped, strict=True)
                 for rid in ids]
        found = self.store.dispatches([rid for _, rid in woken]) if woken else []
        out = []
        for (slot_set, rid), dispatch in zip(woken, found, strict=True):
            if dispatch is None or dispatch.status in FINAL:
                out += self.release(rid, [slot_set])  # ended while it waited: pass it on
            else:
                out.append(rid)
        return out

    def run_ended(self, run: dict[str, str], run_id: str) -> None:
        """A run ended: release its singleton key."""
        key = FlowKey.loads(run.get("singleton") or "")
        if key is not None:
            self.store.unclaim_key(key, run_id)
