"""The testing kit: ``fanout_celery.testing.run_function`` runs a function in-process
(no broker, no Redis), and the pytest plugin's fixtures run one for real.

Most tests here need no Redis at all: that is the point of the kit. The last ones use the
plugin's fixtures (``fanout_redis``, ``fanout_app``, ``fanout_instance``,
``fanout_worker``) with a real redis-server and an in-process worker, and check that the
same handler leaves the same steps in-process and on a worker.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from celery import Celery
from pydantic import BaseModel

from example_project import functions, users
from example_project.functions import SEND_EVENT, load_cron, send_reminder
from fanout_celery import (
    Event,
    EventType,
    Fanout,
    InvalidEventError,
    Middleware,
    NonRetriableError,
    RetryAfterError,
    RetryPolicy,
    StepError,
)
from fanout_celery.model.events import SCHEDULED_TIMER, derived_id
from fanout_celery.testing import (
    TIMED_OUT,
    StubError,
    UnusedStubWarning,
    run_function,
)

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)
WEEK = {"sessions": 14, "projects": 3, "minutes": 412}
ADA = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "plan": "pro"}
KEN = {"id": 7, "name": "Ken Thompson", "email": "not-an-email", "plan": "free"}
GRACE = {"id": 3, "name": "Grace Hopper", "email": "grace@example.com", "plan": "team"}


def email_event(user: dict) -> dict:
    return {"name": SEND_EVENT, "data": {"user": user}}


@pytest.fixture
def example_db(tmp_path, monkeypatch):
    """The example's SQLite user store, seeded, in a temporary file."""
    monkeypatch.setenv(users.ENV_VAR, str(tmp_path / "weekly.db"))
    return users.seed()


@pytest.fixture
def local_fanout():
    """A Fanout on an app with no broker and no Redis configured: the kit needs neither."""
    app = Celery("testing-kit", set_as_current=False)
    yield Fanout(app)
    app.close()


# -- the example project's functions ------------------------------------------------------
def test_send_email_with_a_stubbed_load_step_emails_the_user(example_db):
    result = run_function(send_reminder, email_event(ADA), steps={"load-user-data": WEEK})

    assert result.status == "completed"
    assert result.output == {"outbox_id": 1, "to": "ada@example.com"}
    assert [s.id for s in result.steps] == ["wait-for-send-window", "load-user-data",
                                            "email-user"]
    assert result.stubbed == {"load-user-data"}
    # The stubbed step's body never ran; the real mailer used the stubbed numbers.
    assert users.query("SELECT * FROM step_executions") == []
    [mail] = users.query("SELECT user_id, subject FROM outbox")
    assert mail == {"user_id": 1, "subject": "Your week: 14 sessions, 412 minutes"}


def test_the_invalid_address_fails_at_once_with_non_retriable_error():
    # No database needed: the mailer rejects the address before connecting.
    result = run_function(send_reminder, email_event(KEN), steps={"load-user-data": WEEK})

    assert result.status == "failed"
    assert result.error["type"] == "NonRetriableError"
    assert result.error["step"] == "email-user"
    assert result.step("email-user").attempts == 1
    assert result.retries == []
    assert result.lifecycle_event.name == "fanout/function.failed"


def test_the_failure_event_feeds_the_on_failure_function():
    failed = run_function(send_reminder, email_event(KEN), steps={"load-user-data": WEEK})
    on_failure = functions.fanout.functions["weekly-activity-send-email-failure"]

    handled = run_function(on_failure, failed.lifecycle_event, steps={"mark-bouncing": None})

    assert handled.status == "completed"
    assert handled.output["user_id"] == KEN["id"]
    assert handled.output["reason"].startswith("NonRetriableError: 550")


def test_the_flaky_mailer_is_retried_without_back_off_and_succeeds(example_db):
    started = time.monotonic()
    result = run_function(send_reminder, email_event(GRACE), steps={"load-user-data": WEEK})

    assert result.status == "completed"
    assert result.step("email-user").attempts == 2
    [retry] = result.retries
    assert retry.step_id == "email-user" and retry.attempt == 1
    assert retry.error["type"] == "ConnectionError"
    # The back-off a worker would wait (EMAIL_RETRIES: 0.2 s, no jitter) was skipped.
    assert retry.delay == pytest.approx(0.2)
    assert time.monotonic() - started < 0.2 + 1
    assert users.query("SELECT attempts FROM mail_attempts") == [{"attempts": 2}]


def test_the_cron_function_sends_one_event_per_user():
    everyone = [ADA, GRACE, KEN]
    result = run_function(load_cron, steps={"fetch-users": everyone})

    assert result.status == "completed"
    assert result.output == {"count": 3}
    # By default a cron function gets the timer event of this minute's slot.
    assert result.run.events[0]["name"] == SCHEDULED_TIMER
    assert [e.name for e in result.events_sent] == [SEND_EVENT] * 3
    assert [e.data["user"] for e in result.events_sent] == everyone
    # Ids derive from the run and the step, as on a worker: a replay sends nothing new.
    assert [e.id for e in result.events_sent] == [
        derived_id(result.run_id, "send-events", str(i)) for i in range(3)]
    assert result.step("send-events").output == [e.id for e in result.events_sent]


def test_a_send_window_days_ahead_is_slept_through_at_once(example_db):
    opens = datetime.now(UTC) + timedelta(days=3)
    event = {"name": SEND_EVENT, "data": {"user": ADA,
                                          "send_after": int(opens.timestamp() * 1000)}}

    result = run_function(send_reminder, event, steps={"load-user-data": WEEK})

    assert result.status == "completed"
    [sleep] = result.sleeps
    assert sleep.step_id == "wait-for-send-window"
    assert abs(sleep.until - opens) < timedelta(seconds=1)
    assert sleep.seconds == pytest.approx(3 * 86400, abs=5)


# -- steps= and fail_steps= -----------------------------------------------------------
def test_a_stubbed_step_is_not_called_and_returns_the_json_round_trip(local_fanout):
    calls = []

    @local_fanout.function("stubbed")
    def handler(ctx):
        return ctx.step.run("pair", lambda: calls.append(1))

    result = run_function(handler, steps={"pair": (1, 2)})

    assert calls == []
    assert result.output == [1, 2]  # a tuple comes back a list, as from Redis
    assert result.step("pair").output == [1, 2]


def test_a_step_id_stub_covers_every_repeat_and_a_counter_key_one_of_them(local_fanout):
    @local_fanout.function("loop")
    def handler(ctx):
        return [ctx.step.run("item", lambda i=i: f"real {i}") for i in range(3)]

    result = run_function(handler, steps={"item": "stub", "item:1": "second"})

    assert [s.id for s in result.steps] == ["item", "item:1", "item:2"]
    assert result.output == ["stub", "second", "stub"]


def test_unstubbed_steps_run_for_real(local_fanout):
    @local_fanout.function("real")
    def handler(ctx):
        a = ctx.step.run("a", lambda: 20)
        return ctx.step.run("b", lambda x: x + 1, a)

    result = run_function(handler, steps={"a": 41})

    assert result.output == 42
    assert result.stubbed == {"a"}


def test_a_step_output_that_is_not_json_fails_the_run_as_on_a_worker(local_fanout):
    @local_fanout.function("not-json")
    def handler(ctx):
        return ctx.step.run("bad", lambda: {1, 2})

    result = run_function(handler)

    assert result.status == "failed"
    assert result.error["type"] == "StepOutputError"


def test_a_nested_step_fails_the_run_with_nested_step_error(local_fanout):
    @local_fanout.function("nested")
    def handler(ctx):
        return ctx.step.run("outer", lambda: ctx.step.run("inner", lambda: 1))

    result = run_function(handler)

    assert result.status == "failed"
    assert result.error["type"] == "NestedStepError"


def test_a_step_failing_every_attempt_raises_step_error_after_the_last_retry(local_fanout):
    @local_fanout.function("always-down", retries=FAST)
    def handler(ctx):
        try:
            ctx.step.run("call", lambda: "up")
        except StepError as exc:
            return {"gave_up": exc.step_id, "type": exc.error["type"]}

    result = run_function(handler, fail_steps={"call": ConnectionError("down")})

    assert result.output == {"gave_up": "call", "type": "ConnectionError"}
    assert result.step("call").attempts == 3  # the first try and max_retries=2 retries
    assert [r.attempt for r in result.retries] == [1, 2]


def test_a_list_of_failures_fails_the_first_attempts_then_the_body_runs(local_fanout):
    @local_fanout.function("flaky", retries=FAST)
    def handler(ctx):
        return ctx.step.run("call", lambda: f"ok on attempt {ctx.attempt}")

    result = run_function(handler, fail_steps={"call": [TimeoutError, TimeoutError("again")]})

    assert result.output == "ok on attempt 2"
    assert [r.error["type"] for r in result.retries] == ["TimeoutError", "TimeoutError"]


def test_a_step_keeps_the_errors_of_its_last_ten_failed_attempts_shortened(local_fanout):
    calls: list[int] = []

    @local_fanout.function("very-flaky", retries=RetryPolicy(max_retries=14, backoff=0.01,
                                                              jitter=0))
    def handler(ctx):
        def call():
            calls.append(1)
            if len(calls) < 15:
                raise ConnectionError(f"attempt {len(calls)} " + "x" * 1200)
            return "up"
        return ctx.step.run("call", call)

    result = run_function(handler)

    step = result.step("call")
    assert (result.output, step.attempts) == ("up", 15)
    kept = step.earlier_errors
    assert [e["attempt"] for e in kept] == list(range(5, 15))  # the last ten of fourteen
    assert all(e["type"] == "ConnectionError" for e in kept)
    assert kept[0]["message"].startswith("attempt 5 xxx")
    assert kept[0]["message"].endswith("... [cut]") and len(kept[0]["message"]) < 1100
    assert all(len(e["traceback"]) <= 2000 for e in kept)


def test_non_retriable_error_stops_retrying_at_once(local_fanout):
    @local_fanout.function("permanent", retries=FAST)
    def handler(ctx):
        return ctx.step.run("call", lambda: "never")

    result = run_function(handler, fail_steps={"call": NonRetriableError("gone")})

    assert result.status == "failed"
    assert result.error == {**result.error, "type": "NonRetriableError", "step": "call"}
    assert result.step("call").attempts == 1
    assert result.retries == []


def test_retry_after_error_sets_the_recorded_delay(local_fanout):
    @local_fanout.function("rate-limited", retries=FAST)
    def handler(ctx):
        return ctx.step.run("call", lambda: "done")

    result = run_function(handler, fail_steps={"call": [RetryAfterError("429", 90)]})

    assert result.output == "done"
    assert result.retries[0].delay == pytest.approx(90, abs=1)


def test_an_error_outside_steps_retries_the_handler_without_rerunning_steps(local_fanout):
    executed = []

    @local_fanout.function("body-error", retries=FAST)
    def handler(ctx):
        ctx.step.run("once", lambda: executed.append("once"))
        if ctx.attempt == 0:
            raise KeyError("flaky body")
        return "second time lucky"

    result = run_function(handler)

    assert result.output == "second time lucky"
    assert result.attempt == 1
    assert executed == ["once"]
    [retry] = result.retries
    assert (retry.step_id, retry.attempt, retry.error["type"]) == (None, 1, "KeyError")
    assert retry.delay == pytest.approx(0.05, abs=0.02)


# -- waits=, invokes=, sleeps ---------------------------------------------------------
def test_a_stubbed_wait_receives_the_event(local_fanout):
    @local_fanout.function("approval", event="orders/created")
    def handler(ctx):
        approved = ctx.step.wait_for_event("approval", event="orders/approved",
                                           match="data.order_id", timeout="2d")
        return approved.data

    result = run_function(handler, {"name": "orders/created", "data": {"order_id": 7}},
                          waits={"approval": {"data": {"order_id": 7, "by": "ann"}}})

    assert result.output == {"order_id": 7, "by": "ann"}
    step = result.step("approval")
    assert step.kind == "wait_for_event" and step.output["name"] == "orders/approved"


@pytest.mark.parametrize("timeout", [None, TIMED_OUT])
def test_a_wait_stubbed_with_a_timeout_returns_none(local_fanout, timeout):
    @local_fanout.function("approval", event="orders/created")
    def handler(ctx):
        approved = ctx.step.wait_for_event("approval", event="orders/approved",
                                           match="data.order_id", timeout="2d")
        return "approved" if approved else "expired"

    result = run_function(handler, {"name": "orders/created", "data": {"order_id": 7}},
                          waits={"approval": timeout})

    assert result.output == "expired"
    step = result.step("approval")
    assert step.status == "completed" and step.output is None
    # The recorded deadline is the step's own, two days out.
    assert step.detail["timeout_at"] > (time.time() + 86400) * 1000


def test_a_wait_stub_that_could_not_match_is_a_stub_error(local_fanout):
    @local_fanout.function("approval", event="orders/created")
    def handler(ctx):
        return ctx.step.wait_for_event("approval", event="orders/approved",
                                       match="data.order_id", timeout="2d")

    with pytest.raises(StubError, match="would not resolve it: its data.order_id is 8"):
        run_function(handler, {"name": "orders/created", "data": {"order_id": 7}},
                     waits={"approval": {"data": {"order_id": 8}}})
    with pytest.raises(StubError, match="waits for 'orders/approved'"):
        run_function(handler, {"name": "orders/created", "data": {"order_id": 7}},
                     waits={"approval": Event(name="orders/rejected", data={"order_id": 7})})


def test_a_missing_wait_stub_is_a_stub_error_the_handler_cannot_swallow(local_fanout):
    @local_fanout.function("swallow")
    def handler(ctx):
        try:
            return ctx.step.wait_for_event("approval", event="orders/approved", timeout=60)
        except Exception:
            return "swallowed"

    with pytest.raises(StubError, match=r"pass waits=\{'approval'"):
        run_function(handler)


def test_a_stubbed_invoke_returns_the_child_output_and_records_the_call(local_fanout):
    @local_fanout.function("parent")
    def handler(ctx):
        return ctx.step.invoke("charge", function="billing-charge", data={"cents": 500})

    result = run_function(handler, invokes={"charge": {"charged": True}})

    assert result.output == {"charged": True}
    [call] = result.invocations
    assert (call.step_id, call.function_id, call.data) == ("charge", "billing-charge",
                                                           {"cents": 500})


@pytest.mark.parametrize("stub, error_type", [
    (ValueError("card declined"), "ValueError"),
    (StepError("charge-card", {"type": "NonRetriableError", "message": "declined"}),
     "NonRetriableError"),
    (TIMED_OUT, "InvokeTimeout"),
])
def test_a_failed_or_timed_out_invoke_raises_step_error(local_fanout, stub, error_type):
    @local_fanout.function("parent")
    def handler(ctx):
        try:
            ctx.step.invoke("charge", function="billing-charge", timeout="5m")
        except StepError as exc:
            return exc.error["type"]

    result = run_function(handler, invokes={"charge": stub})

    assert result.output == error_type
    assert result.step("charge").status == "failed"


def test_a_missing_invoke_stub_is_a_stub_error(local_fanout):
    @local_fanout.function("parent")
    def handler(ctx):
        return ctx.step.invoke("charge", function="billing-charge")

    with pytest.raises(StubError, match=r"pass invokes=\{'charge'"):
        run_function(handler)


def test_sleeps_end_at_once_and_are_recorded(local_fanout):
    @local_fanout.function("napper")
    def handler(ctx):
        ctx.step.sleep("nap", "7d")
        ctx.step.sleep_until("past", datetime(2020, 1, 1, tzinfo=UTC))
        return "rested"

    started = time.monotonic()
    result = run_function(handler)

    assert result.output == "rested"
    assert time.monotonic() - started < 1
    assert [(s.step_id, s.seconds) for s in result.sleeps] == [("nap", 7 * 86400), ("past", 0)]
    assert [s.kind for s in result.steps] == ["sleep", "sleep"]


# -- parallel, async, batches ---------------------------------------------------------
def test_parallel_branches_run_in_order_in_process(local_fanout):
    order = []

    @local_fanout.function("fan", retries=FAST)
    def handler(ctx):
        def branch(name):
            return lambda: ctx.step.run(name, lambda: order.append(name) or name.upper())

        return ctx.step.parallel("group", [branch("a"), branch("b"), branch("c")])

    result = run_function(handler, steps={"b": "stubbed"})

    assert result.output == ["A", "stubbed", "C"]
    assert order == ["a", "c"]
    assert [s.id for s in result.steps] == ["group", "group[0]", "a", "group[1]", "b",
                                            "group[2]", "c"]


def test_a_failing_branch_raises_step_error_at_the_group(local_fanout):
    @local_fanout.function("fan", retries=FAST)
    def handler(ctx):
        try:
            ctx.step.parallel("group", [lambda: 1,
                                        lambda: ctx.step.run("boom", lambda: 1 / 0)])
        except StepError as exc:
            return exc.step_id

    result = run_function(handler)

    assert result.output == "group[1]"
    assert result.step("boom").attempts == 3


def test_an_async_handler_runs_with_every_stub_kind(local_fanout):
    async def fetch(n):
        await asyncio.sleep(0)
        return n * 2

    @local_fanout.function("async-flow", retries=FAST)
    async def handler(ctx):
        doubled = await ctx.step.run("fetch", fetch, 21)
        await ctx.step.sleep("nap", "1h")
        reply = await ctx.step.wait_for_event("reply", event="chat/replied", timeout="1d")
        child = await ctx.step.invoke("child", function="summarise")
        pair = await ctx.step.parallel("both", [lambda: ctx.step.run("left", fetch, 1),
                                                lambda: ctx.step.run("right", fetch, 2)])
        return [doubled, reply.data["text"], child, pair]

    result = run_function(handler, fail_steps={"fetch": [OSError]},
                          waits={"reply": {"data": {"text": "hi"}}},
                          invokes={"child": "summary"})

    assert result.output == [42, "hi", "summary", [2, 4]]
    assert result.step("fetch").attempts == 2
    assert [s.step_id for s in result.sleeps] == ["nap"]


def test_run_function_works_inside_a_running_event_loop(local_fanout):
    @local_fanout.function("async-inside")
    async def handler(ctx):
        return await ctx.step.run("x", lambda: "from a thread")

    async def an_async_test():
        return run_function(handler)

    assert asyncio.run(an_async_test()).output == "from a thread"


def test_a_list_of_events_is_a_batch_in_ctx_events(local_fanout):
    @local_fanout.function("batch", event="clicks/recorded")
    def handler(ctx):
        return sum(e.data["n"] for e in ctx.events)

    result = run_function(handler, [{"name": "clicks/recorded", "data": {"n": n}}
                                    for n in (1, 2, 3)])

    assert result.output == 6
    assert len(result.run.event_ids) == 3


# -- the app's own Fanout features --------------------------------------------------------
class Stamp(Middleware):
    """Wraps stored step outputs, and stamps the events a run sends."""

    def transform_output(self, ctx, step_id, value):
        return {"wrapped": value} if step_id else value

    def transform_input(self, ctx, step_id, value):
        return value["wrapped"] if step_id else value

    def before_send_events(self, ctx, events):
        return [{**e, "data": {**e["data"], "stamped": True}} for e in events]


def test_the_apps_middleware_runs_in_process_too():
    app = Celery("testing-kit-mw", set_as_current=False)
    fanout = Fanout(app, middleware=[Stamp()])

    @fanout.function("stamped", retries=FAST)
    def handler(ctx):
        value = ctx.step.run("value", lambda: 41)
        if ctx.attempt == 0:
            raise KeyError("replay once")  # the memoized value is read back through it
        ctx.step.send_event("tell", {"name": "app/told", "data": {"value": value + 1}})
        return value + 1

    result = run_function(handler)
    app.close()

    assert result.output == 42
    assert result.step("value").output == {"wrapped": 41}  # the stored copy
    assert [e.data for e in result.events_sent] == [{"value": 42, "stamped": True}]


class Signup(BaseModel):
    email: str
    plan: str = "free"


def test_typed_events_give_ctx_data_and_are_validated_when_sent(local_fanout):
    signed_up = local_fanout.register_event_type(EventType("users/signed-up", Signup))

    @local_fanout.function("welcome", event="users/signed-up")
    def handler(ctx):
        ctx.step.run("read", lambda: [type(ctx.data).__name__, ctx.data.email])
        ctx.step.send_event("again", {"name": "users/signed-up", "data": {"plan": "pro"}})

    result = run_function(handler, signed_up(email="ann@example.com"))

    assert result.step("read").output == ["Signup", "ann@example.com"]
    # The event sent without an email fails the run, as it would on a worker.
    assert result.status == "failed"
    assert result.error["type"] == "InvalidEventError"
    assert "email" in result.error["message"]


# -- mistakes in the test ---------------------------------------------------------------
def test_an_event_the_function_does_not_subscribe_to_is_rejected(local_fanout):
    @local_fanout.function("orders", event="orders/*")
    def handler(ctx):
        return None

    with pytest.raises(InvalidEventError, match="would not start function 'orders'"):
        run_function(handler, {"name": "users/created"})
    assert run_function(handler, {"name": "orders/created"}).status == "completed"


def test_a_stub_for_a_step_never_reached_warns(local_fanout):
    @local_fanout.function("short")
    def handler(ctx):
        return ctx.step.run("real", lambda: 1)

    with pytest.warns(UnusedStubWarning, match=r"steps\['rael'\]"):
        run_function(handler, steps={"rael": 2})


def test_run_function_takes_a_declared_function_only(local_fanout):
    with pytest.raises(TypeError, match="takes a fanout function"):
        run_function(lambda ctx: None)


# -- the pytest plugin, end to end ----------------------------------------------------------
CHECKOUT = {"name": "shop/checkout", "data": {"cart": 1}, "id": "checkout-1"}


def checkout(ctx):
    """One handler, run both in-process and on a worker below."""
    items = [ctx.step.run("price", lambda i=i: (i, i * 100)) for i in range(3)]
    ctx.step.sleep("settle", 0.05)
    total = ctx.step.run("total", lambda: sum(cents for _, cents in items))
    ctx.step.send_event("receipt", {"name": "shop/receipt.sent", "data": {"total": total}})
    return {"items": items, "total": total}


@pytest.mark.integration
def test_the_plugin_fixtures_run_a_function_on_a_real_worker(fanout_redis, fanout_app,
                                                              fanout_instance, fanout_worker):
    receipts = fanout_instance.function("receipts", event="shop/receipt.sent")(
        lambda ctx: ctx.event.data["total"])
    shop = fanout_instance.function("checkout", event="shop/checkout", retries=FAST)(checkout)

    with fanout_worker():
        fanout_instance.send(CHECKOUT)
        run = fanout_instance.wait_for_run(derived_id("checkout", CHECKOUT["id"]), timeout=20)
        [child] = fanout_instance.runs_for_event(derived_id(run.id, "receipt", "0"))
        child = fanout_instance.wait_for_run(child.id, timeout=20)

    assert fanout_app.conf.broker_url == fanout_redis
    assert run.status == "completed"
    assert run.output == {"items": [[0, 0], [1, 100], [2, 200]], "total": 300}
    assert (child.function_id, child.output) == ("receipts", 300)
    # The kit leaves the same steps as the worker did (ids, kinds, outputs, attempts),
    # down to the ids of the events sent: both derive from the same event id.
    local = run_function(shop, CHECKOUT)
    assert local.run_id == run.id
    assert local.output == run.output
    assert [(s.id, s.kind, s.status, s.output, s.attempts) for s in local.steps] == \
        [(s.id, s.kind, s.status, s.output, s.attempts) for s in run.steps]
    assert [e.data for e in local.events_sent] == [{"total": 300}]
    assert receipts.function_id == "receipts"


@pytest.mark.integration
def test_the_plugin_empties_the_test_redis_before_each_test(fanout_redis):
    import redis

    client = redis.Redis.from_url(fanout_redis)
    try:
        assert client.dbsize() == 0
        client.set("left-behind", 1)  # the next test using fanout_redis starts empty
    finally:
        client.close()


def test_a_streamed_send_event_runs_in_process_with_derived_ids():
    app = Celery("testing-kit-stream", set_as_current=False)
    fanout = Fanout(app)

    @fanout.function("streamer", retries=FAST)
    def streamer(ctx):
        sent = ctx.step.send_event("all", ({"name": "app/each", "data": {"i": i}}
                                           for i in range(1203)))
        return [len(sent), sent[0], sent[-1]]

    result = run_function(streamer)
    app.close()

    assert result.status == "completed"
    assert [e.data["i"] for e in result.events_sent] == list(range(1203))
    ids = [derived_id(result.run_id, "all", str(i)) for i in range(1203)]
    assert [e.id for e in result.events_sent] == ids
    assert result.output == [1203, ids[0], ids[-1]]
    assert result.step("all").output == {"streamed": 1203}
