"""A Redis restart in the middle of a fan-out loses nothing when Redis persists (AOF).

The Redis here is the broker and the fanout store at once, as in most deployments. It
runs with ``appendonly yes`` and is stopped (SIGTERM: Redis writes its AOF out) and
started again on the same port and data directory while events are being sent and runs
execute in two prefork workers of ``tests/apps/chaos_app.py``. The workers are not
restarted: they reconnect by themselves. The sender sees the outage as an exception from
``fanout.send`` and sends the same events again; their explicit ids make the resend
start nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest
import redis
from celery import Celery
from chaos_kit import (
    CHAOS_APP,
    CHILD_FUNCTION,
    CHILDREN,
    PARENT_FUNCTION,
    WorkerPool,
    audit,
    parent_events,
    scale,
    scaled,
    wait_until_final,
)
from procs import wait_for, worker_process

from fanout_celery import Fanout
from fanout_celery.embedded import EmbeddedRedis, find_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RATE = 10.0  # parent events sent per second
OUTAGE = 3.0  # seconds Redis stays down: longer than the 2 s lease of the chaos app
# What fanout.send raises while Redis is down: from the fanout store (redis-py) or from
# publishing the task messages (kombu). Both are safe to retry with the same event ids.
OUTAGE_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                 kombu.exceptions.OperationalError)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server with append-only persistence in a data directory of the test (so
    that stop() keeps it and start() loads it again). Skips without a redis-server
    binary, except in CI."""
    try:
        find_redis_server()
    except RuntimeError as exc:
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true but no redis-server is available: {exc}")
        pytest.skip(f"no redis-server available: {exc}")
    server = EmbeddedRedis(appendonly=True, data_dir=tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sender(aof_redis: EmbeddedRedis) -> Iterator[Fanout]:
    """The fanout of a process without functions (a web app), on the AOF Redis."""
    app = Celery("chaos-sender", broker=aof_redis.url, set_as_current=False)
    # fanout_redispatch_seconds as in tests/apps/chaos_app.py: a sender sets when a new
    # run is published again if the broker lost its message before it started.
    app.conf.update(result_backend=None, task_default_queue="celery",
                    broker_connection_retry_on_startup=True, fanout_redispatch_seconds=10)
    yield Fanout(app)
    app.close()


@pytest.mark.timeout(int(240 + 120 * scale()))
def test_a_redis_restart_mid_fan_out_loses_no_run_when_redis_persists_with_aof(
        aof_redis: EmbeddedRedis, sender: Fanout, chaos_report) -> None:
    parents = scaled(200)
    outages = scaled(1)
    events = parent_events("restart", parents)
    window = parents / RATE
    sent: list[str] = []
    retries = 0
    failure: list[BaseException] = []

    def send() -> None:
        nonlocal retries
        try:
            start = time.monotonic()
            for i in range(0, parents, 5):
                time.sleep(max(0.0, start + i / RATE - time.monotonic()))
                deadline = time.monotonic() + 60
                while True:
                    try:
                        sent.extend(sender.send(events[i:i + 5]))
                        break
                    except OUTAGE_ERRORS:
                        if time.monotonic() > deadline:
                            raise
                        retries += 1
                        time.sleep(0.2)
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    client = redis.Redis.from_url(aof_redis.url, decode_responses=True)

    def history_sizes() -> list[int]:
        return [len(sender.store.function_run_ids([f])) for f in (PARENT_FUNCTION, CHILD_FUNCTION)]

    with contextlib.ExitStack() as stack:
        stack.callback(client.close)
        pool = WorkerPool(aof_redis.url, stack, count=2, concurrency=3)
        pids = [w.pid for w in pool.workers]
        thread = threading.Thread(target=send, name="chaos-sender", daemon=True)
        t0 = time.monotonic()
        thread.start()
        for k in range(outages):
            time.sleep(max(0.0, t0 + window * (k + 0.5) / outages - time.monotonic()))
            before = history_sizes()
            aof_redis.stop()
            time.sleep(OUTAGE)  # the outage itself, not a wait for a condition
            aof_redis.start()
            # Every run created before the stop came back from the AOF.
            assert all(a >= b for a, b in zip(history_sizes(), before, strict=True))
        thread.join()
        assert not failure, f"sending failed: {failure[0]!r}"
        drained = wait_until_final(
            client, sender, {PARENT_FUNCTION: parents, CHILD_FUNCTION: parents * CHILDREN},
            timeout=90 + 10 * scale())
        # The same worker processes: they reconnected by themselves.
        assert pool.alive() and [w.pid for w in pool.workers] == pids

    found = audit(sender, client, sent, single_attempts=False)
    chaos_report(
        f"outages={outages} x {OUTAGE:.0f}s runs={found.runs} steps={found.steps} "
        f"step-body executions={found.executions} re-executions={found.reexecutions} "
        f"late starts={found.late_starts} "
        f"sender retries={retries} lost=0 duplicated=0 (all final {drained:.1f}s after "
        f"the last event was sent)")
    assert len(sent) == parents
    assert not found.problems, "\n".join(found.problems[:20])
    assert found.runs == parents * (1 + CHILDREN)


def test_a_worker_keeps_consuming_after_a_redis_restart_interrupts_a_running_task(
        aof_redis: EmbeddedRedis, sender: Fanout) -> None:
    """Regression: the late ack of a task that ran through the outage used to reach the
    closed channel and stop the worker's consumer for good (fanout_celery.integration.transport)."""
    client = redis.Redis.from_url(aof_redis.url, decode_responses=True)
    with worker_process(aof_redis.url, pool="prefork", concurrency=2, app=CHAOS_APP) as w:
        [first] = sender.send({"name": "chaos/slow", "data": {"seconds": 5}, "id": "slow-1"})
        wait_for(lambda: client.get("chaos:slow-started"), 20, "the slow step to start")
        aof_redis.stop()
        time.sleep(1)  # the outage itself, shorter than the 2 s lease
        aof_redis.start()
        [run] = sender.runs_for_event(first)
        assert sender.wait_for_run(run.id, timeout=40).status == "completed"
        # The task of the first run was acknowledged after the consumer reconnected; a
        # run sent now needs that consumer.
        [second] = sender.send({"name": "chaos/slow", "data": {"seconds": 0}, "id": "slow-2"})
        [run2] = sender.runs_for_event(second)
        assert sender.wait_for_run(run2.id, timeout=40).status == "completed"
        assert w.alive()
        assert "Unrecoverable error" not in w.log_tail(1_000_000)
    client.close()


@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_a_redis_restart_keeps_runs_and_event_ids_only_when_redis_persists(
        tmp_path: Path, appendonly: bool) -> None:
    try:
        find_redis_server()
    except RuntimeError as exc:
        pytest.skip(f"no redis-server available: {exc}")
    server = EmbeddedRedis(appendonly=appendonly, data_dir=tmp_path / "redis").start()
    app = Celery("persistence", broker=server.url, set_as_current=False)
    app.conf.update(result_backend=None, task_default_queue="celery")
    fanout = Fanout(app)

    @fanout.function("persisted", event="chaos/persisted")
    def persisted(ctx):
        return None

    event = {"name": "chaos/persisted", "data": {}, "id": "persisted-1"}
    try:
        fanout.send(event)
        [run] = fanout.runs_for_event("persisted-1")
        server.restart()
        kept = fanout.get_run(run.id)
        broker = redis.Redis.from_url(server.url)
        queued = broker.llen("celery")
        fanout.send(event)  # a sender retrying after the restart
        again = broker.llen("celery")
        broker.close()
    finally:
        app.close()
        server.stop()

    if appendonly:
        # The run, its queued message and the event id survive: the resend starts nothing.
        assert kept is not None and kept.status == "queued"
        assert (queued, again) == (1, 1)
    else:
        # Everything is gone: the run, its message, and the record that the event was
        # sent, so the resend creates the run (and its message) from scratch.
        assert kept is None
        assert (queued, again) == (0, 1)
