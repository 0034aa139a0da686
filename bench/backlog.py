"""Figure 8: costs that must not grow with the backlog.

On the state Redis, under a prefix of its own, with no worker: the store's verbs set up
a backlog (waiters of one event name, recent events, waiting flow-control queues, a run
history), then one operation is timed against it, best of five, beside the same
operation with no backlog.

- a send of an event that matches none of W waiters of its name;
- a ``wait_for_event`` registration after R events of its name (a path in use before,
  and the first waiter of a new path);
- one pump reconcile round with Q keyed concurrency queues holding runs;
- a page of 50 runs of a function with H runs in its history (and with a status filter).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from fanout_celery import Fanout
from fanout_celery.engine.admission import Admission
from fanout_celery.model.definition import Subscription
from fanout_celery.model.records import match_bucket, new_run, waiter_field
from fanout_celery.store.port import SlotSet, Started, WaiterRef

from .harness import Bench

DAY = 86_400_000
SUB = Subscription("backlog", ("bench/backlog",), task="fanout.backlog")


def best_ms(call: Callable[[], Any], repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def fig_backlog(b: Bench) -> None:
    quick = b.sizes.runs < 1000
    waiters, recent, queues, history = ((2_000, 10_000, 2_000, 20_000) if quick else
                                        (10_000, 60_000, 10_000, 100_000))
    b.header(f"8. Costs against a backlog ({waiters:,} waiters, {recent:,} recent events, "
             f"{queues:,} waiting queues, {history:,} runs in a history), best of 5, on the "
             "state Redis, no worker")
    app = Celery("bench-backlog", broker=b.app.conf.broker_url, set_as_current=False)
    app.conf.update(fanout_redis_url=b.fanout.settings.redis_url,
                    fanout_key_prefix="bench-backlog", result_backend=None)
    fanout = Fanout(app)

    @fanout.function("backlog", event="bench/backlog")
    def backlog(ctx: Any) -> None:
        return None

    store = fanout.store
    now = int(time.time() * 1000)

    def create(n: int, tag: str, listed: bool = True) -> list[str]:
        ids = []
        for start in range(0, n, 500):
            chunk = [{"name": "bench/backlog", "id": f"{tag}-{i}", "ts": now,
                      "data": {"user": i}} for i in range(start, min(start + 500, n))]
            runs = [new_run(SUB, [e]) for e in chunk]
            store.create_runs(runs, chunk if listed else [], now=now, dispatch_deadline=now,
                              keep_events_ms=DAY, lookback_ms=DAY)
            ids += [r.run_id for r in runs]
        return ids

    def wait(run_id: str, name: str, path: str | None, value: Any) -> list[str]:
        t = int(time.time() * 1000)
        started = store.start(run_id, "t", now=t, lease_exp=t + 60_000)
        assert isinstance(started, Started)
        bucket = match_bucket(path, value)
        return store.park_waiting(
            run_id, "t", "w", json.dumps({"status": "waiting", "kind": "wait_for_event"}),
            ref=WaiterRef(name, bucket, waiter_field(run_id, "w")), path=path,
            waiter=json.dumps({"path": path, "value": value, "bucket": bucket}),
            timeout_at=t + 3_600_000, path_expires=t + 3_700_000, any_limit=1)

    # -- a send past W waiters that do not match
    for i, run_id in enumerate(create(waiters, "w", listed=False)):
        wait(run_id, "bench/waited", "data.user", i)
    empty = best_ms(lambda: fanout.send({"name": "bench/quiet", "data": {"user": -1}}))
    full = best_ms(lambda: fanout.send({"name": "bench/waited", "data": {"user": -1}}))
    b.say(f"  send, no waiters: {empty:.2f} ms; {waiters:,} waiters of other values: "
          f"{full:.2f} ms")
    b.row("8", f"send past {waiters:,} non-matching waiters", f"{full:.2f} ms",
          f"{empty:.2f} ms (none)", f"{full / empty:.2f}x", "O(matching)", full < 5 * empty)

    # -- a wait registration after R events of its name
    [first] = create(1, "r0", listed=False)
    wait(first, "bench/recent", "data.user", -1)  # the path is in use from now on
    time.sleep(0.01)
    fresh = [first, *create(2, "r", listed=False)]  # created after: their waits may use it
    for start in range(0, recent, 500):
        events = [{"name": "bench/recent", "id": f"e-{i}", "ts": now, "data": {"user": i}}
                  for i in range(start, min(start + 500, recent))]
        store.create_runs([], events, now=now, dispatch_deadline=now, keep_events_ms=DAY,
                          lookback_ms=DAY)
    started = time.perf_counter()
    found = wait(fresh[1], "bench/recent", "data.user", 7)
    known = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    scanned = wait(fresh[2], "bench/recent", "data.other", 7)
    new_path = (time.perf_counter() - started) * 1000
    b.say(f"  registration after {recent:,} recent events: {known:.2f} ms ({len(found)} id "
          f"returned, path in use); first waiter of a new path: {new_path:.1f} ms "
          f"({len(scanned):,} ids)")
    b.row("8", f"wait registration, {recent:,} recent events", f"{known:.2f} ms",
          "", f"{len(found)} id read", "O(matching)", len(found) <= 1)

    # -- one reconcile round with Q waiting queues
    runs = create(2 * queues, "q", listed=False)
    t = int(time.time() * 1000)
    for i in range(queues):
        slot = [SlotSet("backlog", f"k{i}", 1)]
        store.gate(runs[2 * i], now=t, slot_exp=t + 3_600_000, slots=slot, throttle=None,
                   queue_score=0)
        store.gate(runs[2 * i + 1], now=t, slot_exp=t + 3_600_000, slots=slot,
                   throttle=None, queue_score=0)
    admission = Admission(store, fanout.settings, fanout.clock)
    round_ms = best_ms(admission.reconcile)
    b.say(f"  reconcile round with {queues:,} waiting queues: {round_ms:.1f} ms "
          "(200 queues a round, in one round trip)")
    b.row("8", f"pump reconcile round, {queues:,} queues", f"{round_ms:.1f} ms", "",
          "", "bounded", round_ms < 100)

    # -- a page of runs out of H
    create(history, "h")
    page = best_ms(lambda: fanout.list_runs(function="backlog", limit=50))
    filtered = best_ms(lambda: fanout.list_runs(function="backlog", status="queued", limit=50))
    b.say(f"  a page of 50 runs out of {history + 2 * queues + waiters + 3:,}: {page:.1f} ms; "
          f"with a status filter: {filtered:.1f} ms")
    b.row("8", f"page of 50 runs, {history:,} in the history", f"{page:.1f} ms",
          f"{filtered:.1f} ms (status filter)", "", "O(page)", page < 50)
    app.close()
