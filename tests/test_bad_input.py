"""Bad input (DESIGN §6): a typed ``FanoutError`` that says what to fix, raised before
anything is written.

"Nothing written" is checked against a byte-for-byte snapshot of the whole test Redis,
which is also the broker: no event, no run, no index entry, no task message. Step misuse
is checked on real runs: the run fails with the typed error and the bad step has no
record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
import redis
from celery import Celery

from fanout_celery import (
    ConfigurationError,
    DuplicateFunctionError,
    Event,
    Fanout,
    FanoutError,
    InvalidEventError,
    InvalidStepError,
    NestedStepError,
    RetryPolicy,
    Run,
    StepOutputError,
    Throttle,
    TooManyStepsError,
    UnknownFunctionError,
)
from fanout_celery.model.records import new_run, route_of_meta

pytestmark = pytest.mark.integration

Check = Callable[[], AbstractContextManager[None]]


@pytest.fixture
def nothing_written(redis_url: str) -> Iterator[Check]:
    """``with nothing_written(): ...`` asserts the block changed no key of the Redis."""
    client = redis.Redis.from_url(redis_url)

    def snapshot() -> dict[bytes, bytes | None]:
        return {key: client.dump(key) for key in client.scan_iter()}

    @contextmanager
    def check() -> Iterator[None]:
        before = snapshot()
        yield
        assert snapshot() == before, "the rejected call wrote to Redis"

    yield check
    client.close()


def listen(fanout: Fanout) -> Fanout:
    """Give ``fanout`` a published function listening to ``app/*``, so any event that got
    through validation would write a run and a broker message."""

    @fanout.function("listener", event="app/*")
    def listener(ctx):
        return None

    fanout.publish_subscriptions()
    return fanout


@pytest.fixture
def subscribed(fanout: Fanout) -> Fanout:
    return listen(fanout)


def assert_not_declared(app: Celery, fanout: Fanout, function_id: str) -> None:
    assert function_id not in fanout.functions
    assert f"fanout.{function_id}" not in app.tasks


def invoke_and_wait(app: Celery, fanout: Fanout, worker, function_id: str,
                    datas: list[dict] | None = None) -> list[Run]:
    with worker(app):
        run_ids = [fanout.invoke(function_id, data) for data in (datas or [None])]
        return [fanout.wait_for_run(run_id, timeout=20) for run_id in run_ids]


# -- send ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", " bad", "a" * 300, None, "app/*", ".app/x"])
def test_a_malformed_event_name_is_rejected(subscribed, nothing_written, name):
    with nothing_written(), pytest.raises(InvalidEventError, match=r"name"):
        subscribed.send({"name": name})


@pytest.mark.parametrize("name", ["", " bad", "a" * 300])
def test_an_event_model_with_a_malformed_name_cannot_be_built(name):
    with pytest.raises(InvalidEventError, match=r"an event name is 1-255 characters"):
        Event(name=name)


@pytest.mark.parametrize("events", [42, "app/x", None, [{"name": "app/x"}, 7]])
def test_something_that_is_not_an_event_is_rejected(subscribed, nothing_written, events):
    with nothing_written(), pytest.raises(InvalidEventError, match=r"expected an Event"):
        subscribed.send(events)


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), float("inf")],
                         ids=["set", "object", "nan", "inf"])
def test_event_data_that_is_not_json_is_rejected(subscribed, nothing_written, value):
    with nothing_written(), pytest.raises(InvalidEventError, match=r"data is not JSON"):
        subscribed.send(Event(name="app/x", data={"value": value}))


def test_event_data_that_is_not_a_dict_is_rejected(subscribed, nothing_written):
    with nothing_written(), pytest.raises(InvalidEventError, match=r"data: .*dictionary"):
        subscribed.send({"name": "app/x", "data": [1, 2]})


def test_an_event_over_the_size_limit_is_rejected(app, fanout, nothing_written):
    app.conf.fanout_max_event_bytes = 1024  # before the settings are first read
    subscribed = listen(fanout)
    subscribed.send({"name": "app/x", "data": {"blob": "x" * 900}})  # under: accepted
    with nothing_written(), pytest.raises(
            InvalidEventError, match=r"over the limit of 1024 \(fanout_max_event_bytes\)"):
        subscribed.send({"name": "app/x", "data": {"blob": "x" * 1100}})


def test_a_batch_with_one_bad_event_sends_none_of_them(subscribed, nothing_written,
                                                       redis_client):
    good = [{"name": "app/order.created", "id": "good-1"},
            {"name": "app/order.created", "id": "good-2"}]
    bad = {"name": "app/order.created", "data": {"when": object()}}
    with nothing_written(), pytest.raises(
            InvalidEventError, match=r"event #1 of the batch: .*nothing was sent"):
        subscribed.send([good[0], bad, good[1]])
    assert subscribed.runs_for_event("good-1") == []
    assert subscribed.runs_for_event("good-2") == []
    assert redis_client.llen("celery") == 0

    # The same good events alone do start runs: the snapshot above would have seen them.
    assert subscribed.send(good) == ["good-1", "good-2"]
    assert [len(subscribed.runs_for_event(i)) for i in ("good-1", "good-2")] == [1, 1]
    assert redis_client.llen("celery") == 2


@pytest.mark.parametrize("event_id", ["{run}", "a b", "../x", "a/b", "", "x" * 129])
def test_an_event_id_with_forbidden_characters_is_rejected(subscribed, nothing_written,
                                                            event_id):
    with nothing_written(), pytest.raises(InvalidEventError, match=r"an event id is 1-128"):
        subscribed.send({"name": "app/x", "id": event_id})


@pytest.mark.parametrize("name", ["fanout/function.failed", "fanout/function.finished",
                                  "fanout/anything"])
def test_reserved_fanout_names_cannot_be_sent(fanout, nothing_written, name):
    @fanout.function("on-failed", event="fanout/function.failed")
    def on_failed(ctx):
        return None

    fanout.publish_subscriptions()
    with nothing_written(), pytest.raises(InvalidEventError, match=r"reserved for the library"):
        fanout.send(Event(name=name))


# -- declaring functions ---------------------------------------------------------------

@pytest.mark.parametrize("cron, message", [
    ("not a cron", r"must have 5 fields"),
    ("* * *", r"must have 5 fields"),
    ("61 * * * *", r"does not parse"),
    ("0 12 * * funday", r"does not parse"),
    ("TZ=Mars/Olympus 0 12 * * 5", r"unknown time zone 'Mars/Olympus'"),
    ("", r"non-empty string"),
])
def test_a_cron_that_does_not_parse_is_rejected_at_declaration(app, fanout, nothing_written,
                                                               cron, message):
    with nothing_written(), pytest.raises(ConfigurationError, match=message):
        @fanout.function("weekly", cron=cron)
        def weekly(ctx):
            return None
    assert_not_declared(app, fanout, "weekly")


def test_a_duplicate_function_id_is_rejected_and_the_first_is_kept(app, fanout,
                                                                   nothing_written):
    @fanout.function("dup", event="app/a")
    def first(ctx):
        return None

    with nothing_written(), pytest.raises(DuplicateFunctionError,
                                          match=r"id 'dup' is already declared"):
        @fanout.function("dup", event="app/b")
        def second(ctx):
            return None
    assert fanout.functions["dup"] is first
    assert fanout.functions["dup"].definition.events == ("app/a",)


@pytest.mark.parametrize("retries, message", [
    (-1, r"max_retries must be an integer from 0 to 10000"),
    (10_001, r"max_retries must be an integer from 0 to 10000"),
    ("3", r"retries must be an int or a RetryPolicy, not str"),
    (True, r"retries must be an int or a RetryPolicy, not bool"),
    (1.5, r"retries must be an int or a RetryPolicy, not float"),
    (None, r"retries must be an int or a RetryPolicy, not NoneType"),
])
def test_bad_retries_values_are_rejected(app, fanout, nothing_written, retries, message):
    with nothing_written(), pytest.raises(ConfigurationError, match=message):
        fanout.function("retrying", event="app/x", retries=retries)
    assert_not_declared(app, fanout, "retrying")


@pytest.mark.parametrize("options, message", [
    ({"max_retries": -1}, r"max_retries must be an integer"),
    ({"max_retries": 2.5}, r"max_retries must be an integer"),
    ({"backoff": -1}, r"backoff must be a number >= 0"),
    ({"backoff_factor": 0.5}, r"backoff_factor must be >= 1"),
    ({"backoff_max": "1h"}, r"backoff_max must be a number >= 0"),
    ({"jitter": 2}, r"jitter is a fraction from 0 to 1"),
])
def test_a_bad_retry_policy_is_rejected(options, message):
    with pytest.raises(ConfigurationError, match=message):
        RetryPolicy(**options)


def test_an_unknown_decorator_option_is_rejected(app, fanout, nothing_written):
    with nothing_written(), pytest.raises(
            ConfigurationError, match=r"unknown option\(s\) colour; the Celery task options"):
        fanout.function("opts", event="app/x", colour=1)
    assert_not_declared(app, fanout, "opts")


@pytest.mark.parametrize("option, value, pointer", [
    ("default_retry_delay", 30, r"retries=RetryPolicy\(backoff=<seconds>\)"),
    ("autoretry_for", (ConnectionError,), r"raise NonRetriableError to fail at once"),
    ("max_retries", 3, r"use retries=<int>"),
    ("retry_backoff", True, r"RetryPolicy\(backoff=\.\.\., backoff_factor"),
    ("retry_jitter", False, r"RetryPolicy\(jitter=True\)"),
    ("expires", 60, r"timeouts=Timeouts\(start=\.\.\.\)"),
    ("routing_key", "x", r"use queue=<name>, or Celery's task_routes"),
    ("exchange", "x", r"use queue=<name>, or Celery's task_routes"),
    ("acks_late", False, r"fanout sets this option itself"),
])
def test_a_celery_task_option_that_would_not_apply_is_refused_with_a_pointer(
        app, fanout, nothing_written, option, value, pointer):
    with nothing_written(), pytest.raises(
            ConfigurationError, match=rf"Celery's task option {option}= does not apply .*{pointer}"):
        fanout.function("opts", event="app/x", **{option: value})
    assert_not_declared(app, fanout, "opts")


@pytest.mark.parametrize("value, limit, period", [
    ("10/m", 10, 60.0), ("10/s", 10, 1.0), ("3/h", 3, 3600.0), (5, 5, 1.0), ("0.5/s", 1, 2.0),
    (" 2 / m ", 2, 60.0),
])
def test_celerys_rate_limit_forms_become_a_throttle(fanout, value, limit, period):
    task = fanout.function("rated", event="app/x", rate_limit=value)(_one_arg)
    flow = task.definition.flow
    assert flow.throttle == Throttle(limit, period) and flow.rate_limit is None
    # Not Celery's per-worker rate limit on top of it.
    assert task.rate_limit is None


@pytest.mark.parametrize("kwargs, message", [
    ({"rate_limit": "10/d"}, r"rate_limit='10/d' is neither Celery's form"),
    ({"rate_limit": "0/m"}, r"is neither Celery's form"),
    ({"rate_limit": "10/m", "throttle": Throttle(1, 1)}, r"pass one of rate_limit and throttle"),
    ({"priority": 256}, r"Celery's message priority is an integer from 0 to 255"),
    ({"priority": -1}, r"Celery's message priority"),
    ({"priority": True}, r"Celery's message priority"),
])
def test_a_bad_celery_form_of_a_flow_option_is_rejected(app, fanout, nothing_written, kwargs,
                                                        message):
    with nothing_written(), pytest.raises(ConfigurationError, match=message):
        fanout.function("opts", event="app/x", **kwargs)
    assert_not_declared(app, fanout, "opts")


def test_celerys_integer_priority_is_the_message_priority_of_the_runs(fanout):
    task = fanout.function("urgent", event="app/x", priority=3)(_one_arg)
    assert task.definition.priority == 3 and task.definition.flow.priority is None
    assert task.definition.subscription().priority == 3
    run = new_run(task.definition.subscription(), [{"name": "app/x", "id": "e1"}])
    assert route_of_meta(run.meta).priority == 3


@pytest.mark.parametrize("pattern", ["app*", "*/x", "*", "app/*/x", "app/**", "app/x*"])
def test_an_invalid_wildcard_pattern_is_rejected(app, fanout, nothing_written, pattern):
    with nothing_written(), pytest.raises(
            ConfigurationError, match=r"a wildcard is a trailing '\*' after '/' or '.'"):
        fanout.function("wild", event=pattern)
    assert_not_declared(app, fanout, "wild")


def test_a_wildcard_over_system_events_is_rejected(app, fanout, nothing_written):
    with nothing_written(), pytest.raises(ConfigurationError, match=r"subscribe to the exact"):
        fanout.function("wild", event="fanout/*")
    assert_not_declared(app, fanout, "wild")


def _one_arg(ctx):
    return None


def _no_args():
    return None


def _two_args(ctx, extra):
    return None


def _keyword_only(*, ctx):
    return None


@pytest.mark.parametrize("handler", [_no_args, _two_args, _keyword_only])
def test_a_handler_that_does_not_take_exactly_ctx_is_rejected(app, fanout, nothing_written,
                                                              handler):
    with nothing_written(), pytest.raises(
            ConfigurationError, match=r"must take exactly one argument, ctx"):
        fanout.function("arity", event="app/x")(handler)
    assert_not_declared(app, fanout, "arity")


def test_an_on_failure_handler_with_the_wrong_arity_is_rejected(app, fanout, nothing_written):
    with nothing_written(), pytest.raises(ConfigurationError, match=r"exactly one argument"):
        fanout.function("guarded", event="app/x", on_failure=_no_args)
    assert_not_declared(app, fanout, "guarded")
    assert_not_declared(app, fanout, "guarded-failure")


# -- misusing steps (on real runs) ------------------------------------------------------

def test_a_step_id_that_is_not_a_non_empty_string_is_rejected(app, fanout, worker):
    bodies: list[object] = []
    errors: list[Exception] = []

    @fanout.function("bad-step-ids")
    def bad_step_ids(ctx):
        for step_id in ("", None, 42, "x" * 300):
            try:
                ctx.step.run(step_id, lambda s=step_id: bodies.append(s))
            except InvalidStepError as exc:
                errors.append(exc)
        ctx.step.run(None, lambda: bodies.append("uncaught"))

    [run] = invoke_and_wait(app, fanout, worker, "bad-step-ids")
    assert len(errors) == 4
    assert all(type(e) is InvalidStepError and "a step id is a non-empty string" in str(e)
               for e in errors)
    assert run.status == "failed"
    assert run.error["type"] == "InvalidStepError"
    assert run.attempt == 0  # misuse is not retried
    assert bodies == [] and run.steps == []


def test_a_step_nested_inside_a_step_is_rejected(app, fanout, worker):
    bodies: list[str] = []
    errors: list[Exception] = []

    @fanout.function("nested", retries=RetryPolicy(max_retries=3, backoff=0.05, jitter=0))
    def nested(ctx):
        ctx.step.run("before", lambda: bodies.append("before"))

        def outer():
            bodies.append("outer")
            return ctx.step.run("inner", lambda: bodies.append("inner"))

        try:
            ctx.step.run("outer", outer)
        except NestedStepError as exc:
            errors.append(exc)
            raise

    [run] = invoke_and_wait(app, fanout, worker, "nested")
    assert [type(e) for e in errors] == [NestedStepError]
    assert "steps cannot be nested" in str(errors[0])
    assert run.status == "failed" and run.error["type"] == "NestedStepError"
    assert bodies == ["before", "outer"]  # neither retried nor the inner body run
    assert [s.id for s in run.steps] == ["before"]


def test_a_step_output_that_is_not_json_is_rejected(app, fanout, worker):
    outputs = {"set": lambda: {1, 2}, "object": object, "nan": lambda: float("nan")}
    errors: list[Exception] = []

    @fanout.function("not-json")
    def not_json(ctx):
        ctx.step.run("fine", lambda: 1)
        try:
            return ctx.step.run("bad", outputs[ctx.event.data["kind"]])
        except StepOutputError as exc:
            errors.append(exc)
            raise

    runs = invoke_and_wait(app, fanout, worker, "not-json",
                           [{"kind": kind} for kind in outputs])
    assert len(errors) == 3
    assert all("step 'bad' returned a value that is not JSON" in str(e) for e in errors)
    for run in runs:
        assert run.status == "failed" and run.error["type"] == "StepOutputError"
        assert [s.id for s in run.steps] == ["fine"]


def test_a_step_output_over_the_size_limit_is_rejected(app, fanout, worker):
    app.conf.fanout_max_step_output_bytes = 1024

    @fanout.function("too-large")
    def too_large(ctx):
        ctx.step.run("small", lambda: "x" * 900)
        ctx.step.run("large", lambda: "x" * 2000)

    [run] = invoke_and_wait(app, fanout, worker, "too-large")
    assert run.status == "failed"
    assert run.error["type"] == "StepOutputError"
    assert "over the limit of 1024 (fanout_max_step_output_bytes)" in run.error["message"]
    assert [s.id for s in run.steps] == ["small"]


def test_more_steps_than_the_limit_is_rejected(app, fanout, worker):
    app.conf.fanout_max_steps = 3
    bodies: list[int] = []

    @fanout.function("many-steps")
    def many_steps(ctx):
        for i in range(5):
            ctx.step.run("item", bodies.append, i)

    [run] = invoke_and_wait(app, fanout, worker, "many-steps")
    assert run.status == "failed"
    assert run.error["type"] == "TooManyStepsError"
    assert "more than 3 steps (fanout_max_steps)" in run.error["message"]
    assert bodies == [0, 1, 2]
    assert [s.id for s in run.steps] == ["item", "item:1", "item:2"]
    assert issubclass(TooManyStepsError, InvalidStepError)


# -- configuration and invoke -----------------------------------------------------------

@pytest.mark.parametrize("redis_url_setting, message", [
    (None, r"set app.conf.fanout_redis_url \(the broker is not Redis"),
    ("http://user:hunter2@cache:6379/0", r"must be a redis://, rediss://"),
    ("localhost:6379", r"must be a redis://, rediss://"),
])
def test_fanout_needs_a_redis_url_when_the_broker_is_not_redis(redis_url_setting, message):
    # Nothing listens on this port: reaching the broker would raise something else.
    app = Celery("amqp-app", broker="amqp://guest:guest@127.0.0.1:1//", set_as_current=False)
    app.conf.fanout_redis_url = redis_url_setting
    fanout = Fanout(app)

    @fanout.function("on-amqp", event="app/x")
    def on_amqp(ctx):
        return None

    with pytest.raises(ConfigurationError, match=message) as caught:
        fanout.send(Event(name="app/x"))
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigurationError):
        fanout.invoke("on-amqp")
    app.close()


@pytest.mark.parametrize("target, message", [
    ("missing", r"no function 'missing' is declared or published"),
    (_no_args, r"expected a fanout function or its id"),
    (None, r"expected a fanout function or its id"),
])
def test_invoking_an_unknown_function_is_rejected(subscribed, nothing_written, target,
                                                  message):
    with nothing_written(), pytest.raises(UnknownFunctionError, match=message):
        subscribed.invoke(target)


def test_invoke_data_that_is_not_a_dict_is_rejected(subscribed, nothing_written):
    with nothing_written(), pytest.raises(InvalidEventError, match=r"must be a dict"):
        subscribed.invoke("listener", [1, 2])


def test_every_bad_input_error_is_a_fanout_error():
    for error in (InvalidEventError, InvalidStepError, NestedStepError, StepOutputError,
                  TooManyStepsError, ConfigurationError, DuplicateFunctionError,
                  UnknownFunctionError):
        assert issubclass(error, FanoutError)
