"""Encryption at rest (``EncryptionMiddleware``): step outputs, function outputs and
``event.data["encrypted"]`` are ciphertext in Redis and plain values in handlers, on the
first run and on replay; keys rotate through ``fallback_keys``.

Real redis-server and real in-process Celery workers. "Absent from Redis" is checked by
reading the value of every key in the database.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from cryptography.fernet import Fernet, InvalidToken
from support import configure_app

from fanout_celery import (
    ConfigurationError,
    Event,
    Fanout,
    FanoutError,
    RetryPolicy,
)
from fanout_celery.encryption import MARK, DecryptionError, EncryptionMiddleware
from fanout_celery.model.records import unpack_step

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_retries=2, backoff=0.05, jitter=0)


# -- helpers ---------------------------------------------------------------------------
def wait_until(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        time.sleep(0.02)


def secret(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex}"


def redis_text(client: redis.Redis) -> str:
    """Every key and value in the database, as one string."""
    parts = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        else:
            value = client.xrange(key) if kind == "stream" else None
        parts.append(f"{key}={value!r}")
    return "\n".join(parts)


def sealed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {MARK} and isinstance(value[MARK], str)


def open_with(key: str, value: dict[str, str]) -> Any:
    return json.loads(Fernet(key).decrypt(value[MARK].encode()))


def raw_step(client: redis.Redis, fanout: Fanout, run_id: str, step: str) -> dict[str, Any]:
    return unpack_step(fanout.store.step_record(run_id, step))


def raw_output(client: redis.Redis, fanout: Fanout, run_id: str) -> Any:
    return json.loads(fanout.store.inspect_run(run_id)["output"])


def only_run(fanout: Fanout, event_id: str, function_id: str | None = None):
    runs = wait_until(lambda: [r for r in fanout.runs_for_event(event_id)
                               if function_id in (None, r.function_id)])
    [run] = runs
    return run


@pytest.fixture
def key_a() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def key_b() -> str:
    return Fernet.generate_key().decode()


@pytest.fixture
def encryption(key_a: str) -> EncryptionMiddleware:
    return EncryptionMiddleware(key_a)


@pytest.fixture
def fanout(app: Celery, encryption: EncryptionMiddleware) -> Fanout:
    return Fanout(app, middleware=[encryption])


@pytest.fixture
def new_app(redis_url: str) -> Iterator[Callable[[], Celery]]:
    """Another Celery app on the same Redis: a redeployed worker with other keys."""
    made: list[Celery] = []

    def make() -> Celery:
        other = Celery(f"tests-{len(made)}", set_as_current=False)
        configure_app(other, redis_url)
        made.append(other)
        return other

    yield make
    for other in made:
        other.close()


# -- outputs ---------------------------------------------------------------------------
def test_step_and_function_outputs_are_ciphertext_in_redis(app, fanout, worker, redis_client,
                                                          encryption):
    step_secret, output_secret = secret("step"), secret("output")

    @fanout.function(id="secretive", event="app/secretive")
    def secretive(ctx):
        card = ctx.step.run("load-card", lambda: {"number": step_secret})
        return {"echo": card["number"], "other": output_secret}

    with worker(app):
        [event_id] = fanout.send(Event(name="app/secretive"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id, timeout=15)

    assert done.status == "completed"
    dump = redis_text(redis_client)
    assert step_secret not in dump and output_secret not in dump
    step = raw_step(redis_client, fanout, done.id, "load-card")
    assert sealed(step["output"]) and step["status"] == "completed"
    assert sealed(raw_output(redis_client, fanout, done.id))
    # What the API reads back is the stored (sealed) form; the middleware opens it.
    assert sealed(done.output)
    assert encryption.decrypt(done.output) == {"echo": step_secret, "other": output_secret}
    assert encryption.decrypt(done.steps[0].output) == {"number": step_secret}


def test_the_handler_sees_plaintext_on_the_first_run_and_on_replay(app, fanout, worker,
                                                                   redis_client):
    value = secret("replayed")
    seen: list[Any] = []
    executed: list[str] = []

    @fanout.function(id="replay-plain", event="app/replay-plain", retries=FAST)
    def replay_plain(ctx):
        card = ctx.step.run("load", lambda: executed.append("load") or {"number": value})
        seen.append(card)

        def flaky():
            executed.append("flaky")
            if executed.count("flaky") == 1:
                raise RuntimeError("first attempt fails")
            return card["number"]

        return ctx.step.run("use", flaky)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/replay-plain"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id, timeout=15)

    assert done.status == "completed"
    assert executed == ["load", "flaky", "flaky"]  # "load" replayed from its memo
    assert seen == [{"number": value}, {"number": value}]
    assert value not in redis_text(redis_client)


def test_encrypted_event_data_is_ciphertext_when_stored_and_plain_in_ctx_event(
        app, fanout, worker, redis_client):
    ssn = secret("ssn")
    seen: list[Any] = []

    @fanout.function(id="reader", event="app/patient")
    def reader(ctx):
        seen.append((ctx.event.data, ctx.data))

    with worker(app):
        [event_id] = fanout.send(Event(name="app/patient",
                                       data={"patient_id": 7, "encrypted": {"ssn": ssn}}))
        run = fanout.wait_for_run(only_run(fanout, event_id).id, timeout=15)

    assert run.status == "completed"
    plain = {"patient_id": 7, "encrypted": {"ssn": ssn}}
    assert seen == [(plain, plain)]
    [stored] = fanout.store.get_events([event_id])
    assert stored["data"]["patient_id"] == 7  # routing and match paths still see the rest
    assert sealed(stored["data"]["encrypted"])
    assert sealed(run.events[0]["data"]["encrypted"])
    assert ssn not in redis_text(redis_client)


def test_an_event_sent_from_a_step_is_encrypted_and_the_child_reads_it_plain(
        app, fanout, worker, redis_client):
    token = secret("token")
    seen: list[Any] = []

    @fanout.function(id="sender", event="app/start")
    def sender(ctx):
        ctx.step.send_event("notify", Event(name="app/notified",
                                            data={"n": 1, "encrypted": [token]}))

    @fanout.function(id="notified", event="app/notified")
    def notified(ctx):
        seen.append(ctx.event.data["encrypted"])

    with worker(app):
        [event_id] = fanout.send(Event(name="app/start"))
        parent = fanout.wait_for_run(only_run(fanout, event_id).id, timeout=15)
        [child_event] = parent.steps[0].output
        child = fanout.wait_for_run(only_run(fanout, child_event).id, timeout=15)

    assert child.status == "completed" and child.parent_run_id == parent.id
    assert seen == [[token]]
    assert sealed(child.events[0]["data"]["encrypted"])
    assert token not in redis_text(redis_client)


def test_wait_for_event_returns_the_decrypted_event_first_time_and_on_replay(
        app, fanout, worker, redis_client):
    pin = secret("pin")
    seen: list[Any] = []
    attempts: list[int] = []

    @fanout.function(id="waiter", event="app/login", retries=FAST)
    def waiter(ctx):
        answer = ctx.step.wait_for_event("otp", event="app/otp", match="data.user",
                                         timeout=30)
        seen.append(answer.data)

        def flaky():
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("forces a replay of the wait")

        ctx.step.run("after", flaky)
        return answer.data["encrypted"]

    with worker(app):
        [event_id] = fanout.send(Event(name="app/login", data={"user": "u1"}))
        run_id = only_run(fanout, event_id).id
        wait_until(lambda: fanout.get_run(run_id).status == "waiting")
        fanout.send(Event(name="app/otp", data={"user": "u1", "encrypted": {"pin": pin}}))
        done = fanout.wait_for_run(run_id, timeout=15)

    assert done.status == "completed"
    plain = {"user": "u1", "encrypted": {"pin": pin}}
    assert seen == [plain, plain]
    wait = next(s for s in done.steps if s.id == "otp")
    assert sealed(wait.output["data"]["encrypted"])
    assert pin not in redis_text(redis_client)


def test_an_invoked_childs_output_round_trips_encrypted(app, fanout, worker, redis_client):
    given, returned = secret("given"), secret("returned")
    child_saw: list[Any] = []
    parent_got: list[Any] = []

    @fanout.function(id="vault")
    def vault(ctx):
        child_saw.append(ctx.event.data["encrypted"])
        return {"token": returned}

    @fanout.function(id="caller", event="app/call")
    def caller(ctx):
        out = ctx.step.invoke("fetch", function=vault, data={"encrypted": given})
        parent_got.append(out)
        return out

    with worker(app):
        [event_id] = fanout.send(Event(name="app/call"))
        done = fanout.wait_for_run(only_run(fanout, event_id).id, timeout=15)

    assert done.status == "completed"
    assert child_saw == [given]
    assert parent_got == [{"token": returned}]
    step = raw_step(redis_client, fanout, done.id, "fetch")
    assert sealed(step["output"])
    dump = redis_text(redis_client)
    assert given not in dump and returned not in dump


def test_fanout_invoke_encrypts_the_encrypted_field_of_its_data(app, fanout, worker,
                                                                redis_client):
    given = secret("invoke-data")
    seen: list[Any] = []

    @fanout.function(id="direct")
    def direct(ctx):
        seen.append(ctx.event.data["encrypted"])

    with worker(app):
        run_id = fanout.invoke(direct, data={"encrypted": {"key": given}})
        run = fanout.wait_for_run(run_id, timeout=15)

    assert run.status == "completed"
    assert seen == [{"key": given}]
    assert sealed(run.events[0]["data"]["encrypted"])
    assert given not in redis_text(redis_client)


def test_parallel_branch_results_are_encrypted_and_returned_plain(app, fanout, worker,
                                                                  redis_client):
    left, right = secret("left"), secret("right")
    results: list[Any] = []

    @fanout.function(id="fork", event="app/fork")
    def fork(ctx):
        got = ctx.step.parallel("both", [
            lambda: ctx.step.run("l", lambda: left),
            lambda: {"right": right},
        ])
        results.append(got)
        return len(got)

    with worker(app):
        [event_id] = fanout.send(Event(name="app/fork"))
        done = fanout.wait_for_run(only_run(fanout, event_id, "fork").id, timeout=20)

    assert done.status == "completed"
    assert results == [[left, {"right": right}]]
    dump = redis_text(redis_client)
    assert left not in dump and right not in dump


def test_the_finished_event_carries_the_output_as_stored(app, fanout, worker, redis_client,
                                                        encryption):
    value = secret("finished")
    seen: list[Any] = []

    @fanout.function(id="producer", event="app/produce")
    def producer(ctx):
        return {"value": value}

    @fanout.function(id="watcher", event="fanout/function.finished")
    def watcher(ctx):
        seen.append(ctx.event.data["output"])

    with worker(app):
        [event_id] = fanout.send(Event(name="app/produce"))
        run = fanout.wait_for_run(only_run(fanout, event_id).id, timeout=15)
        wait_until(lambda: seen)

    assert run.status == "completed"
    [output] = seen
    assert sealed(output) and encryption.decrypt(output) == {"value": value}
    assert value not in redis_text(redis_client)


# -- key rotation ----------------------------------------------------------------------
def declare_rotating(fanout: Fanout, seen: list[Any], values: tuple[str, str]) -> None:
    """A run that checkpoints a step, then parks until ``app/rotate.resume``: a worker
    with other keys finishes it."""

    @fanout.function(id="rotate", event="app/rotate", retries=FAST)
    def rotate(ctx):
        before = ctx.step.run("before", lambda: {"card": values[0]})
        seen.append(before)
        ctx.step.wait_for_event("resume", event="app/rotate.resume", match="data.n",
                                timeout=30)
        after = ctx.step.run("after", lambda: {"card": values[1]})
        return {"before": before, "after": after}


def park_with_key(app: Celery, key: str, worker: Any, seen: list[Any],
                  values: tuple[str, str]) -> str:
    old = Fanout(app, middleware=[EncryptionMiddleware(key)])
    declare_rotating(old, seen, values)
    with worker(app):
        [event_id] = old.send(Event(name="app/rotate", data={"n": 1}))
        run_id = only_run(old, event_id).id
        wait_until(lambda: old.get_run(run_id).status == "waiting")
    return run_id


def test_data_written_with_the_old_key_is_read_through_a_fallback_key(
        app, new_app, worker, redis_client, key_a, key_b):
    values = (secret("old"), secret("new"))
    seen: list[Any] = []
    run_id = park_with_key(app, key_a, worker, seen, values)

    rotated_app = new_app()
    rotated = Fanout(rotated_app, middleware=[EncryptionMiddleware(key_b,
                                                                   fallback_keys=[key_a])])
    declare_rotating(rotated, seen, values)
    with worker(rotated_app):
        rotated.send(Event(name="app/rotate.resume", data={"n": 1}))
        done = rotated.wait_for_run(run_id, timeout=15)

    assert done.status == "completed"
    assert seen == [{"card": values[0]}, {"card": values[0]}]  # replayed with key A
    before = raw_step(redis_client, rotated, run_id, "before")["output"]
    after = raw_step(redis_client, rotated, run_id, "after")["output"]
    assert open_with(key_a, before) == {"card": values[0]}
    with pytest.raises(InvalidToken):
        open_with(key_b, before)
    # New data is written with the new key only.
    assert open_with(key_b, after) == {"card": values[1]}
    with pytest.raises(InvalidToken):
        open_with(key_a, after)
    assert open_with(key_b, raw_output(redis_client, rotated, run_id)) == {
        "before": {"card": values[0]}, "after": {"card": values[1]}}
    assert values[0] not in redis_text(redis_client)


def test_removing_the_key_that_encrypted_a_step_fails_the_run_with_decryption_error(
        app, new_app, worker, key_a, key_b):
    values = (secret("old"), secret("new"))
    seen: list[Any] = []
    run_id = park_with_key(app, key_a, worker, seen, values)

    rotated_app = new_app()
    rotated = Fanout(rotated_app, middleware=[EncryptionMiddleware(key_b)])
    declare_rotating(rotated, seen, values)
    with worker(rotated_app):
        rotated.send(Event(name="app/rotate.resume", data={"n": 1}))
        done = rotated.wait_for_run(run_id, timeout=15)

    assert done.status == "failed"
    assert done.error["type"] == "DecryptionError"
    assert "key" in done.error["message"]
    assert done.attempt == 0  # no handler retries: the keys will not change in between
    assert len(seen) == 1  # the handler never saw the undecryptable value
    assert [s.id for s in done.steps] == ["before", "resume"]


def test_an_event_encrypted_with_a_removed_key_fails_the_run(app, new_app, worker, key_a,
                                                            key_b):
    called: list[Any] = []
    old = Fanout(app, middleware=[EncryptionMiddleware(key_a)])

    @old.function(id="inbox", event="app/inbox")
    def inbox_old(ctx):
        called.append(ctx.event.data)

    [event_id] = old.send(Event(name="app/inbox", data={"encrypted": "hello"}))

    rotated_app = new_app()
    rotated = Fanout(rotated_app, middleware=[EncryptionMiddleware(key_b)])

    @rotated.function(id="inbox", event="app/inbox", retries=FAST)
    def inbox(ctx):
        called.append(ctx.event.data)

    with worker(rotated_app):
        done = rotated.wait_for_run(only_run(rotated, event_id).id, timeout=15)

    assert done.status == "failed"
    assert done.error["type"] == "DecryptionError"
    assert called == []


def test_decryption_error_is_a_fanout_error():
    assert issubclass(DecryptionError, FanoutError)
    sealed_value = EncryptionMiddleware(Fernet.generate_key()).encrypt({"a": 1})
    with pytest.raises(DecryptionError, match="key"):
        EncryptionMiddleware(Fernet.generate_key()).decrypt(sealed_value)


@pytest.mark.parametrize("key", ["not-a-key", b"short", "", None, 42])
def test_a_bad_key_is_a_configuration_error(key):
    with pytest.raises(ConfigurationError, match="generate_key"):
        EncryptionMiddleware(key)


def test_a_bad_fallback_key_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        EncryptionMiddleware(Fernet.generate_key(), fallback_keys=["nope"])


def test_generated_keys_work_as_str_and_bytes():
    key = EncryptionMiddleware.generate_key()
    value = {"x": [1, "two"]}
    assert EncryptionMiddleware(key.encode()).decrypt(EncryptionMiddleware(key).encrypt(value)) \
        == value
