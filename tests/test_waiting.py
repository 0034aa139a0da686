"""Durable waiting: sleep, wait_for_event, invoke, cancellation, cancel_on and timeouts.

Real redis-server, real Celery workers: in-process (threads pool) for most tests, a
worker subprocess of ``tests/apps/wait_app.py`` where a worker must be restarted.
Conditions are polled with deadlines; the only sleeps are for durations under test.
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from procs import wait_for, worker_process
from support import configure_app, run_ids_of

from fanout_celery import (
    CancelOn,
    Event,
    Fanout,
    InvalidStepError,
    NonRetriableError,
    RetryPolicy,
    StepError,
    Timeouts,
)
from fanout_celery.model.durations import parse_duration
from fanout_celery.model.events import FUNCTION_CANCELLED, FUNCTION_INVOKED, derived_id
from fanout_celery.model.records import unpack_step

pytestmark = pytest.mark.integration

WAIT_APP = "tests.apps.wait_app"
WAIT_APP_SLEEP = 3  # tests/apps/wait_app.py: SLEEP_SECONDS


def wait_app_count(step: str) -> str:
    return f"wait:count:{step}"  # tests/apps/wait_app.py: count_key
CREATED = "app/order.created"
APPROVED = "app/order.approved"
DELETED = "app/user.deleted"


# -- helpers ---------------------------------------------------------------------------
def run_id_of(function_id: str, event_id: str) -> str:
    return derived_id(function_id, event_id)


def status_is(fanout: Fanout, run_id: str, *statuses: str):
    def check():
        run = fanout.get_run(run_id)
        return run if run is not None and run.status in statuses else None

    return check


def step_of(run, step_id: str):
    [record] = [s for s in run.steps if s.id == step_id]
    return record


def raw_step(fanout: Fanout, run_id: str, step_id: str) -> dict:
    return unpack_step(fanout.store.step_record(run_id, step_id))


def executions(fanout: Fanout, run_id: str) -> int:
    """How many times a worker took the run (one per Celery task that executed it)."""
    return int(fanout.store.inspect_run(run_id).get("executions") or 0)


def timer_of(fanout: Fanout, run_id: str) -> float | None:
    return fanout.store.indexes_of(run_id)["timer"]


def waiters(fanout: Fanout, event_name: str) -> dict[str, str]:
    return fanout.store.waiters_of(event_name).steps


def as_dict(event: Event | None) -> dict | None:
    return None if event is None else {"id": event.id, "name": event.name, "data": event.data}


def declare_approval(fanout: Fanout, timeout: float | str, match: str | None = "data.user_id",
                     before=None, cancel_on=None, function_id: str = "await-approval"):
    """A function that (optionally runs ``before`` as a step, then) waits for approval."""

    @fanout.function(function_id, event=CREATED, retries=0, cancel_on=cancel_on)
    def await_approval(ctx):
        if before is not None:
            ctx.step.run("before-wait", before, ctx.event.data.get("user_id"))
        approval = ctx.step.wait_for_event("approval", event=APPROVED, match=match,
                                           timeout=timeout)
        return {"approval": as_dict(approval)}

    return await_approval


@pytest.fixture
def sender(redis_url: str):
    """A second, plain ``Fanout`` (its own Celery app, no functions): a web app's sender."""
    application = Celery("sender", set_as_current=False)
    configure_app(application, redis_url)
    yield Fanout(application)
    application.close()


# -- durations ---------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [
    (30, 30.0), (1.5, 1.5), (timedelta(minutes=2), 120.0), ("30s", 30.0), ("2h", 7200.0),
    ("1h30m", 5400.0), ("7d", 604800.0), ("500ms", 0.5), ("1w", 604800.0), (" 15m ", 900.0),
])
def test_durations_accept_seconds_timedeltas_and_unit_strings(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", [
    "soon", "2x", "", "1h30", "h", -1, float("nan"), "400d", 400 * 86400,
    timedelta(days=400), True, None, [1],
])
def test_bad_durations_are_invalid_step_errors(value):
    with pytest.raises(InvalidStepError):
        parse_duration(value)


# -- sleep -------------------------------------------------------------------------------
def test_sleep_parks_the_run_as_sleeping_and_resumes_after_the_duration(app, fanout, worker):
    calls: list[str] = []

    @fanout.function("sleeper", event="app/sleep", retries=0)
    def sleeper(ctx):
        ctx.step.run("before", lambda: calls.append("before") or 1)
        ctx.step.sleep("nap", "1s")
        ctx.step.run("after", lambda: calls.append("after") or 2)
        return "woke"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/sleep"))
        run_id = run_id_of("sleeper", event_id)
        parked = wait_for(status_is(fanout, run_id, "sleeping"), 10, "the run to sleep")
        assert calls == ["before"]
        assert parked.wake_at is not None
        assert step_of(parked, "nap").status == "sleeping"
        # A durable timer in Redis, and no lease: no worker holds the run.
        wake_ms = raw_step(fanout, run_id, "nap")["wake_at"]
        assert timer_of(fanout, run_id) == wake_ms
        assert int(parked.wake_at.timestamp() * 1000) == wake_ms
        assert fanout.store.indexes_of(run_id)["lease"] is None
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "completed" and done.output == "woke"
    # The step before the sleep was replayed from its memo, not run again.
    assert calls == ["before", "after"]
    assert [s.id for s in done.steps] == ["before", "nap", "after"]
    nap = step_of(done, "nap")
    assert nap.status == "completed" and nap.kind == "sleep"
    assert nap.duration is not None and nap.duration >= 1.0
    assert executions(fanout, run_id) == 2  # the first task, and the one the timer woke
    assert timer_of(fanout, run_id) is None


def test_a_sleeping_run_holds_no_worker(app, fanout, worker):
    @fanout.function("long-sleeper", event="app/sleep", retries=0)
    def long_sleeper(ctx):
        ctx.step.sleep("nap", 1.5)
        return "woke"

    @fanout.function("quick", event="app/quick", retries=0)
    def quick(ctx):
        return ctx.step.run("work", lambda: "done")

    with worker(app, concurrency=1):
        [sleep_event] = fanout.send(Event(name="app/sleep"))
        sleeper_id = run_id_of("long-sleeper", sleep_event)
        wait_for(status_is(fanout, sleeper_id, "sleeping"), 10, "the run to sleep")
        [quick_event] = fanout.send(Event(name="app/quick"))
        quick_run = fanout.wait_for_run(run_id_of("quick", quick_event), timeout=10)
        slept = fanout.wait_for_run(sleeper_id, timeout=10)

    # One worker thread: the other run used it while the first one slept.
    assert quick_run.status == "completed" and slept.status == "completed"
    assert quick_run.ended_at < step_of(slept, "nap").ended_at


def test_sleep_until_a_past_time_continues_at_once(app, fanout, worker):
    @fanout.function("sleep-until-past", event="app/sleep", retries=0)
    def sleep_until_past(ctx):
        ctx.step.sleep_until("window", datetime.now(UTC) - timedelta(hours=1))
        ctx.step.sleep("zero", 0)
        return ctx.step.run("after", lambda: "ran")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/sleep"))
        run_id = run_id_of("sleep-until-past", event_id)
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "completed" and done.output == "ran"
    assert [(s.id, s.status, s.kind) for s in done.steps] == [
        ("window", "completed", "sleep"), ("zero", "completed", "sleep"),
        ("after", "completed", "run")]
    assert executions(fanout, run_id) == 1  # never parked


def test_sleep_until_a_future_time_wakes_at_that_time(app, fanout, worker):
    @fanout.function("sleep-until-future", event="app/sleep", retries=0)
    def sleep_until_future(ctx):
        until = datetime.fromtimestamp(ctx.event.data["until"], tz=UTC)
        ctx.step.sleep_until("window", until)
        return ctx.step.run("after", lambda: time.time())

    until = time.time() + 1.0
    with worker(app):
        [event_id] = fanout.send(Event(name="app/sleep", data={"until": until}))
        run_id = run_id_of("sleep-until-future", event_id)
        parked = wait_for(status_is(fanout, run_id, "sleeping"), 10, "the run to sleep")
        assert parked.wake_at == datetime.fromtimestamp(int(until * 1000) / 1000, tz=UTC)
        done = fanout.wait_for_run(run_id, timeout=10)
    assert done.status == "completed"
    assert done.output >= until


def test_a_sleep_wakes_when_due_not_at_the_next_pump_interval(app, fanout, worker):
    # With a 4 s pump interval, a pump polling at its interval would wake a 1 s sleep
    # anywhere up to 4 s late; the pump sleeps until the earliest timer instead.
    app.conf.fanout_pump_interval = 4.0
    fanout.reload_settings()

    @fanout.function("punctual", event="app/punctual", retries=0)
    def punctual(ctx):
        ctx.step.sleep("nap", 1.0)
        return ctx.step.run("after", lambda: time.time())

    with worker(app):
        # The first round runs at start; let the pump settle into its wait.
        lateness = []
        for _ in range(3):
            [event_id] = fanout.send(Event(name="app/punctual"))
            done = fanout.wait_for_run(run_id_of("punctual", event_id), timeout=15)
            wake_at = done.steps[0].detail["wake_at"] / 1000
            lateness.append(done.output - wake_at)
    assert done.status == "completed"
    assert max(lateness) < 1.0, lateness


BAD_WAITS = [
    ("sleep", "soon"), ("sleep", -1), ("sleep", "2x"), ("sleep", "400d"),
    ("sleep", 400 * 86400), ("sleep", ""), ("sleep_until", "2030-01-01T00:00:00Z"),
    ("sleep_until", 1_900_000_000), ("sleep_until", "two-years"),
]


def bad_wait_call(ctx):
    kind, value = ctx.event.data["kind"], ctx.event.data["value"]
    if kind == "sleep":
        ctx.step.sleep("nap", value)
    elif value == "two-years":  # a datetime, but more than a year away
        ctx.step.sleep_until("nap", datetime.now(UTC) + timedelta(days=730))
    else:  # not a datetime
        ctx.step.sleep_until("nap", value)


def test_bad_sleep_arguments_fail_the_run_with_invalid_step_error_and_no_retries(
        app, fanout, worker):
    after: list[str] = []

    @fanout.function("bad-sleep", event="app/bad-sleep", retries=3)
    def bad_sleep(ctx):
        bad_wait_call(ctx)
        after.append(ctx.run_id)

    with worker(app):
        ids = fanout.send([Event(name="app/bad-sleep", data={"kind": k, "value": v})
                           for k, v in BAD_WAITS])
        runs = [fanout.wait_for_run(run_id_of("bad-sleep", i), timeout=10) for i in ids]

    for (kind, value), run in zip(BAD_WAITS, runs, strict=True):
        assert run.status == "failed", (kind, value)
        assert run.error["type"] == "InvalidStepError", (kind, value, run.error)
        assert run.attempt == 0, (kind, value)  # not retried: it would fail the same way
        assert run.steps == [], (kind, value)  # raised before anything was written
    assert after == []


def test_bad_sleep_arguments_raise_at_the_step_where_the_handler_can_catch_them(
        app, fanout, worker):
    @fanout.function("bad-sleep-caught", event="app/bad-sleep", retries=0)
    def bad_sleep_caught(ctx):
        try:
            bad_wait_call(ctx)
        except InvalidStepError as exc:
            return {"caught": type(exc).__name__, "message": str(exc)}
        return {"caught": None}

    with worker(app):
        ids = fanout.send([Event(name="app/bad-sleep", data={"kind": k, "value": v})
                           for k, v in BAD_WAITS])
        runs = [fanout.wait_for_run(run_id_of("bad-sleep-caught", i), timeout=10)
                for i in ids]

    assert all(r.status == "completed" for r in runs)
    assert [r.output["caught"] for r in runs] == ["InvalidStepError"] * len(BAD_WAITS)
    messages = [r.output["message"] for r in runs]
    assert "is not a duration" in messages[0]
    assert "longer than a year" in messages[3]
    assert "must be a datetime" in messages[6]
    assert "more than a year away" in messages[8]


@pytest.mark.chaos
def test_a_sleep_outlives_a_worker_restart(redis_url, redis_client, fanout):
    with worker_process(redis_url, app=WAIT_APP) as first:
        run_id = fanout.invoke("wait-sleeper")
        parked = wait_for(status_is(fanout, run_id, "sleeping"), 20, "the run to sleep")
        first.stop()  # SIGTERM: a warm shutdown while the run sleeps
        stopped_at = time.monotonic()
    assert not first.alive()
    assert fanout.get_run(run_id).status == "sleeping"
    assert timer_of(fanout, run_id) is not None

    with worker_process(redis_url, app=WAIT_APP) as second:
        done = fanout.wait_for_run(run_id, timeout=30)
        elapsed = time.monotonic() - stopped_at

    assert done.status == "completed"
    assert done.output == {"before": first.pid, "after": second.pid}
    assert int(redis_client.get(wait_app_count("before"))) == 1
    assert int(redis_client.get(wait_app_count("after"))) == 1
    nap = step_of(done, "nap")
    assert nap.duration >= WAIT_APP_SLEEP
    assert parked.wake_at <= nap.ended_at
    assert elapsed < 30


def test_timer_precision_of_twenty_one_second_sleeps(app, fanout, worker):
    count, seconds = 20, 1.0

    @fanout.function("precise-sleeper", event="app/sleep", retries=0)
    def precise_sleeper(ctx):
        ctx.step.sleep("nap", seconds)

    with worker(app):
        ids = fanout.send([Event(name="app/sleep") for _ in range(count)])
        run_ids = [run_id_of("precise-sleeper", i) for i in ids]
        runs = [fanout.wait_for_run(r, timeout=20) for r in run_ids]

    assert all(r.status == "completed" for r in runs)
    late = sorted((raw_step(fanout, r, "nap")["ended_at"] - raw_step(fanout, r, "nap")["wake_at"])
                  / 1000 for r in run_ids)
    print(f"\ntimer lateness of {count} runs sleeping {seconds:g}s (pump interval "
          f"{fanout.settings.pump_interval}s, 4 threads): min {late[0] * 1000:.0f} ms, "
          f"median {statistics.median(late) * 1000:.0f} ms, "
          f"p95 {late[int(0.95 * (count - 1))] * 1000:.0f} ms, max {late[-1] * 1000:.0f} ms")
    assert late[0] >= 0  # never early
    assert late[-1] < 5.0  # a sanity bound, not a precision target


# -- wait_for_event -----------------------------------------------------------------------
def test_wait_for_event_returns_the_matching_event_and_wakes_the_run_at_once(
        app, fanout, worker):
    declare_approval(fanout, timeout="30s")

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("await-approval", created)
        waiting = wait_for(status_is(fanout, run_id, "waiting"), 10, "the run to wait")
        assert step_of(waiting, "approval").status == "waiting"
        assert list(waiters(fanout, APPROVED)) != []
        [approved] = fanout.send(Event(name=APPROVED, data={"user_id": 7, "by": "ann"}))
        # Resolved and re-enqueued by send itself, not by the 30 s timeout timer.
        assert fanout.get_run(run_id).status != "waiting"
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "completed"
    assert done.output == {"approval": {"id": approved, "name": APPROVED,
                                        "data": {"user_id": 7, "by": "ann"}}}
    approval = step_of(done, "approval")
    assert approval.kind == "wait_for_event" and approval.status == "completed"
    assert approval.duration < 10
    assert waiters(fanout, APPROVED) == {}


def test_wait_for_event_ignores_events_for_another_user_and_times_out_with_none(
        app, fanout, worker):
    declare_approval(fanout, timeout=1.5)

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("await-approval", created)
        wait_for(status_is(fanout, run_id, "waiting"), 10, "the run to wait")
        fanout.send(Event(name=APPROVED, data={"user_id": 8}))
        fanout.send(Event(name="app/order.approved.other", data={"user_id": 7}))
        assert fanout.get_run(run_id).status == "waiting"
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "completed"
    assert done.output == {"approval": None}
    approval = step_of(done, "approval")
    assert approval.status == "completed" and approval.output is None
    assert approval.duration >= 1.5


def test_wait_for_event_times_out_with_none_and_forgets_its_waiter(app, fanout, worker):
    declare_approval(fanout, timeout="1s")

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("await-approval", created)
        wait_for(status_is(fanout, run_id, "waiting"), 10, "the run to wait")
        done = fanout.wait_for_run(run_id, timeout=10)
        # An approval after the timeout changes nothing.
        fanout.send(Event(name=APPROVED, data={"user_id": 7}))

    assert done.output == {"approval": None}
    assert waiters(fanout, APPROVED) == {}
    assert fanout.get_run(run_id).output == {"approval": None}


def test_an_event_sent_by_the_step_before_the_wait_is_not_missed(
        app, fanout, worker, sender):
    # The race window: the event is sent after the previous step started and before the
    # wait is registered. A plain sender (another app, no functions) sends it.
    def request_approval(user_id):
        [event_id] = sender.send(Event(name=APPROVED, data={"user_id": user_id,
                                                            "by": "auto"}))
        return event_id

    declare_approval(fanout, timeout="20s", before=request_approval)

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("await-approval", created)
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "completed"
    sent = step_of(done, "before-wait").output
    assert done.output == {"approval": {"id": sent, "name": APPROVED,
                                        "data": {"user_id": 7, "by": "auto"}}}
    assert step_of(done, "approval").duration < 10  # resolved, not timed out
    assert waiters(fanout, APPROVED) == {}


def test_an_event_sent_by_send_event_just_before_the_wait_is_not_missed(app, fanout, worker):
    @fanout.function("self-approve", event=CREATED, retries=0)
    def self_approve(ctx):
        user_id = ctx.event.data["user_id"]
        [sent] = ctx.step.send_event("approve", Event(name=APPROVED,
                                                      data={"user_id": user_id}))
        approval = ctx.step.wait_for_event("approval", event=APPROVED, match="data.user_id",
                                           timeout="20s")
        return {"sent": sent, "approval": as_dict(approval)}

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 3}))
        done = fanout.wait_for_run(run_id_of("self-approve", created), timeout=10)

    assert done.status == "completed"
    assert done.output["approval"]["id"] == done.output["sent"]
    assert step_of(done, "approval").duration < 10


def test_an_event_sent_while_the_previous_step_executes_is_not_missed(app, fanout, worker):
    # The step's call makes the approval happen (a webhook, say) before the step returns:
    # the event is noted well before the step's checkpoint and the wait's registration.
    @fanout.function("call-then-wait", event=CREATED, retries=0)
    def call_then_wait(ctx):
        user_id = ctx.event.data["user_id"]

        def call_provider() -> str:
            [approved] = fanout.send(Event(name=APPROVED, data={"user_id": user_id}))
            time.sleep(0.05)  # the provider's answer, after its webhook went out
            return approved

        sent = ctx.step.run("call-provider", call_provider)
        approval = ctx.step.wait_for_event("approval", event=APPROVED, match="data.user_id",
                                           timeout="20s")
        return {"sent": sent, "approval": as_dict(approval)}

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 5}))
        done = fanout.wait_for_run(run_id_of("call-then-wait", created), timeout=10)

    assert done.status == "completed"
    assert done.output["approval"]["id"] == done.output["sent"]


def test_an_event_sent_before_the_run_first_executes_is_not_missed(app, fanout, worker):
    declare_approval(fanout, timeout="20s")
    # No worker yet: the run is created, then its approval arrives, then it executes.
    [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
    [approved] = fanout.send(Event(name=APPROVED, data={"user_id": 7}))
    run_id = run_id_of("await-approval", created)
    assert fanout.get_run(run_id).status == "queued"

    with worker(app):
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.output["approval"]["id"] == approved
    assert step_of(done, "approval").duration < 10


def test_one_event_resolves_only_one_of_a_runs_consecutive_waits(app, fanout, worker):
    @fanout.function("two-approvals", event=CREATED, retries=0)
    def two_approvals(ctx):
        first = ctx.step.wait_for_event("first", event=APPROVED, match="data.user_id",
                                        timeout="20s")
        second = ctx.step.wait_for_event("second", event=APPROVED, match="data.user_id",
                                         timeout="20s")
        return [first.id, second.id]

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("two-approvals", created)
        wait_for(status_is(fanout, run_id, "waiting"), 10, "the first wait")
        [one] = fanout.send(Event(name=APPROVED, data={"user_id": 7}))

        def second_wait_parked():
            run = status_is(fanout, run_id, "waiting")()
            return run is not None and [s.id for s in run.steps] == ["first", "second"]

        # The first approval is still "recent" when the second wait registers: it must
        # not resolve that one too.
        wait_for(second_wait_parked, 10, "the second wait to park")
        [two] = fanout.send(Event(name=APPROVED, data={"user_id": 7}))
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.output == [one, two]


def test_two_events_sent_before_two_consecutive_waits_resolve_one_each(app, fanout, worker):
    @fanout.function("two-approvals", event=CREATED, retries=0)
    def two_approvals(ctx):
        first = ctx.step.wait_for_event("first", event=APPROVED, match="data.user_id",
                                        timeout="20s")
        second = ctx.step.wait_for_event("second", event=APPROVED, match="data.user_id",
                                         timeout="20s")
        return [first.id, second.id]

    [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
    # Sent before the run first executes (no worker yet), one after the other.
    one = fanout.send(Event(name=APPROVED, data={"user_id": 7}, ts=1))[0]
    two = fanout.send(Event(name=APPROVED, data={"user_id": 7}, ts=2))[0]
    with worker(app):
        done = fanout.wait_for_run(run_id_of("two-approvals", created), timeout=10)

    assert done.output == [one, two]


def test_a_wait_without_match_accepts_any_event_of_that_name(app, fanout, worker):
    declare_approval(fanout, timeout="30s", match=None)

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("await-approval", created)
        wait_for(status_is(fanout, run_id, "waiting"), 10, "the run to wait")
        [approved] = fanout.send(Event(name=APPROVED, data={"anything": True}))
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.output == {"approval": {"id": approved, "name": APPROVED,
                                        "data": {"anything": True}}}


def test_bad_match_paths_and_timeouts_of_wait_for_event_are_invalid_step_errors(
        app, fanout, worker):
    cases = [{"match": "data..x"}, {"match": ""}, {"match": "data.absent"},
             {"match": "data.user_id + 1"}, {"timeout": 0}, {"timeout": "2x"},
             {"event": "app/*"}, {"event": "bad name"}]

    @fanout.function("bad-wait", event=CREATED, retries=3)
    def bad_wait(ctx):
        case = ctx.event.data["case"]
        ctx.step.wait_for_event("approval", event=case.get("event", APPROVED),
                                match=case.get("match", "data.user_id"),
                                timeout=case.get("timeout", "10s"))

    with worker(app):
        ids = fanout.send([Event(name=CREATED, data={"user_id": 7, "case": c})
                           for c in cases])
        runs = [fanout.wait_for_run(run_id_of("bad-wait", i), timeout=10) for i in ids]

    for case, run in zip(cases, runs, strict=True):
        assert run.status == "failed", case
        assert run.error["type"] == "InvalidStepError", (case, run.error)
        assert run.attempt == 0 and run.steps == [], case
    assert "not in this run's trigger event" in runs[2].error["message"]
    assert waiters(fanout, APPROVED) == {}


# -- invoke -------------------------------------------------------------------------------
def declare_children(fanout: Fanout) -> None:
    @fanout.function("child-double", event="app/never", retries=0)
    def child_double(ctx):
        return ctx.step.run("double", lambda: ctx.event.data["n"] * 2)

    @fanout.function("child-fail", event="app/never", retries=0)
    def child_fail(ctx):
        ctx.step.run("explode", lambda: (_ for _ in ()).throw(NonRetriableError("no way")))

    @fanout.function("child-slow", event="app/never", retries=0)
    def child_slow(ctx):
        ctx.step.sleep("nap", 3)
        return "late"


def test_invoke_returns_the_child_output_and_links_the_child_to_its_parent(
        app, fanout, worker):
    declare_children(fanout)

    @fanout.function("parent", event="app/parent", retries=0)
    def parent(ctx):
        doubled = ctx.step.invoke("call-child", function=fanout.functions["child-double"],
                                  data={"n": 21}, timeout="30s")
        again = ctx.step.invoke("call-by-id", function="child-double", data={"n": 1})
        return {"doubled": doubled, "again": again}

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        run_id = run_id_of("parent", event_id)
        done = fanout.wait_for_run(run_id, timeout=10)
        children = [fanout.get_run(c) for c in run_ids_of(fanout, "child-double")]
        tree = fanout.run_tree(run_id)

    assert done.status == "completed"
    assert done.output == {"doubled": 42, "again": 2}
    assert [(s.id, s.kind, s.status, s.output) for s in done.steps] == [
        ("call-child", "invoke", "completed", 42), ("call-by-id", "invoke", "completed", 2)]
    by_step = {c.parent_step_id: c for c in children}
    assert sorted(by_step) == ["call-by-id", "call-child"]
    child = by_step["call-child"]
    assert child.parent_run_id == run_id
    assert child.status == "completed" and child.output == 42
    assert child.events[0]["name"] == FUNCTION_INVOKED
    assert child.events[0]["data"] == {"n": 21}
    # The run tree shows each child under the step that invoked it.
    assert {step: [node.run.id for node in nodes] for step, nodes in tree.children.items()} \
        == {step: [c.id] for step, c in by_step.items()}


def test_a_failed_child_raises_step_error_in_the_parent_which_can_catch_it(
        app, fanout, worker):
    declare_children(fanout)

    @fanout.function("parent", event="app/parent", retries=0)
    def parent(ctx):
        try:
            ctx.step.invoke("call-child", function="child-fail", timeout="30s")
        except StepError as exc:
            after = ctx.step.run("after", lambda: "handled")
            return {"step": exc.step_id, "type": exc.error.get("type"), "after": after}
        return {"step": None}

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        done = fanout.wait_for_run(run_id_of("parent", event_id), timeout=10)
        [child_id] = run_ids_of(fanout, "child-fail")
        child = fanout.get_run(child_id)

    assert child.status == "failed"
    assert done.status == "completed"
    assert done.output == {"step": "call-child", "type": "NonRetriableError",
                           "after": "handled"}
    assert step_of(done, "call-child").status == "failed"


def test_a_child_that_outlives_the_invoke_timeout_raises_step_error(app, fanout, worker):
    declare_children(fanout)

    @fanout.function("parent", event="app/parent", retries=0)
    def parent(ctx):
        try:
            return ctx.step.invoke("call-child", function="child-slow", timeout=1)
        except StepError as exc:
            return {"type": exc.error.get("type"), "message": exc.error.get("message")}

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        done = fanout.wait_for_run(run_id_of("parent", event_id), timeout=10)
        [child_id] = run_ids_of(fanout, "child-slow")
        child_then = fanout.get_run(child_id)

    assert done.status == "completed"
    assert done.output["type"] == "InvokeTimeout"
    assert child_id in done.output["message"]
    call = step_of(done, "call-child")
    assert call.status == "failed" and 1.0 <= call.duration < 3.0
    # The child is not cancelled by the timeout: it is still sleeping.
    assert child_then.status == "sleeping"
    assert child_then.parent_run_id == done.id


def test_a_failed_invoke_fails_the_parent_when_uncaught(app, fanout, worker):
    declare_children(fanout)

    @fanout.function("parent", event="app/parent", retries=2)
    def parent(ctx):
        ctx.step.invoke("call-child", function="child-fail", timeout="30s")
        return "unreachable"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        done = fanout.wait_for_run(run_id_of("parent", event_id), timeout=10)

    assert done.status == "failed"
    assert done.error["step"] == "call-child" and done.error["type"] == "NonRetriableError"
    assert done.attempt == 0


# -- cancel -------------------------------------------------------------------------------
def test_cancelling_an_executing_run_stops_it_at_the_next_step_boundary(
        app, fanout, worker, redis_client):
    after: list[str] = []

    def block():
        redis_client.set("test:in-block", 1)
        deadline = time.monotonic() + 20
        while not redis_client.exists("test:release"):
            assert time.monotonic() < deadline, "never released"
            time.sleep(0.02)
        return "released"

    @fanout.function("blocker", event="app/block", retries=0)
    def blocker(ctx):
        ctx.step.run("block", block)
        ctx.step.run("after", lambda: after.append("after"))
        return "finished"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/block"))
        run_id = run_id_of("blocker", event_id)
        wait_for(lambda: redis_client.exists("test:in-block"), 10, "the step to start")
        assert fanout.cancel(run_id) == "requested"
        assert fanout.get_run(run_id).status == "running"
        redis_client.set("test:release", 1)
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "cancelled"
    assert done.error["type"] == "Cancelled"
    assert after == []
    # The step that was executing finished and was checkpointed; the next never ran.
    assert [(s.id, s.status, s.output) for s in done.steps] == [
        ("block", "completed", "released")]
    assert done.output is None
    assert fanout.cancel(run_id) == "final"


def test_a_cancel_requested_before_a_step_retry_or_a_sleep_parks_ends_the_run_cancelled(
        app, fanout, worker, redis_client):
    # The cancel is seen when the run parks (a step retry, a sleep), not at a checkpoint.
    def flaky():
        redis_client.set("test:in-flaky", 1)
        wait_for(lambda: redis_client.exists("test:release"), 20, "the release")
        raise ConnectionError("flaky")

    @fanout.function("flaky-then-retry", event="app/block",
                     retries=RetryPolicy(max_retries=3, backoff=0.05, jitter=0))
    def flaky_then_retry(ctx):
        ctx.step.run("flaky", flaky)

    @fanout.function("busy-then-sleep", event="app/block", retries=0)
    def busy_then_sleep(ctx):
        redis_client.set("test:in-body", 1)  # handler code, outside any step
        wait_for(lambda: redis_client.exists("test:release"), 20, "the release")
        ctx.step.sleep("nap", "1h")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/block"))
        run_ids = [run_id_of("flaky-then-retry", event_id),
                   run_id_of("busy-then-sleep", event_id)]
        wait_for(lambda: redis_client.exists("test:in-flaky", "test:in-body") == 2, 10,
                 "both runs to be busy")
        assert [fanout.cancel(r) for r in run_ids] == ["requested", "requested"]
        redis_client.set("test:release", 1)
        runs = [fanout.wait_for_run(r, timeout=10) for r in run_ids]

    assert [r.status for r in runs] == ["cancelled", "cancelled"]
    assert all(timer_of(fanout, r) is None for r in run_ids)
    assert step_of(runs[0], "flaky").attempts == 1  # never retried


def test_cancelling_a_sleeping_run_cancels_it_at_once_and_drops_its_timer(
        app, fanout, worker):
    after: list[str] = []

    @fanout.function("sleeper", event="app/sleep", retries=0)
    def sleeper(ctx):
        ctx.step.sleep("nap", "1h")
        after.append("woke")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/sleep"))
        run_id = run_id_of("sleeper", event_id)
        wait_for(status_is(fanout, run_id, "sleeping"), 10, "the run to sleep")
        assert timer_of(fanout, run_id) is not None
        assert fanout.cancel(run_id, reason="user left") == "cancelled"
        run = fanout.get_run(run_id)

    assert run.status == "cancelled"
    assert run.error == {"type": "Cancelled", "message": "user left"}
    assert run.wake_at is None and run.ended_at is not None
    assert timer_of(fanout, run_id) is None
    assert after == []


def test_cancelling_a_waiting_run_cancels_it_and_drops_its_waiter(app, fanout, worker):
    declare_approval(fanout, timeout="1h")

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("await-approval", created)
        wait_for(status_is(fanout, run_id, "waiting"), 10, "the run to wait")
        assert fanout.cancel(run_id) == "cancelled"
        assert timer_of(fanout, run_id) is None
        assert waiters(fanout, APPROVED) == {}
        # A matching event after the cancel does not revive the run.
        fanout.send(Event(name=APPROVED, data={"user_id": 7}))
        run = fanout.get_run(run_id)

    assert run.status == "cancelled"
    assert step_of(run, "approval").status == "waiting"
    assert run.output is None


def test_cancel_of_a_finished_run_is_final_and_of_an_unknown_run_missing(
        app, fanout, worker):
    @fanout.function("quick", event="app/quick", retries=0)
    def quick(ctx):
        return 1

    with worker(app):
        [event_id] = fanout.send(Event(name="app/quick"))
        run_id = run_id_of("quick", event_id)
        fanout.wait_for_run(run_id, timeout=10)

    assert fanout.cancel(run_id) == "final"
    assert fanout.get_run(run_id).status == "completed"
    assert fanout.cancel("0" * 32) == "missing"


def test_cancel_runs_cancels_the_runs_of_a_function_created_in_a_time_range(app, fanout):
    @fanout.function("queued-up", event="app/queued", retries=0)
    def queued_up(ctx):
        return 1

    @fanout.function("other", event="app/queued", retries=0)
    def other(ctx):
        return 1

    # No worker: every run stays queued.
    ids = []
    for _ in range(6):
        ids += fanout.send(Event(name="app/queued"))
        time.sleep(0.005)  # distinct creation milliseconds
    runs = [fanout.get_run(run_id_of("queued-up", i)) for i in ids]
    assert all(r.status == "queued" for r in runs)

    middle = fanout.cancel_runs(queued_up, started_after=runs[2].created_at,
                                started_before=runs[3].created_at)
    assert middle == 2
    statuses = [fanout.get_run(r.id).status for r in runs]
    assert statuses == ["queued", "queued", "cancelled", "cancelled", "queued", "queued"]

    assert fanout.cancel_runs("queued-up", started_after=runs[4].created_at) == 2
    assert fanout.cancel_runs("queued-up") == 2  # the rest; cancelled ones are final
    assert all(fanout.get_run(r.id).status == "cancelled" for r in runs)
    # Another function subscribed to the same events is untouched.
    assert all(fanout.get_run(run_id_of("other", i)).status == "queued" for i in ids)


def test_a_cancelled_run_emits_function_cancelled_to_subscribers(app, fanout, worker):
    @fanout.function("sleeper", event="app/sleep", retries=0)
    def sleeper(ctx):
        ctx.step.sleep("nap", "1h")

    @fanout.function("cancel-listener", event=FUNCTION_CANCELLED, retries=0)
    def cancel_listener(ctx):
        return ctx.event.data

    with worker(app):
        [event_id] = fanout.send(Event(name="app/sleep", data={"user_id": 5}))
        run_id = run_id_of("sleeper", event_id)
        wait_for(status_is(fanout, run_id, "sleeping"), 10, "the run to sleep")
        assert fanout.cancel(run_id, reason="not needed") == "cancelled"
        notice = derived_id(run_id, FUNCTION_CANCELLED)
        [listened] = wait_for(lambda: fanout.runs_for_event(notice), 10, "the notice")
        heard = fanout.wait_for_run(listened.id, timeout=10)

    assert heard.status == "completed"
    assert heard.output["run_id"] == run_id
    assert heard.output["function_id"] == "sleeper"
    assert heard.output["error"] == {"type": "Cancelled", "message": "not needed"}
    assert heard.output["event"]["id"] == event_id
    assert heard.output["event"]["data"] == {"user_id": 5}
    assert heard.parent_run_id == run_id


def test_a_run_stopped_at_its_next_step_emits_function_cancelled_too(
        app, fanout, worker, redis_client):
    def block():
        redis_client.set("test:in-block", 1)
        wait_for(lambda: redis_client.exists("test:release"), 20, "the release")

    @fanout.function("blocker", event="app/block", retries=0)
    def blocker(ctx):
        ctx.step.run("block", block)
        ctx.step.run("after", lambda: None)

    @fanout.function("cancel-listener", event=FUNCTION_CANCELLED, retries=0)
    def cancel_listener(ctx):
        return ctx.event.data

    with worker(app):
        [event_id] = fanout.send(Event(name="app/block", data={"user_id": 5}))
        run_id = run_id_of("blocker", event_id)
        wait_for(lambda: redis_client.exists("test:in-block"), 10, "the step to start")
        assert fanout.cancel(run_id, reason="not needed") == "requested"
        redis_client.set("test:release", 1)
        notice = derived_id(run_id, FUNCTION_CANCELLED)
        [listened] = wait_for(lambda: fanout.runs_for_event(notice), 10, "the notice")
        heard = fanout.wait_for_run(listened.id, timeout=10)

    assert fanout.get_run(run_id).status == "cancelled"
    assert heard.output["run_id"] == run_id and heard.output["function_id"] == "blocker"
    assert heard.output["error"] == {"type": "Cancelled", "message": "not needed"}
    assert heard.output["event"]["id"] == event_id


# -- cancel_on -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["sleeping", "waiting"])
def test_a_matching_cancel_on_event_cancels_a_parked_run_and_another_user_does_not(
        app, fanout, worker, mode):
    @fanout.function("cancellable", event=CREATED, retries=0,
                     cancel_on=[CancelOn(event=DELETED, match="data.user_id")])
    def cancellable(ctx):
        if ctx.event.data["mode"] == "sleeping":
            ctx.step.sleep("nap", "1h")
        else:
            ctx.step.wait_for_event("approval", event=APPROVED, match="data.user_id",
                                    timeout="1h")

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7, "mode": mode}))
        run_id = run_id_of("cancellable", created)
        wait_for(status_is(fanout, run_id, mode), 10, f"the run to be {mode}")
        fanout.send(Event(name=DELETED, data={"user_id": 8}))
        assert fanout.get_run(run_id).status == mode
        [deleted] = fanout.send(Event(name=DELETED, data={"user_id": 7}))
        run = fanout.get_run(run_id)

    assert run.status == "cancelled"
    assert run.error["type"] == "Cancelled" and deleted in run.error["message"]
    assert timer_of(fanout, run_id) is None
    # The cancel_on entry is gone with the run.
    assert fanout.store.waiters_of(DELETED).cancels == {}


def test_a_cancel_on_event_after_the_cancel_on_timeout_does_not_cancel(app, fanout, worker):
    @fanout.function("briefly-cancellable", event=CREATED, retries=0,
                     cancel_on=CancelOn(event=DELETED, match="data.user_id", timeout=0.3))
    def briefly_cancellable(ctx):
        ctx.step.sleep("nap", 1)
        return "woke"

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("briefly-cancellable", created)
        wait_for(status_is(fanout, run_id, "sleeping"), 10, "the run to sleep")
        time.sleep(0.4)  # the duration under test: past the cancel_on window
        fanout.send(Event(name=DELETED, data={"user_id": 7}))
        assert fanout.get_run(run_id).status == "sleeping"
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "completed" and done.output == "woke"
    assert fanout.store.waiters_of(DELETED).cancels == {}


def test_cancel_on_stops_an_executing_run_at_its_next_step(app, fanout, worker, redis_client):
    after: list[str] = []

    def block():
        redis_client.set("test:in-block", 1)
        wait_for(lambda: redis_client.exists("test:release"), 20, "the release")
        return "released"

    @fanout.function("cancellable", event=CREATED, retries=0,
                     cancel_on=CancelOn(event=DELETED, match="data.user_id"))
    def cancellable(ctx):
        ctx.step.run("block", block)
        ctx.step.run("after", lambda: after.append("after"))

    with worker(app):
        [created] = fanout.send(Event(name=CREATED, data={"user_id": 7}))
        run_id = run_id_of("cancellable", created)
        wait_for(lambda: redis_client.exists("test:in-block"), 10, "the step to start")
        fanout.send(Event(name=DELETED, data={"user_id": 7}))
        redis_client.set("test:release", 1)
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "cancelled"
    assert after == []
    assert [s.id for s in done.steps] == ["block"]


# -- timeouts -------------------------------------------------------------------------------
def test_a_run_not_started_within_the_start_timeout_is_cancelled(
        app, fanout, worker, redis_client):
    calls: list[str] = []

    @fanout.function("must-start", event="app/start", retries=0,
                     timeouts=Timeouts(start="300ms"))
    def must_start(ctx):
        calls.append(ctx.run_id)

    # No worker is running: the run stays queued past its start timeout.
    [event_id] = fanout.send(Event(name="app/start"))
    run_id = run_id_of("must-start", event_id)
    assert fanout.engine.pump.round() == 0 and fanout.get_run(run_id).status == "queued"

    def pumped_cancelled():
        fanout.engine.pump.round()
        return status_is(fanout, run_id, "cancelled")()

    run = wait_for(pumped_cancelled, 5, "the start timeout to cancel the run")
    assert "start timeout" in run.error["message"]
    assert run.created_at + timedelta(milliseconds=300) <= run.ended_at

    # The run's message is still on the broker: a worker now takes it and does nothing.
    with worker(app):
        # Celery's Redis transport: the queue list, and the hash of unacked messages.
        wait_for(lambda: redis_client.llen("celery") == 0 and not redis_client.hlen("unacked"),
                 10, "the worker to consume and ack the stale message")
    assert calls == []
    assert fanout.get_run(run_id).status == "cancelled"


def test_a_run_not_finished_within_the_finish_timeout_is_cancelled(app, fanout, worker):
    @fanout.function("must-finish", event="app/finish", retries=0,
                     timeouts=Timeouts(finish=1))
    def must_finish(ctx):
        ctx.step.run("first", lambda: 1)
        ctx.step.sleep("too-long", "1h")
        return "unreachable"

    with worker(app):
        [event_id] = fanout.send(Event(name="app/finish"))
        run_id = run_id_of("must-finish", event_id)
        wait_for(status_is(fanout, run_id, "sleeping"), 10, "the run to sleep")
        done = fanout.wait_for_run(run_id, timeout=10)

    assert done.status == "cancelled"
    assert "finish timeout" in done.error["message"]
    assert 1.0 <= done.duration < 5.0
    assert [s.id for s in done.steps] == ["first", "too-long"]
    assert timer_of(fanout, run_id) is None


def test_a_run_that_finishes_in_time_is_not_cancelled_by_its_timeouts(app, fanout, worker):
    @fanout.function("in-time", event="app/finish", retries=0,
                     timeouts=Timeouts(start="500ms", finish="700ms"))
    def in_time(ctx):
        return ctx.step.run("quick", lambda: "done")

    with worker(app):
        [event_id] = fanout.send(Event(name="app/finish"))
        run_id = run_id_of("in-time", event_id)
        done = fanout.wait_for_run(run_id, timeout=10)
        # Both deadlines pass while the worker's pump runs.
        wait_for(lambda: fanout.store.count("deadlines") == 0, 10,
                 "both deadlines to be claimed")

    assert done.status == "completed"
    assert fanout.get_run(run_id).status == "completed"


def test_invalid_cancel_on_and_timeouts_are_configuration_errors(fanout):
    from fanout_celery import ConfigurationError

    for bad in (lambda: CancelOn(event="app/*"), lambda: CancelOn(event="app/x", match="a..b"),
                lambda: CancelOn(event="app/x", timeout="2x"), lambda: Timeouts(),
                lambda: Timeouts(start=0), lambda: Timeouts(finish="soon")):
        with pytest.raises(ConfigurationError):
            bad()
    with pytest.raises(ConfigurationError):
        fanout.function("bad-cancel-on", event="app/x", cancel_on="app/y")(lambda ctx: None)
    with pytest.raises(ConfigurationError):
        fanout.function("bad-timeouts", event="app/x", timeouts={"start": 1})(lambda ctx: None)
