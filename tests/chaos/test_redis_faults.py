"""Faults that used to stop workers or strand runs, against real worker subprocesses and
real redis-server processes: a worker dying as a cancel meets a park, Redis restarted
without persistence, Redis out of memory, and a failover behind a stable address."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from procs import wait_for, worker_process
from proxy import SwitchableProxy
from redis.backoff import NoBackoff
from redis.retry import Retry

from fanout_celery import Event, Fanout, NoSubscriptionsError
from fanout_celery.devtools.embedded import EmbeddedRedis
from fanout_celery.model.events import derived_id
from fanout_celery.store.port import Started

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

FAULTS_APP = "tests.apps.faults_app"
WORK_EVENT = "faults/work"


def sender_for(url: str, **conf: Any) -> tuple[Celery, Fanout]:
    """A sending process: it declares no function (the workers publish theirs)."""
    app = Celery("fault-sender", broker=url, set_as_current=False)
    app.conf.update(result_backend=None, task_default_queue="celery", **conf)
    return app, Fanout(app)


def send_retrying(fanout: Fanout, event: dict[str, Any], timeout: float) -> list[str]:
    """Send as a careful sender does while Redis is away: retry the same event id."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fanout.send(event)
        except (NoSubscriptionsError, redis.exceptions.RedisError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EmbeddedRedis]:
    args = getattr(request, "param", [])
    with EmbeddedRedis(data_dir=tmp_path / "redis", extra_args=args) as embedded:
        yield embedded


# -- 3 --------------------------------------------------------------------------------
def test_a_cancel_met_while_parking_ends_cancelled_even_if_the_worker_dies_there(
        server: EmbeddedRedis, chaos_report: Any) -> None:
    app, sender = sender_for(server.url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    with worker_process(server.url, app=FAULTS_APP, pool="prefork", concurrency=2) as w:
        [event_id] = sender.send({"name": "faults/cancel-park"})
        run_id = derived_id("fault-cancel-park", event_id)
        wait_for(lambda: client.get("faults:crashed"), 20, "the worker to die at the park")
        run = sender.wait_for_run(run_id, timeout=30)
        assert w.alive()
    assert run.status == "cancelled"
    assert run.error["message"] == "cancelled while it ran"
    chaos_report(f"runs=1 faults=1 pool process died between park and finish "
                 f"executions={run.executions} lost=0 duplicated=0 status={run.status}")
    client.close()
    app.close()


# -- 5 --------------------------------------------------------------------------------
def test_a_sender_that_finds_no_published_function_says_so(redis_url: str) -> None:
    app, sender = sender_for(redis_url)
    with pytest.raises(NoSubscriptionsError, match="no functions are published"):
        sender.send(Event(name="faults/anything"))
    assert sender.list_events() == []
    app.close()


def test_workers_publish_their_functions_again_at_once_after_redis_lost_its_data(
        server: EmbeddedRedis, chaos_report: Any) -> None:
    app, sender = sender_for(server.url)
    with worker_process(server.url, app=FAULTS_APP) as w:
        server.restart()  # no persistence: every key is gone
        restarted = time.monotonic()
        [event_id] = send_retrying(sender, {"name": WORK_EVENT, "id": "after-restart"}, 20)
        run = sender.wait_for_run(derived_id("fault-work", event_id), timeout=20)
        took = time.monotonic() - restarted
        assert w.alive()
    assert run.status == "completed"
    assert took < 10, f"the worker took {took:.1f}s to route events again"
    chaos_report(f"runs=1 faults=1 restart without persistence: an event sent after it "
                 f"ran {took:.1f}s after the restart lost=0 duplicated=0")
    app.close()


# -- 7 --------------------------------------------------------------------------------
@pytest.mark.parametrize("server", [["--maxmemory", "40mb", "--maxmemory-policy",
                                     "noeviction"]], indirect=True)
def test_workers_survive_redis_out_of_memory_and_resume_once_memory_is_back(
        server: EmbeddedRedis, chaos_report: Any) -> None:
    app, sender = sender_for(server.url)
    client = redis.Redis.from_url(server.url, decode_responses=True)
    with worker_process(server.url, app=FAULTS_APP, pool="prefork", concurrency=2) as w:
        [event_id] = sender.send({"name": "faults/fan-out", "data": {"n": 20, "seconds": 0.3}})
        parent = sender.wait_for_run(derived_id("fault-fan-out", event_id), timeout=30)
        # Fill Redis while the children execute and acknowledge their messages.
        junk = 0
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            while True:
                client.set(f"junk:{junk}", "x" * 1_000_000)
                junk += 1
        time.sleep(3)
        client.delete(*(f"junk:{i}" for i in range(junk)))
        children = [sender.wait_for_run(derived_id("fault-work", eid), timeout=60)
                    for eid in parent.steps[0].output]
        assert w.alive()
        log = w.log_tail(1_000_000)
    assert {c.status for c in children} == {"completed"}
    assert "Unrecoverable error" not in log
    refused = log.count("Couldn't ack")
    chaos_report(f"runs={len(children) + 1} faults=1 out of memory for 3s "
                 f"(acks refused {refused}) worker alive lost=0 duplicated=0")
    client.close()
    app.close()


# -- 8 --------------------------------------------------------------------------------
def role(url: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return str(client.info("replication")["role"])
    finally:
        client.close()


@contextlib.contextmanager
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis,
                                                           redis.Redis]]:
    """Two redis-server processes, the second replicating the first (in sync), and a
    client of the replica."""
    with EmbeddedRedis(data_dir=tmp_path / "primary") as primary, \
            EmbeddedRedis(data_dir=tmp_path / "replica") as replica:
        rc = redis.Redis.from_url(replica.url, decode_responses=True)
        try:
            rc.replicaof("127.0.0.1", primary.port)
            wait_for(lambda: rc.info("replication").get("master_link_status") == "up", 20,
                     "the replica to sync")
            yield primary, replica, rc
        finally:
            rc.close()


def test_a_script_refused_by_a_replica_runs_again_once_the_replica_leads(
        tmp_path: Path) -> None:
    """A script's write refused with READONLY (Redis 6.2 words it as a plain
    ResponseError, which the client's retry does not cover) is tried again, and succeeds
    once the server leads: a worker starting a run during a failover does not fail the
    run's message. The client here retries nothing itself, so that every refusal reaches
    the script call."""
    from fanout_celery.store.redis import RedisStore

    refused = threading.Event()

    class Watched(redis.Redis):  # type: ignore[type-arg]
        def evalsha(self, *args: Any) -> Any:
            try:
                return super().evalsha(*args)
            except redis.exceptions.ResponseError as exc:
                if isinstance(exc, redis.exceptions.ReadOnlyError) or "READONLY" in str(exc):
                    refused.set()
                raise

    with primary_and_replica(tmp_path) as (primary, replica, rc):
        app, sender = sender_for(primary.url)

        @sender.function("script-retry", event="faults/script-retry")
        def handler(ctx: Any) -> None:
            return None

        run_id = sender.invoke("script-retry", {})
        pc = redis.Redis.from_url(primary.url, decode_responses=True)
        pc.wait(1, 5000)
        on_replica = RedisStore(replica.url, client=Watched.from_url(
            replica.url, decode_responses=True, retry=Retry(NoBackoff(), 0)))
        outcome: list[Any] = []
        starting = threading.Thread(target=lambda: outcome.append(
            on_replica.start(run_id, "t" * 32, now=int(time.time() * 1000),
                             lease_exp=int(time.time() * 1000) + 60_000)))
        try:
            starting.start()
            assert refused.wait(10), "the replica never refused the script"
            rc.replicaof("NO", "ONE")  # the replica takes over while the call backs off
            starting.join(30)
            assert not starting.is_alive()
        finally:
            on_replica.close()
            pc.close()
            app.close()
    [started] = outcome
    assert isinstance(started, Started)
    assert started.run["status"] == "running"


def test_a_failover_behind_a_stable_address_loses_no_run_and_stops_no_worker(
        tmp_path: Path, chaos_report: Any) -> None:
    with primary_and_replica(tmp_path) as (primary, replica, rc):
        address = SwitchableProxy(primary.port)
        app, sender = sender_for(address.url)
        client = redis.Redis.from_url(address.url, decode_responses=True)
        try:
            with worker_process(address.url, app=FAULTS_APP, pool="prefork",
                                concurrency=2) as w:
                [event_id] = sender.send({"name": "faults/fan-out",
                                          "data": {"n": 40, "seconds": 0.1}})
                parent = sender.wait_for_run(derived_id("fault-fan-out", event_id), 30)
                # Mid fan-out: the primary hands over to its replica, and the stable
                # address follows (new connections reach the new primary).
                pc = redis.Redis.from_url(primary.url, decode_responses=True)
                pc.execute_command("FAILOVER", "TIMEOUT", "5000")
                wait_for(lambda: role(replica.url) == "master", 20, "the replica to lead")
                address.switch(replica.port)
                pc.close()
                children = [sender.wait_for_run(derived_id("fault-work", eid), timeout=60)
                            for eid in parent.steps[0].output]
                counts = [int(client.get(f"faults:work:{c.id}") or 0) for c in children]
                assert w.alive()
                log = w.log_tail(1_000_000)
        finally:
            client.close()
            app.close()
            address.close()
    assert {c.status for c in children} == {"completed"}
    assert len(children) == 40
    # Each step checkpointed once (a body may run again only if its worker lost it).
    assert all(c.steps[0].attempts == 1 for c in children)
    assert min(counts) >= 1
    assert "Unrecoverable error" not in log
    chaos_report(f"runs={len(children) + 1} faults=1 FAILOVER behind a switched address "
                 f"step-body executions={sum(counts)} re-executions={sum(counts) - len(counts)}"
                 f" worker alive lost=0 duplicated=0")
