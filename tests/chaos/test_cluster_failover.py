"""A master of the Redis Cluster that holds fanout's state fails over in the middle of a
fan-out: a manual ``CLUSTER FAILOVER`` (what an operator runs to take a master down for
maintenance) or its process SIGKILLed (its replica takes over after the node timeout).
The cluster is the test's own (3 masters, a replica each); the broker is the session's
Redis; two prefork workers of ``tests/apps/chaos_app.py`` are not restarted: they follow
the new master by themselves. The sender retries the same event ids while the slots of
the failed master are unavailable. A third case moves every slot of a master to another
while runs execute in them (resharding: ``ASK`` redirections, ``TRYAGAIN`` for scripts
whose keys are split between the two): the clients follow without surfacing an error to
a handler."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from celery import Celery
from chaos_kit import (
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
from procs import wait_for
from redis.exceptions import RedisClusterException, RedisError

from fanout_celery import Fanout
from fanout_celery.devtools.cluster import HOST, LocalCluster
from fanout_celery.devtools.resp import command, info
from fanout_celery.store.redis.keys import key_slot

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RATE = 10.0  # parent events sent per second
RETRYABLE = (RedisError, RedisClusterException, OSError)


def scan_keys(port: int) -> list[str]:
    """Every key a node holds (its own slots only)."""
    keys: list[str] = []
    cursor = "0"
    while True:
        cursor, batch = command(HOST, port, "SCAN", cursor, "COUNT", 1000, timeout=5.0)
        keys.extend(batch)
        if cursor == "0":
            return keys


def replica_of(cluster: LocalCluster, master_port: int) -> int:
    """The port of a replica of the master on ``master_port``."""
    for node in cluster.nodes:
        if node.running and node.port != master_port:
            role = info(HOST, node.port, "replication")
            if role.get("role") == "slave" and int(role.get("master_port", 0)) == master_port:
                return node.port
    raise AssertionError(f"no replica of {master_port}")


@pytest.mark.timeout(int(300 + 120 * scale()))
@pytest.mark.parametrize("how", ["cluster-failover", "sigkill", "reshard"])
def test_a_master_failing_over_mid_fan_out_loses_no_run(redis_url, redis_client, monkeypatch,
                                                        chaos_report, how):
    parents = scaled(150)
    events = parent_events(f"cf-{how}", parents)
    sent: list[str] = []
    retries = 0
    failure: list[BaseException] = []
    with LocalCluster(masters=3, replicas=1) as cluster:
        monkeypatch.setenv("FANOUT_TEST_STATE_URL", cluster.url)  # for the workers
        app = Celery("cluster-sender", broker=redis_url, set_as_current=False)
        app.conf.update(result_backend=None, task_default_queue="celery",
                        fanout_redis_url=cluster.url, fanout_redispatch_seconds=10)
        sender = Fanout(app)

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
                        except RETRYABLE:
                            if time.monotonic() > deadline:
                                raise
                            retries += 1
                            time.sleep(0.2)
            except BaseException as exc:  # reported by the test thread
                failure.append(exc)

        with contextlib.ExitStack() as stack:
            stack.callback(app.close)
            pool = WorkerPool(redis_url, stack, count=2, concurrency=3)
            pids = [w.pid for w in pool.workers]
            thread = threading.Thread(target=send, name="chaos-sender", daemon=True)
            thread.start()
            wait_for(lambda: len(sent) >= parents // 3, 60, "a third of the events sent")
            victim = cluster.masters()[0]
            failed_at = time.monotonic()
            if how == "reshard":
                # Every slot of the master that holds keys moves to another master, a
                # few keys at a time, while runs execute in them.
                target = cluster.masters()[1]
                slots = sorted({key_slot(k) for k in scan_keys(victim.port)})
                moved = sum(cluster.migrate_slot(slot, target, batch=5, pause=0.02)
                            for slot in slots)
                assert moved and not scan_keys(victim.port)
                what = f"resharding of {len(slots)} slots ({moved} keys) from one of 3 masters"
            else:
                replica = replica_of(cluster, victim.port)
                if how == "cluster-failover":
                    # Coordinated: the master stops writes until its replica caught up.
                    command(HOST, replica, "CLUSTER", "FAILOVER", timeout=5.0)
                else:
                    cluster.kill(victim)
                wait_for(lambda: info(HOST, replica, "replication").get("role") == "master",
                         60, "the replica to take over")
                what = f"{how} of one of 3 masters"
            took = time.monotonic() - failed_at
            thread.join()
            assert not failure, f"sending failed: {failure[0]!r}"
            drained = wait_until_final(
                redis_client, sender,
                {PARENT_FUNCTION: parents, CHILD_FUNCTION: parents * CHILDREN},
                timeout=90 + 10 * scale())
            assert pool.alive() and [w.pid for w in pool.workers] == pids
            found = audit(sender, redis_client, sent, single_attempts=False)

    chaos_report(
        f"{what} after {took:.1f}s: runs={found.runs} steps={found.steps} "
        f"step-body executions={found.executions} re-executions={found.reexecutions} "
        f"sender retries={retries} lost={len(found.problems)} "
        f"(all final {drained:.1f}s after the last event was sent)")
    assert len(sent) == parents
    assert not found.problems, "\n".join(found.problems[:20])
    assert found.runs == parents * (1 + CHILDREN)
