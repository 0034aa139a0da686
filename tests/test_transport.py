"""fanout's Redis transport for the broker: kombu's, with the replies of a full or
failing-over Redis counted as connection errors, and a guard on collected channels.

These tests fail if a kombu upgrade moves what the transport relies on."""

from __future__ import annotations

import pytest
import redis
from celery import Celery
from kombu.transport import redis as kombu_redis

from fanout_celery import Fanout
from fanout_celery.integration.transport import TRANSPORT, Channel, Transport


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
