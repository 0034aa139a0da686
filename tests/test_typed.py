"""Typed events and typed step outputs: ``EventType`` validates event data against a
pydantic model before anything is published, handlers read ``ctx.data`` as the model, and
step outputs come back as models (``output_type=`` or the step function's return
annotation), on the first run and on replay.

Real redis-server and real in-process Celery workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from celery import Celery
from cryptography.fernet import Fernet
from pydantic import BaseModel
from support import configure_app

from fanout_celery import (
    ConfigurationError,
    Event,
    EventType,
    Fanout,
    InvalidEventError,
    RetryPolicy,
)
from fanout_celery.encryption import EncryptionMiddleware

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)


class User(BaseModel):
    id: int
    email: str


class UserData(BaseModel):
    user: User
    plan: str = "free"


class Profile(BaseModel):
    name: str
    visits: int


UserEmail = EventType("app/weekly-email-activity.send", data=UserData)


def load_profile() -> Profile:  # a string annotation here (postponed evaluation)
    return Profile(name="Ada", visits=3)


# -- helpers ---------------------------------------------------------------------------
def wait_until(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.02)


def only_run(fanout: Fanout, event_id: str):
    [run] = wait_until(lambda: fanout.runs_for_event(event_id))
    return run


def snapshot(client: redis.Redis) -> dict[str, Any]:
    """Every key of the database with its value."""
    read = {"string": client.get, "hash": client.hgetall, "set": client.smembers,
            "list": lambda k: client.lrange(k, 0, -1),
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True)}
    return {key: read[client.type(key)](key) for key in client.scan_iter(count=1000)}


def fail_once() -> Callable[[], None]:
    """A step body that fails on its first call only: the run replays its earlier steps."""
    calls: list[int] = []

    def body() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("forces a replay")

    return body


ADA = {"user": {"id": 1, "email": "ada@example.com"}}


# -- events ----------------------------------------------------------------------------
def test_calling_an_event_type_builds_a_validated_event():
    event = UserEmail(user={"id": 1, "email": "ada@example.com"}, id="evt-1")
    assert event.name == "app/weekly-email-activity.send" and event.id == "evt-1"
    assert event.data == {**ADA, "plan": "free"}  # defaults filled in
    assert UserEmail(UserData.model_validate(ADA)).data == event.data
    assert UserEmail(ADA).data == event.data


def test_an_invalid_typed_event_lists_every_invalid_field():
    with pytest.raises(InvalidEventError) as caught:
        UserEmail(user={"id": "not-a-number"})
    message = str(caught.value)
    assert "user.id" in message and "user.email" in message
    assert "UserData" in message


def test_sending_invalid_typed_data_lists_the_fields_and_publishes_nothing(
        app, fanout, redis_client):
    @fanout.function(id="weekly-email", event=UserEmail)
    def weekly_email(ctx):
        pass

    before = snapshot(redis_client)
    with pytest.raises(InvalidEventError) as caught:
        fanout.send(Event(name=UserEmail.name, data={"user": {"id": "x"}, "plan": 3}))
    assert all(field in str(caught.value) for field in ("user.id", "user.email", "plan"))
    # One invalid event rejects the whole batch.
    with pytest.raises(InvalidEventError, match=r"event #1 .*user\.email"):
        fanout.send([UserEmail(**ADA), {"name": UserEmail.name, "data": {"user": {"id": 2}}}])
    assert snapshot(redis_client) == before


def test_a_valid_typed_event_starts_a_run_whose_ctx_data_is_the_model(app, fanout, worker):
    seen: list[Any] = []

    @fanout.function(id="weekly-email", event=UserEmail)
    def weekly_email(ctx):
        seen.append((ctx.data, ctx.event.data))
        return ctx.data.user.email

    with worker(app):
        [event_id] = fanout.send(UserEmail(**ADA))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "completed" and done.output == "ada@example.com"
    [(data, raw)] = seen
    assert isinstance(data, UserData) and data.user == User(id=1, email="ada@example.com")
    assert raw == {**ADA, "plan": "free"}  # ctx.event.data stays the JSON dict


def test_a_registered_event_type_types_events_reaching_a_wildcard_subscriber(
        app, fanout, worker):
    fanout.register_event_type(UserEmail)
    seen: list[Any] = []

    @fanout.function(id="everything", event="app/*")
    def everything(ctx):
        seen.append((ctx.event.name, ctx.data))

    with worker(app):
        for event in (UserEmail(**ADA), Event(name="app/other", data={"k": 1})):
            [event_id] = fanout.send(event)
            fanout.wait_for_run(only_run(fanout, event_id).id)

    assert seen == [(UserEmail.name, UserData.model_validate(ADA)), ("app/other", {"k": 1})]
    with pytest.raises(InvalidEventError):
        fanout.send(Event(name=UserEmail.name, data={}))


def test_typed_events_sent_from_a_step_start_runs_with_the_model(app, fanout, worker):
    seen: list[Any] = []

    @fanout.function(id="load-users", event="app/load")
    def load_users(ctx):
        ctx.step.send_event("fan-out", [UserEmail(user={"id": i, "email": f"u{i}@x.io"})
                                        for i in (1, 2)])

    @fanout.function(id="weekly-email", event=UserEmail)
    def weekly_email(ctx):
        seen.append(ctx.data)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/load"))
        parent = fanout.wait_for_run(only_run(fanout, event_id).id)
        for child_event in parent.steps[0].output:
            fanout.wait_for_run(only_run(fanout, child_event).id)

    assert sorted(d.user.id for d in seen) == [1, 2]
    assert all(isinstance(d, UserData) for d in seen)


def test_an_invalid_typed_event_from_send_event_fails_the_run_and_sends_nothing(
        app, fanout, worker, redis_client):
    @fanout.function(id="bad-sender", event="app/load", retries=FAST)
    def bad_sender(ctx):
        ctx.step.send_event("fan-out", Event(name=UserEmail.name,
                                             data={"user": {"email": "no-id@x.io"}}))

    @fanout.function(id="weekly-email", event=UserEmail)
    def weekly_email(ctx):
        pass

    with worker(app):
        [event_id] = fanout.send(Event(name="app/load"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "failed" and done.attempt == 0  # not retried
    assert done.error["type"] == "InvalidEventError"
    assert "user.id" in done.error["message"]
    assert done.steps == []
    assert fanout.store.function_run_ids(["weekly-email"]) == []


def test_invalid_data_from_a_process_without_the_type_fails_the_run_at_ctx_data(
        app, fanout, worker, redis_url):
    @fanout.function(id="weekly-email", event=UserEmail, retries=FAST)
    def weekly_email(ctx):
        return ctx.data.user.id

    fanout.publish_subscriptions()
    web_app = Celery("web", set_as_current=False)  # sends only; declares no types
    configure_app(web_app, redis_url)
    try:
        [event_id] = Fanout(web_app).send(Event(name=UserEmail.name, data={"user": {}}))
    finally:
        web_app.close()

    with worker(app):
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "failed" and done.attempt == 0
    assert done.error["type"] == "InvalidEventError"
    assert "user.id" in done.error["message"]


# -- step outputs ----------------------------------------------------------------------
def test_output_type_returns_the_step_output_as_the_model_first_time_and_on_replay(
        app, fanout, worker):
    seen: list[Any] = []
    replay = fail_once()

    @fanout.function(id="profile", event="app/profile", retries=FAST)
    def profile(ctx):
        seen.append(ctx.step.run("load", lambda: {"name": "Ada", "visits": "3"},
                                 output_type=Profile))
        ctx.step.run("after", replay)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/profile"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "completed"
    assert seen == [Profile(name="Ada", visits=3)] * 2
    assert all(type(value) is Profile for value in seen)
    assert done.steps[0].output == {"name": "Ada", "visits": "3"}  # stored as JSON


def test_a_return_annotation_makes_the_step_output_a_model_first_time_and_on_replay(
        app, fanout, worker):
    seen: list[Any] = []
    replay = fail_once()

    def local_profile() -> Profile:  # the annotation resolves in the module's globals
        return Profile(name="Bob", visits=1)

    @fanout.function(id="annotated", event="app/annotated", retries=FAST)
    def annotated(ctx):
        seen.append((ctx.step.run("module", load_profile),
                     ctx.step.run("local", local_profile)))
        ctx.step.run("after", replay)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/annotated"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "completed"
    expected = (Profile(name="Ada", visits=3), Profile(name="Bob", visits=1))
    assert seen == [expected, expected]
    assert {s.id: s.output for s in done.steps[:2]} == {
        "module": {"name": "Ada", "visits": 3}, "local": {"name": "Bob", "visits": 1}}


def test_model_outputs_replay_as_models_through_encryption(app, worker, redis_client):
    fanout = Fanout(app, middleware=[EncryptionMiddleware(Fernet.generate_key())])
    seen: list[Any] = []
    replay = fail_once()

    @fanout.function(id="sealed-profile", event="app/sealed", retries=FAST)
    def sealed_profile(ctx):
        seen.append(ctx.step.run("load", load_profile))
        ctx.step.run("after", replay)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/sealed"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "completed"
    assert seen == [Profile(name="Ada", visits=3)] * 2
    assert "Ada" not in str(snapshot(redis_client))


def test_an_output_type_that_is_not_a_model_fails_the_run(app, fanout, worker):
    @fanout.function(id="wrong-type", event="app/wrong", retries=FAST)
    def wrong_type(ctx):
        ctx.step.run("load", lambda: {}, output_type=dict)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/wrong"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id)

    assert done.status == "failed" and done.attempt == 0
    assert done.error["type"] == "ConfigurationError"
    assert "output_type" in done.error["message"]


# -- declarations ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["app/*", "app/user.*", "", "has space", 42, None])
def test_an_event_type_needs_one_valid_event_name(name):
    with pytest.raises(ConfigurationError):
        EventType(name, data=UserData)


@pytest.mark.parametrize("data", [dict, UserData.model_validate(ADA), None, "UserData",
                                  int])
def test_an_event_type_needs_a_pydantic_model_class(data):
    with pytest.raises(ConfigurationError, match="pydantic model"):
        EventType("app/x", data=data)


def test_an_event_type_takes_its_data_as_a_model_or_as_keywords_not_both():
    with pytest.raises(ConfigurationError, match="not both"):
        UserEmail(ADA, plan="pro")


def test_a_second_model_for_the_same_event_name_is_a_configuration_error(app, fanout):
    class Other(BaseModel):
        x: int

    assert fanout.register_event_type(UserEmail) is UserEmail
    # The same model again (another EventType object of it, too) is fine.
    fanout.register_event_type(EventType(UserEmail.name, data=UserData))
    conflicting = EventType(UserEmail.name, data=Other)
    with pytest.raises(ConfigurationError, match="already has the type UserData"):
        fanout.register_event_type(conflicting)
    with pytest.raises(ConfigurationError, match="already has the type UserData"):
        @fanout.function(id="conflict", event=conflicting)
        def conflict(ctx):
            pass
    assert "conflict" not in fanout.functions
    assert fanout.event_types[UserEmail.name].model is UserData


def test_register_event_type_takes_an_event_type(fanout):
    with pytest.raises(ConfigurationError, match="EventType"):
        fanout.register_event_type("app/weekly-email-activity.send")
