"""Run state on a real local Redis Cluster (3 masters with a replica each, joined by the
``redis_cluster`` fixture), the broker on the session's plain Redis, real in-process
workers: what spans slots keeps its guarantees, and the keys spread over the masters."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from support import configure_app, wait_until

from fanout_celery import (
    CancelOn,
    Concurrency,
    Debounce,
    Event,
    Fanout,
    RetryPolicy,
    Singleton,
)
from fanout_celery.model.definition import Subscription
from fanout_celery.model.events import derived_id
from fanout_celery.model.records import match_bucket, new_run
from fanout_celery.store.port import WaiterRef
from fanout_celery.store.redis import RedisStore, flush_database
from fanout_celery.store.redis.keys import key_slot

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=3, backoff=0.05, jitter=False)


@pytest.fixture
def cluster_url(redis_cluster: str) -> str:
    flush_database(redis_cluster)
    return redis_cluster


@pytest.fixture
def app(redis_url: str, cluster_url: str) -> Iterator[Celery]:
    application = Celery("cluster-tests", set_as_current=False)
    configure_app(application, redis_url)
    application.conf.fanout_redis_url = cluster_url
    yield application
    application.close()


@pytest.fixture
def fanout(app: Celery) -> Fanout:
    return Fanout(app)


def masters_of(url: str) -> list[redis.Redis]:
    """A client per master of the cluster."""
    from redis.cluster import RedisCluster

    from fanout_celery.store.redis.connect import cluster_nodes

    (host, port), *_ = cluster_nodes(url)[0]
    probe = RedisCluster(host=host, port=port, decode_responses=True)
    try:
        return [redis.Redis(host=n.host, port=n.port, decode_responses=True)
                for n in probe.get_primaries()]
    finally:
        probe.close()


def test_functions_run_with_their_state_on_a_cluster(app, fanout, worker, cluster_url):
    calls: Counter[str] = Counter()

    def counted(name: str, value: Any) -> Any:
        calls[name] += 1
        return value

    @fanout.function("c-child", retries=FAST)
    def child(ctx):
        return ctx.step.run("double", counted, "double", ctx.event.data["n"] * 2)

    @fanout.function("c-order", event="c/order", retries=FAST,
                     cancel_on=[CancelOn(event="c/abandon", match="data.order")])
    def order(ctx):
        n = ctx.event.data["n"]
        first = ctx.step.run("first", counted, "first", n)
        ctx.step.sleep("nap", 0.1)
        doubled = ctx.step.invoke("child", function="c-child", data={"n": n})
        branches = ctx.step.parallel("both", [lambda: n + 1, lambda: n + 2])
        sent = ctx.step.send_event("notify", [Event(name="c/notified", data={"n": n})])
        paid = ctx.step.wait_for_event("paid", event="c/paid", match="data.order",
                                       timeout="30s")
        return {"first": first, "doubled": doubled, "branches": branches,
                "sent": sent, "paid": paid.data["amount"] if paid else None}

    @fanout.function("c-notified", event="c/notified", retries=FAST)
    def notified(ctx):
        return ctx.step.run("note", counted, "note", ctx.event.data["n"])

    with worker(app, concurrency=6):
        ids = fanout.send([Event(name="c/order", data={"order": f"o{n}", "n": n})
                           for n in range(12)])
        run_ids = [derived_id("c-order", e) for e in ids]
        # Waiting for "paid" (not for the child or the branches, which park the run too):
        # past its send_event, so o11 has sent its notification when its cancel comes.
        waiting = lambda rid: (r := fanout.get_run(rid)) is not None and r.status == "waiting" \
            and any(s.id == "paid" for s in r.steps)  # noqa: E731
        for rid in run_ids:
            deadline = time.monotonic() + 30
            while not waiting(rid):
                assert time.monotonic() < deadline, fanout.get_run(rid)
                time.sleep(0.02)
        fanout.send([Event(name="c/paid", data={"order": f"o{n}", "amount": n * 10})
                     for n in range(11)])
        fanout.send(Event(name="c/abandon", data={"order": "o11"}))
        done = [fanout.wait_for_run(rid, timeout=30) for rid in run_ids]
        # Twelve notifications: o11 sent its own before its cancel reached it.
        notes = wait_until(lambda: (found := [
            r for r in fanout.list_runs(function="c-notified", limit=100).runs
            if r.status == "completed"]) and len(found) == 12 and found, timeout=30)

    assert [r.status for r in done] == ["completed"] * 11 + ["cancelled"]
    for n, run in enumerate(done[:11]):
        assert {**run.output, "sent": len(run.output["sent"])} == {
            "first": n, "doubled": 2 * n, "branches": [n + 1, n + 2], "sent": 1,
            "paid": n * 10}
    assert all(r.status == "completed" for r in notes)
    # Exactly once, whatever shard each run lived in.
    assert calls == {"first": 12, "double": 12, "note": 12}  # o11 sent before its cancel
    # The runs did spread: over several shards, and over every master.
    shards = {fanout.store.keys.shard_of(rid) for rid in run_ids}  # type: ignore[attr-defined]
    assert len(shards) > 6


def test_flow_control_limits_stay_global_on_a_cluster(app, fanout, worker):
    active, peak = [0], [0]
    lock = threading.Lock()

    def hold() -> None:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    @fanout.function("c-limited", event="c/limited", retries=FAST,
                     concurrency=Concurrency(2))
    def limited(ctx):
        ctx.step.run("hold", hold)

    @fanout.function("c-single", event="c/single", retries=FAST,
                     singleton=Singleton(key="event.data.k"))
    def single(ctx):
        ctx.step.run("wait", time.sleep, 0.05)

    @fanout.function("c-debounced", event="c/debounced", retries=FAST,
                     debounce=Debounce(0.3, key="event.data.k"))
    def debounced(ctx):
        return ctx.event.data["n"]

    with worker(app, concurrency=8):
        limited_ids = fanout.send([Event(name="c/limited", data={}) for _ in range(10)])
        single_ids = fanout.send([Event(name="c/single", data={"k": "x"}) for _ in range(3)])
        deb_ids = fanout.send([Event(name="c/debounced", data={"k": "y", "n": n})
                               for n in range(4)])
        for eid in limited_ids:
            assert fanout.wait_for_run(derived_id("c-limited", eid), 30).status == "completed"
        singles = [fanout.runs_for_event(e)[0] for e in single_ids]
        [pending] = {r.id for e in deb_ids for r in fanout.runs_for_event(e)}
        debounced_run = fanout.wait_for_run(pending, timeout=30)
    assert peak[0] <= 2
    assert [r.status == "skipped" for r in singles] == [False, True, True]
    assert debounced_run.output == 3


RACE = Subscription("race", ("race/start",), task="fanout.race")


def race_once(store: RedisStore, i: int) -> tuple[bool, bool]:
    """One round: a run registers a wait for ``race/go`` (value ``i``) while another
    thread sends the matching event. Returns (seen by the registration, by the send)."""
    run = new_run(RACE, [{"name": "race/start", "id": f"s{i}", "ts": 0, "data": {"k": i}}])
    now = int(time.time() * 1000)
    store.create_runs([run], [], now=now, dispatch_deadline=now + 60_000,
                      keep_events_ms=60_000, lookback_ms=60_000)
    store.start(run.run_id, "t", now=now, lease_exp=now + 60_000)
    bucket = match_bucket("data.k", i)
    ref = WaiterRef("race/go", bucket, f"{run.run_id} w")
    waiter = json.dumps({"path": "data.k", "value": i, "bucket": bucket})
    event = {"name": "race/go", "id": f"g{i}", "ts": 0, "data": {"k": i}}
    out: dict[str, Any] = {}
    start = threading.Barrier(2)

    def register() -> None:
        start.wait()
        time.sleep(random.random() * 0.0005)
        out["recent"] = store.park_waiting(
            run.run_id, "t", "w", '{"status": "waiting"}', ref=ref, path="data.k",
            waiter=waiter, timeout_at=now + 60_000, path_expires=now + 120_000,
            any_limit=10, lease_exp=now + 60_000)

    def send() -> None:
        start.wait()
        time.sleep(random.random() * 0.0005)
        out["waiters"] = store.create_runs([], [event], now=now, dispatch_deadline=now,
                                           keep_events_ms=60_000,
                                           lookback_ms=60_000).waiters

    threads = [threading.Thread(target=register), threading.Thread(target=send)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (event["id"] in out["recent"],
            any(ref.field in w.steps for w in out["waiters"]))


@pytest.mark.parametrize("where", ["cluster", "one-redis"])
def test_a_send_racing_a_wait_registration_is_seen_by_one_side_every_time(
        cluster_url, redis_server, where):
    # The invariant behind "no lost wake-ups", where the run and its event name live in
    # different slots: whatever the interleaving, the event is either among the events
    # the registration returns, or among the waiters the send returns.
    store = RedisStore(cluster_url if where == "cluster" else redis_server, "race")
    flush_database(store.url)
    rounds, seen_by = 1500, Counter[str]()
    try:
        for i in range(rounds):
            by_registration, by_send = race_once(store, i)
            assert by_registration or by_send, f"round {i}: the event was missed"
            seen_by["both" if by_registration and by_send else
                    "registration" if by_registration else "send"] += 1
    finally:
        store.close()
    print(f"\nwait race on {where}: {rounds} rounds, seen by {dict(seen_by)}")
    assert seen_by["registration"] and seen_by["send"]  # both interleavings happened


def test_keys_spread_evenly_over_the_masters(app, fanout, worker, cluster_url):
    @fanout.function("c-spread", event="c/spread", retries=FAST)
    def spread(ctx):
        return ctx.step.run("one", lambda: 1)

    with worker(app, concurrency=8):
        ids = fanout.send([Event(name="c/spread", data={"n": n}) for n in range(600)])
        for eid in ids:
            fanout.wait_for_run(derived_id("c-spread", eid), timeout=60)
    counts = [m.dbsize() for m in masters_of(cluster_url)]
    mean = sum(counts) / len(counts)
    print(f"\nkeys per master after 600 runs: {counts} (mean {mean:.0f})")
    assert all(abs(c - mean) <= 0.2 * mean for c in counts), counts
    # Every run's keys are in one slot, that of its shard.
    k = fanout.store.keys  # type: ignore[attr-defined]
    rid = derived_id("c-spread", ids[0])
    assert len({key_slot(key) for key in (k.run(rid), k.steps(rid), k.done(rid),
                                          k.timers(k.shard_of(rid)))}) == 1
