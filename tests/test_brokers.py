"""What matters for a broker, on a Redis broker and on a real RabbitMQ (Debian's
``rabbitmq-server``): fan-out, retries, a sleep, a wait for an event, cron through beat,
and a killed worker. Workers and beat are real subprocesses of ``tests/apps/broker_app.py``;
fanout's state is in Redis either way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu import Connection
from procs import beat_process, wait_for, worker_process

from fanout_celery import Fanout
from fanout_celery.model.events import derived_id

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

APP = "tests.apps.broker_app"


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The broker URL: the test Redis itself, or a RabbitMQ with its queues emptied."""
    if request.param == "redis":
        return redis_url
    url: str = request.getfixturevalue("rabbitmq_url")
    with Connection(url) as conn:
        channel = conn.default_channel
        for queue in ("celery",):
            try:
                channel.queue_purge(queue)
            except Exception:  # not declared yet: nothing to purge
                channel = conn.channel()
    return url


@pytest.fixture
def sender(redis_url: str, broker: str) -> Iterator[Fanout]:
    """A process that declares no functions and sends through ``broker``."""
    app = Celery("broker-sender", broker=broker, set_as_current=False)
    state = os.environ.get("FANOUT_TEST_STATE_URL") or redis_url  # a cluster in cluster mode
    app.conf.update(fanout_redis_url=state, result_backend=None,
                    broker_connection_retry_on_startup=True)
    yield Fanout(app)
    app.close()


def counts(client: redis.Redis, pattern: str) -> dict[str, int]:
    return {key.split(":", 2)[2]: int(client.get(key)) for key in client.keys(pattern)}


def test_an_event_fans_out_to_every_subscriber_once(redis_url, broker, sender, redis_client):
    with worker_process(redis_url, app=APP, broker_url=broker) as worker:
        # The worker's banner names its transport: the broker under test (a Redis broker
        # runs on fanout's guarded subclass of kombu's Redis transport).
        transport = "amqp://" if broker.startswith("amqp") else \
            "fanout_celery.integration.transport:Transport://"
        assert f"transport:   {transport}" in worker.log_tail(100_000), worker.log_tail()
        event_ids = sender.send([{"name": "broker/signup", "data": {"n": n}}
                                 for n in range(20)])
        runs = [sender.wait_for_run(derived_id(fid, eid), timeout=30)
                for eid in event_ids for fid in ("fan-email", "fan-crm", "fan-audit")]
    assert [run.status for run in runs] == ["completed"] * 60
    executed = counts(redis_client, "broker:count:fan-*")
    assert len(executed) == 60 and set(executed.values()) == {1}


def test_a_step_retries_and_a_permanent_failure_fails_only_its_run(redis_url, broker, sender,
                                                                   redis_client):
    with worker_process(redis_url, app=APP, broker_url=broker):
        [event_id] = sender.send({"name": "broker/flaky"})
        flaky = sender.wait_for_run(derived_id("flaky", event_id), timeout=30)
        doomed = sender.wait_for_run(derived_id("doomed", event_id), timeout=30)
    assert (flaky.status, flaky.output) == ("completed", "ok")
    [call] = [s for s in flaky.steps if s.id == "call"]
    assert call.attempts == 3
    # The step before the retried one ran once; the retries re-ran only "call".
    assert counts(redis_client, "broker:count:flaky:*") == {"flaky:before": 1, "flaky:call": 3}
    assert doomed.status == "failed" and doomed.error["type"] == "NonRetriableError"


def test_a_sleeping_run_is_woken_through_the_broker(redis_url, broker, sender):
    with worker_process(redis_url, app=APP, broker_url=broker):
        [event_id] = sender.send({"name": "broker/nap"})
        run = sender.wait_for_run(derived_id("napper", event_id), timeout=30)
    assert (run.status, run.output) == ("completed", [1, 1])
    assert run.executions == 2  # the first attempt parked, the second resumed after it


def test_a_waiting_run_gets_its_event(redis_url, broker, sender):
    with worker_process(redis_url, app=APP, broker_url=broker):
        [order] = sender.send({"name": "broker/order", "data": {"order": "o-1"}})
        run_id = derived_id("payer", order)
        wait_for(lambda: (r := sender.get_run(run_id)) and r.status == "waiting", 30,
                 "the run to wait")
        sender.send([{"name": "broker/paid", "data": {"order": "o-2"}},
                     {"name": "broker/paid", "data": {"order": "o-1", "amount": 12}}])
        run = sender.wait_for_run(run_id, timeout=30)
    assert (run.status, run.output) == ("completed", {"order": "o-1", "amount": 12})


def test_beat_fires_a_cron_function_once_per_slot(redis_url, broker, redis_client):
    with worker_process(redis_url, app=APP, broker_url=broker), \
            beat_process(redis_url, app=APP, broker_url=broker), \
            beat_process(redis_url, app=APP, broker_url=broker):  # two beats at once
        wait_for(lambda: redis_client.llen("broker:ticks") >= 3, 40, "three cron firings")
    slots = [int(s) for s in redis_client.lrange("broker:ticks", 0, -1)]
    assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
    assert all(s % 2000 == 0 for s in slots)


def test_a_run_of_a_killed_worker_resumes_from_its_last_checkpoint(redis_url, broker, sender,
                                                                   redis_client):
    with worker_process(redis_url, app=APP, broker_url=broker) as first:
        [event_id] = sender.send({"name": "broker/block"})
        run_id = derived_id("broker-blocking", event_id)
        holder = wait_for(lambda: redis_client.get("broker:holding"), 30, "the hold step")
        assert int(holder) == first.pid
        first.kill()
    redis_client.delete("broker:holding")
    with worker_process(redis_url, app=APP, broker_url=broker) as second:
        wait_for(lambda: redis_client.get("broker:holding"), 30, "the run to resume")
        redis_client.set("broker:release", 1)
        run = sender.wait_for_run(run_id, timeout=30)
    assert run.status == "completed"
    assert run.output == {"before": first.pid, "hold": second.pid, "after": second.pid}
    executed = counts(redis_client, "broker:count:broker-blocking:*")
    # The checkpointed step never ran again; the one the kill interrupted ran twice.
    assert executed == {"broker-blocking:before": 1, "broker-blocking:hold": 2,
                        "broker-blocking:after": 1}
