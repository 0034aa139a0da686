"""Flow control, observed: concurrency, throttle, rate limit, debounce, batches, priority,
singleton and idempotency against a real Redis and two real worker processes.

The workers run ``tests/apps/flow_app.py`` (lease 2 s, pump every 0.05 s); they are
started once for the module and shared, so every test tags its events with a fresh
``tag`` that the flow-control keys include. Step bodies record their start and end times
in Redis (the test cannot see the workers' memory); limits are checked on those
intervals. The test process declares no functions: it admits runs from the
subscriptions the workers published, as a web app would.

Nothing in this module may flush Redis while the shared workers run (a flush drops the
broker's queue bindings): it uses the session server directly, not ``redis_url``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from procs import WorkerProcess, wait_for, worker_process

from fanout_celery import (
    Batch,
    Concurrency,
    ConfigurationError,
    Debounce,
    Fanout,
    Priority,
    RateLimit,
    Run,
    Singleton,
    Throttle,
)
from fanout_celery.model.events import derived_id
from fanout_celery.model.flowcontrol import key_value
from fanout_celery.store.port import SlotSet

pytestmark = pytest.mark.integration

FLOW_APP = "tests.apps.flow_app"
CRASH_QUEUE = "flow-crash"  # tests/apps/flow_app.py's CRASH_QUEUE


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow_redis(redis_server: str) -> str:
    """The session Redis, emptied once for this module."""
    client = redis.Redis.from_url(redis_server)
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture(scope="module")
def pool(flow_redis: str) -> Iterator[tuple[WorkerProcess, WorkerProcess]]:
    """Two worker processes (threads pool, 4 each) consuming the default queue."""
    with worker_process(flow_redis, app=FLOW_APP, concurrency=4) as first, \
            worker_process(flow_redis, app=FLOW_APP, concurrency=4) as second:
        yield first, second


@pytest.fixture(scope="module")
def fanout(flow_redis: str) -> Iterator[Fanout]:
    """A sender with no functions of its own (it routes by the published subscriptions)."""
    app = Celery("flow-tests", set_as_current=False)
    app.conf.update(broker_url=flow_redis, result_backend=None, task_default_queue="celery",
                    broker_connection_retry_on_startup=True, fanout_lease_seconds=2)
    yield Fanout(app)
    app.close()


@pytest.fixture
def r(flow_redis: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(flow_redis, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:12]


# -- helpers ----------------------------------------------------------------------------
def starts(r: redis.Redis, tag: str) -> list[dict[str, Any]]:
    """Step body starts, in the order they happened (``label``, ``t``, ``pid``)."""
    return [json.loads(x) for x in r.lrange(f"flow:starts:{tag}", 0, -1)]


def bodies(r: redis.Redis, tag: str) -> list[dict[str, Any]]:
    """Step bodies that returned (``label``, ``start``, ``end``, ``pid``)."""
    return [json.loads(x) for x in r.lrange(f"flow:log:{tag}", 0, -1)]


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals in progress at one instant."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, delta in edges:  # at equal times an end (-1) sorts before a start
        current += delta
        peak = max(peak, current)
    return peak


def send(fanout: Fanout, name: str, tag: str, items: list[dict[str, Any]]) -> list[str]:
    return fanout.send([{"name": name, "data": {"tag": tag, **item}} for item in items])


def run_of(fanout: Fanout, event_id: str) -> Run:
    runs = fanout.runs_for_event(event_id)
    assert len(runs) == 1, runs
    return runs[0]


def wait_all(fanout: Fanout, function_id: str, event_ids: list[str],
             timeout: float = 20.0) -> list[Run]:
    return [fanout.wait_for_run(derived_id(function_id, eid), timeout=timeout)
            for eid in event_ids]


def queued(fanout: Fanout, function_id: str, path: str, event: dict[str, Any]) -> list[str]:
    """The runs waiting for a slot of a function's concurrency key."""
    return fanout.store.slot_state(SlotSet(function_id, key_value(path, event), 1))[1]


# -- concurrency ------------------------------------------------------------------------
def test_a_keyed_concurrency_limit_holds_per_key_across_worker_processes(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    accounts = [f"{tag}-a", f"{tag}-b", f"{tag}-c"]
    # All of a's runs are sent first: b and c must not wait for a's backlog.
    items = [{"account": acc, "label": acc, "hold": 0.25} for acc in accounts
             for _ in range(5)]
    runs = wait_all(fanout, "flow-conc", send(fanout, "flow/conc", tag, items))

    assert all(run.status == "completed" for run in runs)
    done = bodies(r, tag)
    assert len(done) == 15
    per_key = {acc: [(b["start"], b["end"]) for b in done if b["label"].endswith(acc)]
               for acc in accounts}
    for acc, intervals in per_key.items():
        assert len(intervals) == 5
        assert max_overlap(intervals) == 2, acc  # the limit, reached and never exceeded
    # Keys are limited independently: different keys ran at the same time.
    assert max_overlap([(b["start"], b["end"]) for b in done]) > 2
    last_a = max(s for s, _ in per_key[accounts[0]])
    assert min(s for s, _ in per_key[accounts[1]]) < last_a
    assert min(s for s, _ in per_key[accounts[2]]) < last_a
    assert len({b["pid"] for b in done}) == 2  # enforced across both worker processes


def test_two_concurrency_limits_apply_together(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    # One run at a time per account, two at a time in total (per tag).
    accounts = [f"{tag}-x", f"{tag}-y", f"{tag}-z"]
    items = [{"account": acc, "label": acc, "hold": 0.2} for acc in accounts for _ in range(2)]
    runs = wait_all(fanout, "flow-conc-two", send(fanout, "flow/conc-two", tag, items))

    assert all(run.status == "completed" for run in runs)
    done = bodies(r, tag)
    assert len(done) == 6
    for acc in accounts:
        assert max_overlap([(b["start"], b["end"]) for b in done
                            if b["label"].endswith(acc)]) == 1
    assert max_overlap([(b["start"], b["end"]) for b in done]) == 2


def test_a_parked_run_holds_no_concurrency_slot(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    # Limit 1: the sleeper parks in ctx.step.sleep, and the other run takes the slot.
    sleeper = send(fanout, "flow/conc-park", tag, [{"label": "sleeper", "nap": 1.5}])[0]
    sleeper_run = derived_id("flow-conc-park", sleeper)
    wait_for(lambda: (run := fanout.get_run(sleeper_run)) and run.status == "sleeping", 10,
             "the sleeper to park")
    other = send(fanout, "flow/conc-park", tag, [{"label": "other"}])[0]

    other_done = fanout.wait_for_run(derived_id("flow-conc-park", other), timeout=10)
    assert other_done.status == "completed"
    assert fanout.get_run(sleeper_run).status == "sleeping"  # type: ignore[union-attr]
    assert fanout.wait_for_run(sleeper_run, timeout=10).status == "completed"
    log = {b["label"]: b for b in bodies(r, tag)}
    # The other run executed entirely within the sleeper's nap.
    assert log["sleeper:before"]["end"] < log["other:before"]["start"]
    assert log["other:after"]["end"] < log["sleeper:after"]["start"]


def test_the_slots_of_a_sigkilled_worker_are_recovered_and_the_limit_still_holds(
        flow_redis: str, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    release = f"flow:release:{tag}"
    items = [{"label": str(i), "block": release, "hold": 0.2} for i in range(6)]
    with worker_process(flow_redis, app=FLOW_APP, concurrency=4, queues=CRASH_QUEUE) as first:
        event_ids = send(fanout, "flow/conc-crash", tag, items)
        wait_for(lambda: len(starts(r, tag)) >= 2, 20, "two runs to take the two slots")
        time.sleep(0.3)  # give a third run the chance to (wrongly) start as well
        held = starts(r, tag)
        assert len(held) == 2 and {s["pid"] for s in held} == {first.pid}
        first.kill()
        killed_at = time.time()
    r.set(release, 1)
    # The killed runs' slots are leases: they expire with the runs' 2 s leases, the runs
    # resume in another worker, and the four runs waiting for a slot start after them.
    with worker_process(flow_redis, app=FLOW_APP, concurrency=4, queues=CRASH_QUEUE) as second:
        runs = wait_all(fanout, "flow-conc-crash", event_ids, timeout=30)

    assert all(run.status == "completed" for run in runs)
    done = bodies(r, tag)
    assert len(done) == 6 and {b["pid"] for b in done} == {second.pid}
    killed = [(s["t"], killed_at) for s in held]
    assert max_overlap(killed + [(b["start"], b["end"]) for b in done]) == 2
    # Both killed runs were executed again, from the step that was in progress.
    assert sorted(b["label"].split("/")[1] for b in done) == [str(i) for i in range(6)]


def test_a_global_concurrency_limit_is_shared_by_two_functions(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    # Each event starts one run of each function: 8 runs, at most 2 at once in all.
    event_ids = send(fanout, "flow/global", tag, [{"hold": 0.2} for _ in range(4)])
    runs = [fanout.wait_for_run(derived_id(fid, eid), timeout=20)
            for fid in ("flow-global-a", "flow-global-b") for eid in event_ids]

    assert all(run.status == "completed" for run in runs)
    done = bodies(r, tag)
    assert sorted(b["label"] for b in done) == ["flow-global-a/"] * 4 + ["flow-global-b/"] * 4
    assert max_overlap([(b["start"], b["end"]) for b in done]) == 2


# -- throttle ---------------------------------------------------------------------------
def test_throttle_spaces_run_starts(pool: Any, fanout: Fanout, r: redis.Redis,
                                    tag: str) -> None:
    # 5 per second, burst 1: one start every 200 ms, however many workers are idle.
    event_ids = send(fanout, "flow/throttle", tag, [{} for _ in range(6)])
    wait_all(fanout, "flow-throttle", event_ids)

    times = sorted(s["t"] for s in starts(r, tag))
    assert len(times) == 6
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.18, gaps


def test_throttle_burst_starts_that_many_at_once(pool: Any, fanout: Fanout, r: redis.Redis,
                                                 tag: str) -> None:
    event_ids = send(fanout, "flow/throttle-burst", tag, [{} for _ in range(6)])
    wait_all(fanout, "flow-throttle-burst", event_ids)

    times = sorted(s["t"] for s in starts(r, tag))
    assert len(times) == 6
    assert times[2] - times[0] < 0.15  # the burst: three together
    # Then the rate: by 200 ms x k after the first start, at most 3 + k runs started. (A
    # start delayed past its turn does not delay the next one: gaps alone may be shorter.)
    for k, t in enumerate(times[3:], start=1):
        assert t - times[0] >= 0.2 * k - 0.02, (k, [round(x - times[0], 3) for x in times])


def test_celerys_rate_limit_string_throttles_run_starts_across_workers(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    # rate_limit="5/s" is Celery's form: one start every 200 ms over both workers (Celery's
    # own would be 5 per second per worker).
    event_ids = send(fanout, "flow/celery-rate", tag, [{} for _ in range(6)])
    wait_all(fanout, "flow-celery-rate", event_ids)

    times = sorted(s["t"] for s in starts(r, tag))
    assert len(times) == 6
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.18, gaps


def test_celerys_integer_priority_is_the_message_priority_of_every_attempt(
        pool: Any, fanout: Fanout, tag: str) -> None:
    [event_id] = send(fanout, "flow/celery-priority", tag, [{}])
    run = wait_all(fanout, "flow-celery-priority", [event_id])[0]
    # The first attempt (sent by this process) and the one resumed by a worker's pump.
    assert run.status == "completed" and run.output == [7, 7], run


# -- rate limit -------------------------------------------------------------------------
def test_rate_limit_skips_excess_runs_per_key_and_keeps_their_events(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    users = [f"{tag}-u1"] * 5 + [f"{tag}-u2"] * 3
    event_ids = send(fanout, "flow/rate", tag, [{"user": u} for u in users])

    runs = [run_of(fanout, eid) for eid in event_ids]
    # Two runs per user per minute: the first two of each user run, the rest are skipped.
    expected = ["created"] * 2 + ["skipped"] * 3 + ["created"] * 2 + ["skipped"]
    assert ["skipped" if run.status == "skipped" else "created" for run in runs] == expected
    for run in runs:
        if run.status == "skipped":
            assert run.error is not None and run.error["type"] == "Skipped"
            assert "rate limit" in run.error["message"]
            assert run.ended_at is not None
        else:
            assert fanout.wait_for_run(run.id, timeout=10).status == "completed"
    # Every event is stored, skipped or not.
    assert all(fanout.get_event(eid) is not None for eid in event_ids)
    # Skipped runs are in the function's history and were never executed.
    skipped = {run.id for run in fanout.list_runs(function="flow-rate", status="skipped",
                                              limit=100).runs}
    assert {run.id for run in runs if run.status == "skipped"} <= skipped
    assert len(bodies(r, tag)) == 4


def test_resending_an_admitted_event_under_a_full_rate_limit_leaves_its_run_alone(
        pool: Any, fanout: Fanout, tag: str) -> None:
    # Regression: the re-sent event (same id, so the same run) was counted against the
    # full limit and its existing run record was overwritten as "skipped".
    first = {"name": "flow/rate", "id": f"{tag}-first", "data": {"tag": tag, "user": tag}}
    fanout.send(first)
    fanout.send({"name": "flow/rate", "data": {"tag": tag, "user": tag}})
    run_id = derived_id("flow-rate", first["id"])
    done = fanout.wait_for_run(run_id, timeout=10)

    fanout.send(first)

    again = fanout.get_run(run_id)
    assert again is not None
    assert (again.status, again.error, again.ended_at) == ("completed", None, done.ended_at)


def test_a_skipped_run_cannot_be_cancelled(pool: Any, fanout: Fanout, tag: str) -> None:
    # Regression: "skipped" is final, but cancel() turned a skipped run into a cancelled
    # one (and announced fanout/function.cancelled for a run that never existed as such).
    began = datetime.now(UTC)
    event_ids = send(fanout, "flow/rate", tag, [{"user": tag} for _ in range(3)])
    wait_all(fanout, "flow-rate", event_ids[:2])
    skipped = run_of(fanout, event_ids[-1])
    assert skipped.status == "skipped"

    assert fanout.cancel(skipped.id) == "final"
    assert fanout.cancel_runs("flow-rate", started_after=began) == 0  # all three are final
    after = fanout.get_run(skipped.id)
    assert after is not None and after.status == "skipped"
    assert after.error is not None and after.error["type"] == "Skipped"


# -- debounce ---------------------------------------------------------------------------
def test_debounce_runs_once_with_the_last_event_after_the_quiet_period(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    event_ids = []
    for n in range(5):  # 100 ms apart: shorter than the 400 ms quiet period
        event_ids += send(fanout, "flow/debounce", tag, [{"key": tag, "label": str(n)}])
        last_sent = time.time()
        time.sleep(0.1)

    runs = {run.id for eid in event_ids for run in fanout.runs_for_event(eid)}
    assert len(runs) == 1  # every event went to the one pending run
    run = fanout.wait_for_run(runs.pop(), timeout=10)
    assert run.status == "completed"
    assert run.event_ids == [event_ids[-1]]
    (body,) = bodies(r, tag)
    assert body["label"] == "flow-debounce/4"
    assert body["start"] >= last_sent + 0.35


def test_debounce_timeout_caps_the_delay_under_a_continuous_stream(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    # An event every 100 ms for 2 s: never 400 ms of quiet, but the 1 s timeout fires.
    event_ids = []
    first_sent = time.time()
    while time.time() - first_sent < 2.0:
        event_ids += send(fanout, "flow/debounce-cap", tag,
                          [{"key": tag, "label": str(len(event_ids))}])
        time.sleep(0.1)
    stream_end = time.time()

    last = fanout.wait_for_run(run_of(fanout, event_ids[-1]).id, timeout=10)
    assert last.status == "completed" and last.event_ids == [event_ids[-1]]
    first_run = run_of(fanout, event_ids[0])
    assert fanout.wait_for_run(first_run.id, timeout=10).status == "completed"
    first_start = min(s["t"] for s in starts(r, tag))
    # The first run started about 1 s after the first event, while events kept coming.
    assert 0.95 <= first_start - first_sent <= 1.5
    assert first_start < stream_end
    assert first_run.event_ids != [event_ids[0]]  # it took the latest event it had
    assert 2 <= len({run.id for eid in event_ids for run in fanout.runs_for_event(eid)}) <= 3


# -- batches ----------------------------------------------------------------------------
def test_batches_fill_up_or_time_out_per_key_with_events_in_order(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    a, b = f"{tag}-a", f"{tag}-b"
    keys = [a, b, a, b, a, a, a, a, a]  # a: 7 events, b: 2
    sent_at = time.time()
    event_ids = fanout.send([{"name": "flow/batch", "data": {"tag": tag, "key": k, "n": i}}
                             for i, k in enumerate(keys)])

    run_ids = {run.id for eid in event_ids for run in fanout.runs_for_event(eid)}
    assert len(run_ids) == 4
    runs = [fanout.wait_for_run(rid, timeout=10) for rid in run_ids]
    assert all(run.status == "completed" for run in runs)
    assert sorted(run.output for run in runs) == [[0, 2, 4], [1, 3], [5, 6, 7], [8]]
    for run in runs:  # ctx.events: the events of the batch, in the order sent
        assert [e["data"]["n"] for e in run.events] == run.output
    started = {tuple(json.loads(body["label"])[1]): body["start"] - sent_at
               for body in bodies(r, tag)}
    # Full batches start at once; partial ones after the 0.5 s timeout.
    assert started[(0, 2, 4)] < 0.4 and started[(5, 6, 7)] < 0.4
    assert started[(1, 3)] >= 0.45 and started[(8,)] >= 0.45


# -- priority ---------------------------------------------------------------------------
def test_higher_priority_runs_start_first_from_a_backlog(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    release = f"flow:release:{tag}"
    send(fanout, "flow/priority", tag, [{"label": "blocker", "priority": 0,
                                         "block": release}])
    wait_for(lambda: starts(r, tag), 10, "the blocker to hold the only slot")
    priorities = [1, 5, -3, 10, 0, 2, 7, -8, 3, 600]
    event_ids = send(fanout, "flow/priority", tag,
                     [{"label": str(p), "priority": p} for p in priorities])
    event = {"data": {"tag": tag}}
    wait_for(lambda: len(queued(fanout, "flow-priority", "data.tag", event)) == len(priorities),
             10, "the backlog to queue up")
    r.set(release, 1)
    wait_all(fanout, "flow-priority", event_ids)

    order = [s["label"].split("/")[1] for s in starts(r, tag)]
    assert order == ["blocker"] + [str(p) for p in sorted(priorities, reverse=True)]


def test_a_run_cancelled_while_waiting_for_a_slot_passes_the_slot_on(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    # Limit 1: the blocker holds the slot, two runs wait; the first of them is cancelled.
    # When the blocker ends, the cancelled run is woken into the slot, and must hand it
    # to the next one at once rather than hold it until its reservation expires (the 2 s
    # lease).
    release = f"flow:release:{tag}"
    send(fanout, "flow/priority", tag, [{"label": "blocker", "priority": 0, "block": release}])
    wait_for(lambda: starts(r, tag), 10, "the blocker to hold the only slot")
    cancelled, waiting = send(fanout, "flow/priority", tag, [
        {"label": "cancelled", "priority": 2}, {"label": "waiting", "priority": 1}])
    event = {"data": {"tag": tag}}
    wait_for(lambda: len(queued(fanout, "flow-priority", "data.tag", event)) == 2, 10,
             "both runs to wait for the slot")
    assert fanout.cancel(derived_id("flow-priority", cancelled)) == "cancelled"
    r.set(release, 1)

    done = fanout.wait_for_run(derived_id("flow-priority", waiting), timeout=10)
    assert done.status == "completed"
    log = {b["label"].split("/")[1]: b for b in bodies(r, tag)}
    assert "cancelled" not in log
    assert log["waiting"]["start"] - log["blocker"]["end"] < 1.0


# -- singleton --------------------------------------------------------------------------
def test_singleton_skip_mode_skips_a_run_while_one_is_active(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    release = f"flow:release:{tag}"
    first = send(fanout, "flow/singleton", tag, [{"key": tag, "block": release}])[0]
    wait_for(lambda: starts(r, tag), 10, "the first run to start")

    second = run_of(fanout, send(fanout, "flow/singleton", tag, [{"key": tag}])[0])
    other_key = run_of(fanout, send(fanout, "flow/singleton", tag, [{"key": f"{tag}-2"}])[0])
    assert second.status == "skipped"
    assert second.error is not None and second.error["type"] == "Skipped"
    assert "singleton" in second.error["message"]
    assert other_key.status != "skipped"

    r.set(release, 1)
    assert fanout.wait_for_run(derived_id("flow-singleton", first)).status == "completed"
    third = run_of(fanout, send(fanout, "flow/singleton", tag, [{"key": tag}])[0])
    assert fanout.wait_for_run(third.id, timeout=10).status == "completed"


def test_singleton_cancel_mode_cancels_the_active_run_for_the_new_one(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    one, two = f"flow:release:{tag}:one", f"flow:release:{tag}:two"
    first = run_of(fanout, send(fanout, "flow/singleton-cancel", tag,
                                [{"key": tag, "label": "one", "block": one}])[0])
    wait_for(lambda: starts(r, tag), 10, "the first run to start")

    second = run_of(fanout, send(fanout, "flow/singleton-cancel", tag,
                                 [{"key": tag, "label": "two", "block": two}])[0])
    assert second.status != "skipped"
    # The first run is executing a step: it stops at its next step boundary.
    r.set(one, 1)
    cancelled = fanout.wait_for_run(first.id, timeout=10)
    assert cancelled.status == "cancelled"
    assert cancelled.error is not None and "singleton" in cancelled.error["message"]
    r.set(two, 1)
    assert fanout.wait_for_run(second.id, timeout=10).output == "two"
    labels = [b["label"] for b in bodies(r, tag)]
    assert "one:after" not in labels and "two:after" in labels


# -- idempotency ------------------------------------------------------------------------
def test_idempotency_key_starts_one_run_per_24_hours(
        pool: Any, fanout: Fanout, monkeypatch: pytest.MonkeyPatch, tag: str) -> None:
    cart = {"cart_id": tag}
    first = run_of(fanout, send(fanout, "flow/idem", tag, [cart])[0])
    assert fanout.wait_for_run(first.id, timeout=10).status == "completed"

    again = run_of(fanout, send(fanout, "flow/idem", tag, [cart])[0])
    other = run_of(fanout, send(fanout, "flow/idem", tag, [{"cart_id": f"{tag}-2"}])[0])
    assert again.status == "skipped"
    assert again.error is not None and again.error["type"] == "Skipped"
    assert first.id in again.error["message"]
    assert fanout.wait_for_run(other.id, timeout=10).status == "completed"

    real_clock = fanout.clock
    day_later = int(timedelta(hours=24, minutes=1).total_seconds() * 1000)
    monkeypatch.setattr(fanout, "clock", lambda: real_clock() + day_later)
    later = run_of(fanout, send(fanout, "flow/idem", tag, [cart])[0])
    assert fanout.wait_for_run(later.id, timeout=10).status == "completed"


# -- conflicting events in one send -------------------------------------------------------
# Each event of a send is admitted before the send's runs are written: an event must see
# the runs admitted for the events before it in the same call, not only the stored ones.
def test_singleton_skip_mode_holds_for_two_events_of_one_send(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    first, second, other = send(fanout, "flow/singleton", tag,
                                [{"key": tag}, {"key": tag}, {"key": f"{tag}-2"}])
    runs = [run_of(fanout, eid) for eid in (first, second, other)]
    assert [run.status == "skipped" for run in runs] == [False, True, False]
    assert runs[0].id in runs[1].error["message"]
    assert fanout.wait_for_run(runs[0].id, timeout=10).status == "completed"
    assert fanout.wait_for_run(runs[2].id, timeout=10).status == "completed"
    assert len(bodies(r, tag)) == 2


def test_singleton_cancel_mode_keeps_the_last_of_two_events_of_one_send(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    release = f"flow:release:{tag}"
    r.set(release, 1)
    first, second = send(fanout, "flow/singleton-cancel", tag,
                         [{"key": tag, "label": "one", "block": release},
                          {"key": tag, "label": "two", "block": release}])
    replaced, kept = run_of(fanout, first), run_of(fanout, second)
    # The first never starts: the second replaced it before it was written.
    assert replaced.status == "skipped", replaced
    assert kept.id in replaced.error["message"] and "singleton" in replaced.error["message"]
    assert fanout.wait_for_run(kept.id, timeout=10).output == "two"
    assert [b["label"] for b in bodies(r, tag)] == ["two:hold", "two:after"]
    # The key is the kept run's, and free again now that it ended.
    third = run_of(fanout, send(fanout, "flow/singleton-cancel", tag,
                                [{"key": tag, "label": "three", "block": release}])[0])
    assert fanout.wait_for_run(third.id, timeout=10).output == "three"


def test_idempotency_holds_for_two_events_of_one_send(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    first, again = send(fanout, "flow/idem", tag, [{"cart_id": tag}, {"cart_id": tag}])
    kept, skipped = run_of(fanout, first), run_of(fanout, again)
    assert skipped.status == "skipped" and kept.id in skipped.error["message"]
    assert fanout.wait_for_run(kept.id, timeout=10).status == "completed"
    assert len(bodies(r, tag)) == 1


def test_rate_limit_counts_the_events_of_one_send(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    event_ids = send(fanout, "flow/rate", tag, [{"user": tag} for _ in range(4)])
    runs = [run_of(fanout, eid) for eid in event_ids]
    assert [run.status == "skipped" for run in runs] == [False, False, True, True]
    wait_all(fanout, "flow-rate", event_ids[:2])
    assert len(bodies(r, tag)) == 2


def test_debounce_folds_the_events_of_one_send_into_one_run(
        pool: Any, fanout: Fanout, r: redis.Redis, tag: str) -> None:
    event_ids = send(fanout, "flow/debounce", tag,
                     [{"key": tag, "label": str(n)} for n in range(3)])
    runs = {run.id for eid in event_ids for run in fanout.runs_for_event(eid)}
    assert len(runs) == 1
    run = fanout.wait_for_run(runs.pop(), timeout=10)
    assert run.event_ids == [event_ids[-1]]
    assert [b["label"] for b in bodies(r, tag)] == ["flow-debounce/2"]


# -- declaration ------------------------------------------------------------------------
@pytest.fixture
def declaring() -> Iterator[Fanout]:
    """A Fanout to declare functions on; declaring touches no server."""
    app = Celery("flow-declare", broker="redis://localhost:1/0", set_as_current=False)
    yield Fanout(app)
    app.close()


def handler(ctx: Any) -> None:
    """A handler for declarations."""


@pytest.mark.parametrize("options", [
    {"batch_events": Batch(10, 5), "debounce": Debounce(1)},
    {"batch_events": Batch(10, 5), "idempotency": "event.data.id"},
    {"batch_events": Batch(10, 5), "singleton": Singleton()},
    {"debounce": Debounce(1), "rate_limit": RateLimit(1, 60)},
    {"debounce": Debounce(1), "singleton": Singleton()},
], ids=lambda o: "+".join(o))
def test_incompatible_options_are_rejected_when_declared(declaring: Fanout,
                                                         options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError, match="cannot combine"):
        declaring.function("combo", event="app/x", **options)(handler)
    assert "combo" not in declaring.functions


@pytest.mark.parametrize("make", [
    lambda: Concurrency(0),
    lambda: Concurrency(-1),
    lambda: Concurrency(True),
    lambda: Concurrency(2.5),  # type: ignore[arg-type]
    lambda: Concurrency(2, key="event.data.$where"),
    lambda: Concurrency(2, key="event.data..x"),
    lambda: Concurrency(2, scope="cluster"),
    lambda: Concurrency(2, scope="global"),  # a global limit needs a key to share
    lambda: Throttle(0, 1),
    lambda: Throttle(5, 0),
    lambda: Throttle(5, -1),
    lambda: Throttle(5, 1, burst=0),
    lambda: Throttle(5, "soon"),
    lambda: RateLimit(0, 60),
    lambda: RateLimit(1, 0),
    lambda: Debounce(0),
    lambda: Debounce(1, timeout=0),
    lambda: Batch(0, 5),
    lambda: Batch(10, 0),
    lambda: Priority(run="event.data[0]"),
    lambda: Singleton(mode="queue"),
    lambda: Singleton(key="a b"),
], ids=lambda make: "")
def test_bad_option_values_are_rejected(make: Any) -> None:
    with pytest.raises(ConfigurationError):
        make()


@pytest.mark.parametrize("options", [
    {"concurrency": 0},
    {"concurrency": "10"},
    {"concurrency": []},
    {"concurrency": [Concurrency(1), Concurrency(2), Concurrency(3)]},
    {"concurrency": [Concurrency(1), 2]},
    {"throttle": 5},
    {"rate_limit": {"limit": 1, "period": 60}},
    {"debounce": 1.0},
    {"batch_events": 10},
    {"priority": "event.data.priority"},
    {"singleton": "skip"},
    {"idempotency": "event.data.cart id"},
    {"idempotency": 7},
], ids=lambda o: f"{next(iter(o))}={next(iter(o.values()))!r}"[:40])
def test_bad_flow_control_arguments_are_rejected_when_declared(
        declaring: Fanout, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        declaring.function("bad", event="app/x", **options)(handler)
    assert "bad" not in declaring.functions


def test_flow_control_accepts_durations_and_an_int_concurrency(declaring: Fanout) -> None:
    fn = declaring.function(
        "ok", event="app/x", concurrency=3,
        throttle=Throttle(10, timedelta(minutes=1), burst=2, key="event.data.user_id"),
        rate_limit=RateLimit(100, "1h"), priority=Priority(run="event.data.priority"),
        idempotency="event.data.cart_id")(handler)
    flow = declaring.functions[fn.function_id].definition.flow
    assert flow.concurrency == (Concurrency(3),)
    assert flow.throttle is not None and flow.throttle.period == 60.0
    assert flow.throttle.key == "data.user_id"
    assert flow.rate_limit is not None and flow.rate_limit.period == 3600.0
    assert flow.idempotency == "data.cart_id"
