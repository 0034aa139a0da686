"""fanout's Redis transport for the broker: kombu's, with the replies of a full or
failing-over Redis counted as connection errors, and a guard on collected channels.

These tests fail if a kombu upgrade moves what the transport relies on."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from fanout_celery import Fanout
from fanout_celery.integration.publisher import (
    BODY,
    PARENT,
    ROOT,
    TAG,
    TID,
    CeleryBroker,
    Template,
)
from fanout_celery.integration.transport import TRANSPORT, Channel, Transport
from fanout_celery.model.records import Route, RunMessage


@pytest.mark.parametrize("error", [
    redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError,
    redis.exceptions.BusyLoadingError, redis.exceptions.ConnectionError,
])
def test_failover_and_out_of_memory_replies_are_connection_errors(error: type) -> None:
    assert issubclass(error, Transport.connection_errors)
    # kombu's own transport does not count them (else this transport would be needless).
    if error in (redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError):
        assert not issubclass(error, kombu_redis.Transport.connection_errors)


def test_a_redis_broker_gets_the_transport_when_fanout_starts(redis_url: str) -> None:
    app = Celery("transport", broker=redis_url, set_as_current=False)
    app.conf.update(result_backend=None)
    fanout = Fanout(app)
    fanout.engine  # noqa: B018 - building the engine wires the broker
    assert app.conf.broker_transport == TRANSPORT
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=3)
        assert isinstance(connection.transport, Transport)
        assert isinstance(connection.default_channel, Channel)
    app.close()


@pytest.mark.parametrize("conf", [
    {"broker_url": "amqp://guest@localhost//"},
    {"broker_transport": "kombu.transport.redis:Transport"},
    {"fanout_broker_transport": False},
], ids=["amqp", "transport-chosen", "opted-out"])
def test_other_brokers_and_chosen_transports_are_left_alone(redis_url: str,
                                                           conf: dict[str, object]) -> None:
    app = Celery("transport", broker=redis_url, set_as_current=False)
    app.conf.update(result_backend=None, fanout_redis_url=redis_url, **conf)
    fanout = Fanout(app)
    fanout.engine  # noqa: B018
    assert app.conf.broker_transport == conf.get("broker_transport")
    app.close()


def test_a_collected_channel_raises_a_connection_error_not_attribute_error(
        redis_url: str) -> None:
    app = Celery("guard", broker=redis_url, set_as_current=False)
    app.conf.broker_transport = TRANSPORT
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=3)
        channel = connection.default_channel
        # What the consumer does with a broken connection: it closes the channels and
        # detaches the transport; a later ack or restore must fail as a connection error.
        connection.collect()
        with pytest.raises(ConnectionError):
            channel.basic_ack("delivery-tag")
        with pytest.raises(ConnectionError):
            channel.qos.restore_unacked()
    app.close()


@pytest.mark.parametrize("parent", [("", ""), ("p-task", "r-task")], ids=["root", "child"])
def test_the_fast_path_publishes_the_message_celery_would(redis_url: str,
                                                         parent: tuple[str, str]) -> None:
    """A run's message built from the template is Celery's own (``send_task``), but for
    the ids Celery draws at random."""
    app = Celery("fast", broker=redis_url, set_as_current=False)
    app.conf.update(result_backend=None, task_ignore_result=True)
    client = redis.Redis.from_url(redis_url)
    route = Route("fanout.fast-fn", "fast-q", "app/ordered", *parent)
    message = RunMessage("0123456789abcdef0123456789abcdef", route)
    sent = []
    for fast in (True, False):
        broker = CeleryBroker(app, fast=fast)
        assert broker.fast is fast
        broker.publish([message])
        raw = client.rpop("fast-q")
        assert raw is not None and client.llen("fast-q") == 0
        sent.append(json.loads(raw))
    app.close()
    fast_msg, celery_msg = sent
    ids = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to"}
    for msg in sent:
        headers, props = msg["headers"], msg["properties"]
        assert headers["id"] == props["correlation_id"]
        assert headers["root_id"] == (parent[1] or headers["id"])
        assert headers["parent_id"] == (parent[0] or None)
        assert uuid.UUID(props["delivery_tag"]).version == 4
        assert uuid.UUID(headers["id"]).version == 4
    assert fast_msg["headers"]["id"] != celery_msg["headers"]["id"]

    def without_ids(msg: dict[str, Any]) -> dict[str, Any]:
        headers = {k: v for k, v in msg["headers"].items() if k not in ids}
        props = {k: v for k, v in msg["properties"].items() if k not in ids}
        props["delivery_info"] = {k: v for k, v in props["delivery_info"].items()
                                  if k in ("exchange", "routing_key")}
        return {**msg, "headers": headers, "properties": props,
                "body": json.loads(base64.b64decode(msg["body"]))}

    # The fast path says what the run task declares (ignore_result = True), which a
    # message from send_task leaves to the task.
    assert fast_msg["headers"].pop("ignore_result") is True
    # (None from Celery 5.6, False before: the run task decides either way)
    assert celery_msg["headers"].pop("ignore_result") in (None, False)
    assert without_ids(fast_msg) == without_ids(celery_msg)
    assert without_ids(fast_msg)["body"][0] == [message.run_id]


def test_a_template_fills_each_placeholder_once_in_one_pass() -> None:
    envelope = json.dumps({"a": [PARENT, TID, "@@rid@@"], "b": f"{ROOT}:{TID}",
                           "c": "@@event@@", "d": BODY, "e": TAG})
    # A value holding a placeholder is not filled again (a sequence of replaces would).
    filled = json.loads(Template(envelope).fill(
        ('"p"', "root", "tid", "tag", "run", TID, "body")))
    assert filled == {"a": ["p", "tid", "run"], "b": "root:tid", "c": TID, "d": "body",
                      "e": "tag"}
