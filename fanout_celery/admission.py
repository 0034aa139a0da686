"""Where flow control acts: when a sender creates runs, and when a worker starts one."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from .events import now_ms
from .flowcontrol import IDEMPOTENCY_WINDOW, FlowControl, key_value, priority_of
from .runs import FINAL
from .store.flow import SlotSet
from .store.redis import pack_meta

if TYPE_CHECKING:
    from .fanout import Fanout
    from .function import FunctionDef
    from .routing import Subscription
    from .store.redis import NewRun

logger = logging.getLogger("fanout.flow")


def _ms(seconds: Any) -> int:
    return int(float(seconds) * 1000)  # validated to seconds when declared


def flow_of(sub: Subscription) -> FlowControl:
    return FlowControl.loads(sub.flow)


def admit(fanout: Fanout, sub: Subscription, run: NewRun, event: dict[str, Any],
          now: int) -> str:
    """Decide a new run's fate: 'create' it, 'skip' it (recorded as skipped, with the
    reason in ``run.fields['skipped']``), or 'buffered' (debounce/batch took the event)."""
    flow = flow_of(sub)
    fs = fanout.flow_store
    fid = sub.function_id
    retention = int(fanout.settings.retention * 1000)
    if flow.debounce is not None or flow.batch is not None:
        mode = "debounce" if flow.debounce is not None else "batch"
        opt: Any = flow.debounce or flow.batch
        buffer_key = fs.flow_key(mode, fid, key_value(opt.key, event))
        if flow.debounce is not None:
            period, cap, size = flow.debounce.period, flow.debounce.timeout, 0
        else:
            assert flow.batch is not None
            period, cap, size = flow.batch.timeout, None, flow.batch.max_size
        meta = pack_meta({**run.fields, "buffer": buffer_key})
        run_id, state = fs.buffer(mode, buffer_key, run.run_id, fid, event, meta, now,
                                  _ms(period),
                                  None if cap is None else _ms(cap), size,
                                  retention)
        if state == "full":
            fanout.publish_run(run_id, sub.task, sub.queue, event["name"])
        return "buffered"
    if flow.idempotency is not None:
        key = fs.flow_key("idempotency", fid, key_value(flow.idempotency, event))
        held = fs.claim(key, run.run_id, fanout.clock(), int(IDEMPOTENCY_WINDOW * 1000))
        if held and held != run.run_id:
            run.fields["skipped"] = f"idempotency: run {held} already handled this key"
            return "skip"
    if flow.rate_limit is not None:
        rl = flow.rate_limit
        key = fs.flow_key("rate", fid, key_value(rl.key, event))
        if not fs.rate(key, now, _ms(rl.period), rl.limit, run.run_id):
            run.fields["skipped"] = f"rate limit: {rl.limit} per {rl.period}s reached"
            return "skip"
    if flow.singleton is not None:
        key = fs.flow_key("singleton", fid, key_value(flow.singleton.key, event))
        held = fs.claim(key, run.run_id, now, None)
        if held and held != run.run_id:
            other = fanout.get_run(held)
            if other is None or other.status in FINAL:
                fs.unclaim(key, held)
                fs.claim(key, run.run_id, now, None)
            elif flow.singleton.mode == "skip":
                run.fields["skipped"] = f"singleton: run {held} is active"
                return "skip"
            else:
                fanout.cancel(held, f"singleton: replaced by run {run.run_id}")
                fs.unclaim(key, held)
                fs.claim(key, run.run_id, now, None)
        run.fields["singleton"] = key
    return "create"


def slot_sets(fanout: Fanout, function: FunctionDef, event: dict[str, Any]) -> list[SlotSet]:
    fs = fanout.flow_store
    out = []
    for c in function.flow.concurrency:
        scope = function.function_id if c.scope == "function" else f"global:{c.key}"
        value = key_value(c.key, event)
        out.append(SlotSet(slots=fs.flow_key("slots", scope, value),
                           queue=fs.flow_key("queue", scope, value), limit=c.limit))
    return out


def gate(fanout: Fanout, function: FunctionDef, run_id: str) -> tuple[str, list[SlotSet]]:
    """Before a run starts: take its concurrency slots and pass its throttle.
    Returns ('ok' | 'wait' | 'later', the run's slot sets)."""
    flow = function.flow
    raw = fanout.store.run_field(run_id, "events")
    if raw is None:
        return "ok", []
    event = json.loads(raw)[0]
    slots = slot_sets(fanout, function, event)
    throttle = None
    if flow.throttle is not None:
        t = flow.throttle
        interval = _ms(t.period) // t.limit
        throttle = (fanout.flow_store.flow_key("throttle", function.function_id,
                                               key_value(t.key, event)),
                    interval, interval * (t.burst - 1))
    now = now_ms()
    # Higher priority first, then first come first served.
    score = -priority_of(flow, event) * 1e13 + now
    kind, when = fanout.flow_store.gate(
        run_id, now, now + int(fanout.settings.lease_seconds * 1000), slots, throttle, score)
    if kind == "later":
        logger.debug("run %s throttled until %s", run_id, when)
    return kind, slots


def _free(fanout: Fanout, run_id: str, slots: list[SlotSet]) -> list[str]:
    """Free ``run_id``'s slots ('' frees none) and return the runs woken into them, each
    with a slot reserved. A woken run that ended while it waited (cancelled) passes its
    reserved slot straight on, rather than holding it until the reservation expires."""
    s = fanout.settings
    now = now_ms()
    deadline = now + int(s.redispatch_seconds * 1000)
    reserve = now + int(s.lease_seconds * 1000)
    freed, woken = [run_id], []
    while freed:
        popped = [w for rid in freed
                  for w in fanout.flow_store.release(rid, slots, now, deadline, reserve)]
        infos = fanout.store.dispatch_info(popped) if popped else []
        freed = [rid for rid, info in zip(popped, infos, strict=True)
                 if info is None or info[2] in FINAL]
        woken += [rid for rid in popped if rid not in freed]
    return woken


def release(fanout: Fanout, run_id: str, slots: list[SlotSet]) -> None:
    """A run stopped executing: free its slots and start the runs waiting for them."""
    if not slots:
        return
    woken = _free(fanout, run_id, slots)
    if woken:
        fanout.enqueue(woken)


def reconcile(fanout: Fanout) -> int:
    """Start waiting runs wherever slots are free (after a holder's lease expired, or a
    run waiting for a slot was cancelled). Run by the pump."""
    waiting = fanout.flow_store.waiting_queues()
    if not waiting:
        return 0
    woken: list[str] = []
    for slot_set in waiting:
        woken += _free(fanout, "", [slot_set])
    if woken:
        fanout.enqueue(woken)
    return len(woken)


def run_ended(fanout: Fanout, run: dict[str, str], run_id: str) -> None:
    if run.get("singleton"):
        fanout.flow_store.unclaim(run["singleton"], run_id)
