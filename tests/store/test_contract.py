"""The store port's contract, checked against both implementations: the Redis store on a
real redis-server, and the in-memory store. Each test drives the verbs directly."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fanout_celery.errors import CancelRequested, LeaseLostError
from fanout_celery.model.definition import Subscription
from fanout_celery.model.records import NewRun, Route, match_bucket, new_run, pack_step
from fanout_celery.store.memory import MemoryStore
from fanout_celery.store.port import (
    CancelEntry,
    FlowKey,
    NotStarted,
    SlotSet,
    Started,
    Store,
    WaiterRef,
)
from fanout_celery.store.redis import RedisStore, flush_database

SUB = Subscription("contract", ("app/x",), task="fanout.contract", queue="q")
DAY = 86_400_000


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = request.getfixturevalue("redis_server" if request.param == "redis"
                                  else "redis_cluster")
    flush_database(url)
    redis_store = RedisStore(url, "contract")
    yield redis_store
    redis_store.close()


def now() -> int:
    return int(time.time() * 1000)


def event(n: int | str, name: str = "app/x", **data: Any) -> dict[str, Any]:
    return {"name": name, "id": f"ev-{n}", "ts": now(), "data": data}


def create(store: Store, *events: dict[str, Any]) -> list[NewRun]:
    runs = [new_run(SUB, [e]) for e in events]
    t = now()
    store.create_runs(runs, list(events), now=t, dispatch_deadline=t + 1000,
                      keep_events_ms=DAY, lookback_ms=60_000)
    return runs


def wait(store: Store, run_id: str, name: str = "app/y", path: str | None = None,
         value: Any = None, field: str = "f", token: str = "t1") -> list[str]:
    """Register a waiter of ``run_id`` (started) for ``name`` matching ``path == value``."""
    bucket = match_bucket(path, value)
    waiter = json.dumps({"path": path, "value": value, "bucket": bucket})
    t = now()
    return store.park_waiting(run_id, token, "w", '{"status": "waiting"}',
                              ref=WaiterRef(name, bucket, field), path=path, waiter=waiter,
                              timeout_at=t + 60_000, path_expires=t + 120_000, any_limit=10)


def started(store: Store, run_id: str, token: str = "t1") -> Started:
    t = now()
    result = store.start(run_id, token, now=t, lease_exp=t + 30_000)
    assert isinstance(result, Started), result
    return result


# -- creating ---------------------------------------------------------------------------
def test_a_run_is_created_once_per_id(store: Store) -> None:
    [run] = create(store, event(1))
    t = now()
    again = store.create_runs([run], [event(1)], now=t, dispatch_deadline=t,
                              keep_events_ms=DAY, lookback_ms=0)
    assert again.created == [False]
    assert store.runs_for_events(["ev-1"]) == [[run.run_id]]
    assert store.statuses([run.run_id]) == ["queued"]
    assert store.dispatches([run.run_id])[0].route == Route("fanout.contract", "q", "app/x")


def test_creating_runs_reports_who_waits_for_the_event_names(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    wait(store, run.run_id)
    t = now()
    created = store.create_runs([], [event(2, name="app/y")], now=t, dispatch_deadline=t,
                                keep_events_ms=DAY, lookback_ms=60_000)
    [waiters] = created.waiters
    assert waiters.name == "app/y" and list(waiters.steps) == ["f"]


def test_a_send_reads_only_the_waiters_its_match_values_can_satisfy(store: Store) -> None:
    runs = create(store, *(event(i) for i in range(3)))
    for i, run in enumerate(runs):
        started(store, run.run_id)
        wait(store, run.run_id, path="data.user", value=i, field=f"f{i}")
    t = now()
    created = store.create_runs([], [event(9, name="app/y", user=1)], now=t,
                                dispatch_deadline=t, keep_events_ms=DAY, lookback_ms=60_000)
    assert list(created.waiters[0].steps) == ["f1"]
    assert set(store.waiters_of("app/y").steps) == {"f0", "f1", "f2"}


def test_a_cancel_entry_is_read_only_by_events_of_its_value(store: Store) -> None:
    entry = json.dumps({"path": "data.user", "value": 5})
    store.add_cancels([CancelEntry("app/stop", match_bucket("data.user", 5), "data.user",
                                   "r5", entry, now() + 60_000)])
    t = now()
    other = store.create_runs([], [event(1, name="app/stop", user=4)], now=t,
                              dispatch_deadline=t, keep_events_ms=DAY, lookback_ms=60_000)
    hit = store.create_runs([], [event(2, name="app/stop", user=5)], now=t,
                            dispatch_deadline=t, keep_events_ms=DAY, lookback_ms=60_000)
    assert other.waiters[0].cancels == {}
    assert hit.waiters[0].cancels == {"r5": entry}


def test_skipped_runs_are_final_with_their_reason(store: Store) -> None:
    run = new_run(SUB, [event(3)])
    store.record_skipped([run], ["rate limit"], now=now(), retention_ms=DAY)
    raw, _ = store.load_runs([run.run_id])[0]
    assert raw["status"] == "skipped"
    assert json.loads(raw["error"])["message"] == "rate limit"


# -- one execution ----------------------------------------------------------------------
def test_start_takes_the_lease_and_a_second_start_finds_it_busy(store: Store) -> None:
    [run] = create(store, event(1))
    first = started(store, run.run_id)
    assert first.run["function"] == "contract" and first.run["status"] == "running"
    t = now()
    busy = store.start(run.run_id, "t2", now=t, lease_exp=t + 30_000)
    assert isinstance(busy, NotStarted) and busy.reason == "busy"
    assert store.indexes_of(run.run_id)["lease"] is not None
    assert store.indexes_of(run.run_id)["dispatch"] is None


def test_a_missing_run_does_not_start(store: Store) -> None:
    t = now()
    assert store.start("nope", "t", now=t, lease_exp=t + 1) == NotStarted("missing")


def test_writes_with_a_lost_lease_raise_and_write_nothing(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    with pytest.raises(LeaseLostError):
        store.checkpoint(run.run_id, "other", "s", '{"status": "completed"}',
                         lease_exp=now() + 1000)
    assert store.load_steps(run.run_id) == {}


def test_a_checkpoint_is_written_before_a_cancel_request_is_raised(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    assert store.cancel(run.run_id, now=now(), retention_ms=DAY, error="{}") == "requested"
    with pytest.raises(CancelRequested):
        store.checkpoint(run.run_id, "t1", "s", '{"status": "completed"}',
                         lease_exp=now() + 1000)
    assert json.loads(store.step_record(run.run_id, "s") or "{}")["status"] == "completed"


def test_a_cancel_requested_while_parking_leaves_the_run_running_and_leased(
        store: Store) -> None:
    # If the worker dies now, the lease expires and the resumed run sees the request.
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.cancel(run.run_id, now=now(), retention_ms=DAY, error="{}")
    with pytest.raises(CancelRequested):
        store.park(run.run_id, "t1", "sleeping", wake_at=now() + 60_000,
                   step=("nap", '{"status": "sleeping"}'))
    assert store.statuses([run.run_id]) == ["running"]
    assert store.indexes_of(run.run_id)["lease"] is not None
    assert store.indexes_of(run.run_id)["timer"] is None


def test_park_with_an_expected_status_returns_the_record_that_changed(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.checkpoint(run.run_id, "t1", "w", '{"status": "invoking"}', lease_exp=now() + 1000)
    done = '{"status": "completed", "output": 1}'
    resolution = store.resolve(run.run_id, "w", "invoking", done, deadline=now())
    assert resolution.outcome == "executing"
    assert store.park(run.run_id, "t1", "waiting", wake_at=None,
                      expect=("w", "invoking")) == done
    assert store.statuses([run.run_id]) == ["running"]


def test_a_parked_run_is_woken_by_a_resolution(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.checkpoint(run.run_id, "t1", "w", '{"status": "invoking"}', lease_exp=now() + 1000)
    assert store.park(run.run_id, "t1", "waiting", wake_at=now() + 60_000,
                      expect=("w", "invoking")) is None
    resolution = store.resolve(run.run_id, "w", "invoking", '{"status": "completed"}',
                               deadline=now())
    assert resolution.outcome == "woken" and resolution.route is not None
    assert resolution.route.task == "fanout.contract"
    assert store.statuses([run.run_id]) == ["queued"]
    assert store.resolve(run.run_id, "w", "invoking", "{}", deadline=now()).outcome == "none"


def note(store: Store, *events: dict[str, Any]) -> None:
    t = now()
    store.create_runs([], list(events), now=t, dispatch_deadline=t, keep_events_ms=DAY,
                      lookback_ms=60_000)


def test_a_wait_registration_returns_the_events_noted_since_the_run_was_created(
        store: Store) -> None:
    note(store, event(8, name="app/y"))
    time.sleep(0.005)  # the store's clock counts milliseconds
    [run] = create(store, event(1))
    started(store, run.run_id)
    note(store, event(9, name="app/y"))  # while a step executes, before its checkpoint
    time.sleep(0.005)
    store.checkpoint(run.run_id, "t1", "s", '{"status": "completed"}', lease_exp=now() + 1000)
    note(store, event(10, name="app/y"))
    assert wait(store, run.run_id) == ["ev-9", "ev-10"]
    assert store.statuses([run.run_id]) == ["waiting"]
    assert list(store.waiters_of("app/y").steps) == ["f"]


def test_events_are_dated_by_the_stores_clock_not_the_senders(store: Store) -> None:
    # A sender whose clock is an hour behind still notes its event after the run's
    # creation: the wait registered next finds it.
    [run] = create(store, event(1))
    started(store, run.run_id)
    late = now() - 3_600_000
    store.create_runs([], [event(7, name="app/y")], now=late, dispatch_deadline=late,
                      keep_events_ms=DAY, lookback_ms=60_000)
    assert wait(store, run.run_id) == ["ev-7"]


def test_a_waiter_of_a_known_path_reads_only_recent_events_of_its_value(
        store: Store) -> None:
    [first] = create(store, event(1))
    started(store, first.run_id)
    wait(store, first.run_id, path="data.user", value=1, field="a")  # the path is in use
    time.sleep(0.005)
    [second] = create(store, event(2))  # created after: its bucket holds every event
    started(store, second.run_id)
    note(store, *(event(f"u{i}", name="app/y", user=i) for i in range(50)))
    assert wait(store, second.run_id, path="data.user", value=7, field="b") == ["ev-u7"]


def test_the_first_waiter_of_a_new_path_reads_every_recent_event(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    note(store, event("x", name="app/y", user=1), event("z", name="app/y", user=2))
    assert sorted(wait(store, run.run_id, path="data.user", value=2)) == ["ev-x", "ev-z"]


def test_finish_makes_the_run_final_and_expiring(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.finish(run.run_id, "t1", "completed", {"output": "1"}, retention_ms=60_000)
    assert store.statuses([run.run_id]) == ["completed"]
    assert 0 < store.ttl_ms(run.run_id) <= 60_000
    t = now()
    assert store.start(run.run_id, "t2", now=t, lease_exp=t) == NotStarted("done", "completed")


def test_a_waiter_wakes_when_the_run_ends_and_every_waiter_sees_it(store: Store) -> None:
    [run, cancelled] = create(store, event(1), event(2))
    started(store, run.run_id)
    woke: list[bool] = []
    waiters = [threading.Thread(target=lambda: woke.append(store.wait_finished(run.run_id, 20)))
               for _ in range(2)]
    for waiter in waiters:
        waiter.start()
    store.finish(run.run_id, "t1", "completed", {"output": "1"}, retention_ms=60_000)
    for waiter in waiters:
        waiter.join(20)
    assert woke == [True, True]
    # A waiter that comes after the end returns at once, as does one of a cancelled run.
    assert store.wait_finished(run.run_id, 20) is True
    store.cancel(cancelled.run_id, now=now(), retention_ms=DAY, error="{}")
    assert store.wait_finished(cancelled.run_id, 20) is True


def test_a_waiter_of_a_run_that_does_not_end_times_out(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    assert store.wait_finished(run.run_id, 0.1) is False


def test_the_async_reader_reads_runs_and_waits_as_the_store_does(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    reader = store.async_reader()

    async def scenario() -> tuple[Any, bool, bool]:
        [(record, steps)] = await reader.load_runs([run.run_id])
        timed_out = await reader.wait_finished(run.run_id, 0.1)
        store.finish(run.run_id, "t1", "failed", {}, retention_ms=60_000)
        return record, timed_out, await reader.wait_finished(run.run_id, 20)

    record, timed_out, ended = asyncio.run(scenario())
    assert (record["status"], record["function"], timed_out, ended) == \
        ("running", "contract", False, True)
    [(missing, no_steps)] = asyncio.run(reader.load_runs(["nope"]))
    assert missing == {} and no_steps == {}


def test_an_expired_lease_queues_the_run_again(store: Store) -> None:
    [run] = create(store, event(1))
    t = now()
    store.start(run.run_id, "t1", now=t, lease_exp=t - 1)
    assert store.expire_leases(t, t + 1000, 10) == [run.run_id]
    assert store.statuses([run.run_id]) == ["queued"]
    assert store.claim_due(t + 1000, t + 2000, 10) == [run.run_id]


def test_due_timers_are_claimed_earliest_first_and_the_next_one_is_known(
        store: Store) -> None:
    # Runs in many shards (on a cluster), parked with wake times in the reverse order
    # of their creation.
    runs = create(store, *(event(i) for i in range(12)))
    t = now()
    assert store.next_due() is None
    for i, run in enumerate(runs):
        started(store, run.run_id)
        store.park(run.run_id, "t1", "sleeping", wake_at=t - 1000 - 10 * i,
                   step=("nap", '{"status": "sleeping"}'))
    [late] = create(store, event("late"))
    started(store, late.run_id)
    store.park(late.run_id, "t1", "sleeping", wake_at=t + 60_000,
               step=("nap", '{"status": "sleeping"}'))
    assert store.next_due() == t - 1000 - 110
    claimed = store.claim_due(t, t + 300_000, 100)
    assert claimed == [r.run_id for r in reversed(runs)]
    assert store.next_due() == t + 60_000


def test_checkpoint_many_and_finish_write_buffered_step_records_in_order(
        store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.checkpoint_many(run.run_id, "t1", [("a", '{"v": 1}'), ("b", '{"v": 2}'),
                                             ("a", '{"v": 3}')], lease_exp=now() + 1000)
    store.finish(run.run_id, "t1", "completed", {"output": "1"}, retention_ms=DAY,
                 steps=[("c", '{"v": 4}')])
    assert store.load_steps(run.run_id) == {"a": '{"v": 3}', "b": '{"v": 2}',
                                            "c": '{"v": 4}'}
    assert store.statuses([run.run_id]) == ["completed"]
    with pytest.raises(LeaseLostError):  # fenced: the lease is gone
        store.checkpoint_many(run.run_id, "t1", [("d", "{}")], lease_exp=now() + 1000)
    assert "d" not in store.load_steps(run.run_id)


def test_finished_and_cancelled_runs_are_queued_for_the_history_sink(store: Store) -> None:
    done, parked, plain = create(store, event(1), event(2), event(3))
    t = now()
    started(store, done.run_id)
    store.finish(done.run_id, "t1", "completed", {}, retention_ms=DAY, archive_at=t - 10)
    started(store, parked.run_id)
    store.park(parked.run_id, "t1", "sleeping", wake_at=t + 60_000)
    assert store.cancel(parked.run_id, now=t, retention_ms=DAY, error="{}",
                        archive=True) == "cancelled"
    started(store, plain.run_id)
    store.finish(plain.run_id, "t1", "completed", {}, retention_ms=DAY)  # no sink: not queued
    assert store.claim_archive(t + 1, t + 60_000, 10) == [done.run_id, parked.run_id]
    assert store.claim_archive(t + 1, t + 60_000, 10) == []  # claimed: covered until then
    assert store.claim_archive(t + 60_001, t + 120_000, 10) == [done.run_id, parked.run_id]
    store.drop_archive([done.run_id, parked.run_id])
    assert store.claim_archive(t + 10**9, t + 10**9, 10) == []


def test_pauses_and_held_runs(store: Store) -> None:
    store.set_paused("f", "hold")
    store.set_paused("g", "skip")
    assert store.paused() == {"f": "hold", "g": "skip"}
    for run_id in ("r2", "r1", "r2"):
        store.hold("f", run_id)
    assert store.take_held("f") == ["r1", "r2"]
    assert store.take_held("f") == []  # taken once
    store.set_paused("f", None)
    assert store.paused() == {"g": "skip"}


def test_renew_extends_only_leases_still_held(store: Store) -> None:
    [a, b] = create(store, event(1), event(2))
    started(store, a.run_id)
    started(store, b.run_id)
    assert store.renew([(a.run_id, "t1"), (b.run_id, "stale")], now() + 60_000) == [True, False]


def test_a_branch_join_wakes_the_parent_when_the_last_result_arrives(store: Store) -> None:
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.checkpoint(run.run_id, "t1", "g", '{"status": "parallel", "branches": 2}',
                     lease_exp=now() + 1000)
    store.park(run.run_id, "t1", "waiting", wake_at=None, expect=("g", "parallel"))
    joined = '{"status": "joined"}'
    first = store.join(run.run_id, "g", "g[0]", '{"status": "completed"}', branches=2,
                       joined=joined, deadline=now())
    assert first.outcome == "none"
    last = store.join(run.run_id, "g", "g[1]", '{"status": "completed"}', branches=2,
                      joined=joined, deadline=now())
    assert last.outcome == "woken"
    assert store.step_record(run.run_id, "g") == joined


# Runs in flight across an upgrade keep the step records written in the format before the
# compact one (full field names, the status always present): the scripts read both.
FORMATS = {"compact": pack_step, "full-names": lambda record: json.dumps(record)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_step_is_resolved_and_joined_by_its_status_in_either_record_format(
        store: Store, fmt: str) -> None:
    write = FORMATS[fmt]
    [run] = create(store, event(1))
    started(store, run.run_id)
    store.checkpoint(run.run_id, "t1", "w", write({"status": "invoking", "started_at": 5}),
                     lease_exp=now() + 1000)
    store.checkpoint(run.run_id, "t1", "g", write({"status": "parallel", "branches": 1}),
                     lease_exp=now() + 1000)
    ended = write({"status": "completed", "branches": 1})
    store.checkpoint(run.run_id, "t1", "h", ended, lease_exp=now() + 1000)
    assert store.park(run.run_id, "t1", "waiting", wake_at=None,
                      expect=("w", "invoking")) is None
    done = write({"status": "completed", "output": 1, "started_at": 5, "ended_at": 9})
    assert store.resolve(run.run_id, "w", "invoking", done, deadline=now()).outcome == "woken"
    # Completed: no longer "invoking", whether its status is written or left out.
    assert store.resolve(run.run_id, "w", "invoking", write({"status": "failed"}),
                         deadline=now()).outcome == "none"
    assert store.step_record(run.run_id, "w") == done
    joined = write({"status": "joined"})
    store.join(run.run_id, "g", "g[0]", write({"status": "completed"}), branches=1,
               joined=joined, deadline=now())
    assert store.step_record(run.run_id, "g") == joined
    # A group no longer "parallel" (here: completed, its status left out) is not joined.
    store.join(run.run_id, "h", "h[0]", write({"status": "completed"}), branches=1,
               joined=joined, deadline=now())
    assert store.step_record(run.run_id, "h") == ended


def test_cancel_of_a_queued_run_is_immediate_and_final(store: Store) -> None:
    [run] = create(store, event(1))
    assert store.cancel(run.run_id, now=now(), retention_ms=DAY, error="{}") == "cancelled"
    assert store.cancel(run.run_id, now=now(), retention_ms=DAY, error="{}") == "final"
    assert store.cancel("nope", now=now(), retention_ms=DAY, error="{}") == "missing"


# -- flow control -----------------------------------------------------------------------
def queued_runs(store: Store, *tags: str) -> list[str]:
    return [run.run_id for run in create(store, *(event(t) for t in tags))]


def test_a_woken_run_has_its_slot_reserved_until_it_starts(store: Store) -> None:
    # Regression: a run woken from the wait queue did not count against the limit until
    # its own gate, so a second release (a duplicate message of a finished run) or the
    # pump's reconcile in between woke the next run as well, out of priority order.
    limit1 = [SlotSet("one", "k", 1)]
    a, b, c = queued_runs(store, "a", "b", "c")
    t = now()
    assert store.gate(a, now=t, slot_exp=t + 10_000, slots=limit1, throttle=None,
                      queue_score=1).kind == "ok"
    assert store.gate(b, now=t, slot_exp=t + 10_000, slots=limit1, throttle=None,
                      queue_score=2).kind == "wait"
    assert store.gate(c, now=t, slot_exp=t + 10_000, slots=limit1, throttle=None,
                      queue_score=3).kind == "wait"
    assert store.waiting_queues() == (0, limit1)

    def release(run_id: str) -> list[str]:
        return store.release(run_id, limit1, now=t, deadline=t + 300_000,
                             reserve_until=t + 10_000)

    assert release(a) == [b]
    assert release(a) == []  # a duplicate
    assert release("") == []  # a reconcile
    assert store.gate(b, now=t, slot_exp=t + 10_000, slots=limit1, throttle=None,
                      queue_score=2).kind == "ok"
    assert store.slot_state(limit1[0]) == ([b], [c])


def test_a_woken_run_that_must_wait_for_another_limit_gives_its_reservation_back(
        store: Store) -> None:
    first, second = SlotSet("first", "k", 1), SlotSet("second", "k", 1)
    holder, other, run = queued_runs(store, "h", "o", "r")
    t = now()

    def gate(run_id: str, slots: list[SlotSet], score: float) -> str:
        return store.gate(run_id, now=t, slot_exp=t + 10_000, slots=slots, throttle=None,
                          queue_score=score).kind

    assert gate(holder, [second], 1) == "ok"
    assert gate(run, [first, second], 2) == "wait"
    assert gate(other, [first], 3) == "ok"
    # The holder ends: run is woken into the second limit, but the first one is full now.
    assert store.release(holder, [second], now=t, deadline=t + 300_000,
                         reserve_until=t + 10_000) == [run]
    assert store.slot_state(second)[0] == [run]
    assert gate(run, [first, second], 2) == "wait"
    assert store.slot_state(second)[0] == []
    assert store.slot_state(first)[1] == [run]


def test_a_throttle_delays_the_start_past_its_burst(store: Store) -> None:
    a, b = queued_runs(store, "a", "b")
    t = now()
    throttle = (FlowKey("throttle", "f", ""), 60_000, 0)
    assert store.gate(a, now=t, slot_exp=t, slots=[], throttle=throttle,
                      queue_score=0).kind == "ok"
    later = store.gate(b, now=t, slot_exp=t, slots=[], throttle=throttle, queue_score=0)
    assert later.kind == "later" and later.when == t + 60_000


def test_a_rate_limit_refuses_past_its_limit_in_the_window(store: Store) -> None:
    key = FlowKey("rate", "f", "")
    t = now()
    assert [store.rate(key, now=t, period_ms=60_000, limit=2, member=str(i))
            for i in range(3)] == [True, True, False]
    assert store.rate(key, now=t + 60_001, period_ms=60_000, limit=2, member="4")


def test_a_claimed_key_is_held_until_released_or_its_window_ends(store: Store) -> None:
    key = FlowKey("singleton", "f", "v")
    t = now()
    assert store.claim_key(key, "r1", now=t, window_ms=None) == ""
    assert store.claim_key(key, "r2", now=t, window_ms=None) == "r1"
    store.unclaim_key(key, "r2")  # not its holder: nothing happens
    assert store.claim_key(key, "r2", now=t, window_ms=None) == "r1"
    store.unclaim_key(key, "r1")
    assert store.claim_key(key, "r2", now=t, window_ms=None) == ""
    window = FlowKey("idempotency", "f", "v")
    assert store.claim_key(window, "a", now=t, window_ms=1000) == ""
    assert store.claim_key(window, "b", now=t + 500, window_ms=1000) == "a"
    assert store.claim_key(window, "b", now=t + 1000, window_ms=1000) == ""


def test_a_batch_buffer_fills_one_run_until_it_is_full(store: Store) -> None:
    key = FlowKey("batch", "f", "")
    runs = [new_run(SUB, [event(i)]) for i in range(3)]
    t = now()
    states = [store.buffer("batch", key, run, now=t, period_ms=60_000, cap_ms=None,
                           max_size=3, retention_ms=DAY) for run in runs]
    # The pending run is the first event's (on a cluster, under an id of the buffer's shard).
    first = states[0][0]
    assert first[2:] == runs[0].run_id[2:]
    assert states == [(first, "new"), (first, "added"), (first, "full")]
    raw, _ = store.load_runs([first])[0]
    assert [e["id"] for e in json.loads(raw["events"])] == ["ev-0", "ev-1", "ev-2"]
    assert store.runs_for_events(["ev-2"]) == [[first]]


# -- the Redis layout of run records ----------------------------------------------------
# A small hash's compact encoding: "listpack" from Redis 7.0 (and Valkey), "ziplist" in 6.2.
COMPACT = ("listpack", "ziplist")

@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("redis_server" if request.param == "redis"
                                       else "redis_cluster")
    flush_database(url)
    return url


@pytest.mark.parametrize("written", ["compact", "earlier"])
def test_a_run_record_is_read_alike_in_either_layout(redis_url: str, written: str) -> None:
    """Runs created in the earlier layout (one "meta" JSON field and the events list, as
    fanout_compact_records = False writes) are read as the compact ones: their events,
    static fields and route, by every reader."""
    writer = RedisStore(redis_url, "contract", compact=written == "compact")
    reader = RedisStore(redis_url, "contract")
    try:
        odd = {**event('odd "id"\\', user=1), "v": "2"}
        plain = event(2, big="x" * 100)
        parent = new_run(SUB, [plain], parent=("p1", "s1"), notify_parent=True)
        runs = [new_run(SUB, [odd]), parent, new_run(SUB, [event(4), event(5)])]
        t = now()
        writer.create_runs(runs, [odd, plain], now=t, dispatch_deadline=t,
                           keep_events_ms=DAY, lookback_ms=60_000)
        skipped = new_run(SUB, [event(6)])
        writer.record_skipped([skipped], ["rate limit"], now=t, retention_ms=DAY)
        rerun = new_run(SUB, [odd], run_id="rerun-1", extra={"rerun_of": runs[0].run_id})
        writer.create_rerun(rerun, {}, now=t, retention_ms=DAY, dispatch_deadline=t)
        named = new_run(Subscription("contract", ("app/x",), task="tasks.named", queue="q"),
                        [event(7)], run_id="named-1")
        writer.create_runs([named], [], now=t, dispatch_deadline=t, keep_events_ms=DAY,
                           lookback_ms=60_000)
        every = [*runs, skipped, rerun, named]
        loaded = reader.load_runs([r.run_id for r in every])
        for run, (raw, _) in zip(every, loaded, strict=True):
            assert json.loads(raw["events"]) == list(run.events)
            assert raw["function"] == "contract" and raw["queue"] == "q"
            assert raw["task"] == run.route.task
            assert reader.run_field(run.run_id, "events") == raw["events"]
            assert reader.run_field(run.run_id, "task") == run.route.task
            assert not {"meta", "event", "event_id", "event_ts"} & set(raw)
        assert loaded[-1][0]["task"] == "tasks.named"
        assert loaded[1][0]["parent_run_id"] == "p1" and loaded[1][0]["notify_parent"] == "1"
        assert loaded[3][0]["status"] == "skipped"
        assert loaded[4][0]["rerun_of"] == runs[0].run_id
        # Events stored without the id their key names, whichever layout their runs take.
        client = reader.client
        assert "id" not in json.loads(client.get(reader.keys.event(odd["id"])))
        assert reader.get_events([odd["id"], plain["id"]]) == [odd, plain]
        for run, dispatch in zip(every, reader.dispatches([r.run_id for r in every]),
                                 strict=True):
            assert dispatch is not None and dispatch.route == run.route
        assert reader.dispatches(["no-such-run"]) == [None]
        # The route a script returns when it wakes a parked run.
        started(reader, parent.run_id)
        reader.checkpoint(parent.run_id, "t1", "w", '{"s": "invoking"}', lease_exp=now() + 1000)
        reader.park(parent.run_id, "t1", "waiting", wake_at=None, expect=("w", "invoking"))
        woken = reader.resolve(parent.run_id, "w", "invoking", "{}", deadline=now())
        assert woken.route == Route("fanout.contract", "q", "app/x")
        # What the layout is for: a run of small values is a Redis listpack.
        small = client.object("encoding", reader.keys.run(runs[0].run_id))
        fields = set(client.hkeys(reader.keys.run(runs[0].run_id)))
        listed = client.type(reader.keys.event_runs(odd["id"], reader.keys.shard_of(
            runs[0].run_id)))
        if written == "compact":
            assert small in COMPACT and "meta" not in fields and "events" not in fields
            assert "task" not in fields  # named by default: read back from the function
            assert listed == "hash"
        else:
            assert {"meta", "events"} <= fields and "event" not in fields
            assert listed == "set"  # as processes of 0.1 read it
    finally:
        writer.close()
        reader.close()


def test_an_events_run_list_is_read_and_extended_in_either_layout(redis_url: str) -> None:
    """An event's run list written as a set (before the hash layout) still keeps a run
    it names from being created again, is listed, and takes new runs."""
    store = RedisStore(redis_url, "contract")
    try:
        k, client = store.keys, store.client
        old, new = event("old"), event("new")
        expired = new_run(SUB, [old])  # its record expired, its event's list did not
        other = new_run(Subscription("other", ("app/x",), task="fanout.other"), [old])
        client.sadd(k.event_runs(old["id"], k.shard_of(expired.run_id)), expired.run_id)
        t = now()
        made = store.create_runs([expired, other, new_run(SUB, [new])], [old, new], now=t,
                                 dispatch_deadline=t, keep_events_ms=DAY, lookback_ms=60_000)
        assert made.created == [False, True, True]
        assert store.load_runs([expired.run_id])[0][0] == {}
        assert store.runs_for_events([old["id"], new["id"]]) == [
            sorted([expired.run_id, other.run_id]), [new_run(SUB, [new]).run_id]]
        fresh = k.event_runs(new["id"], k.shard_of(new_run(SUB, [new]).run_id))
        assert client.type(fresh) == "hash" and client.object("encoding", fresh) in COMPACT
        assert 0 < client.pttl(fresh) <= DAY
    finally:
        store.close()
