"""Every Celery worker pool runs durable functions: prefork, threads, solo and gevent each
carry steps, a sleep, a wait for an event, parallel steps, a fan-out and a cancel, on a
real worker subprocess (``tests/apps/pools_app.py``). Eventlet is refused at start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from procs import REPO_ROOT, wait_for, worker_process

from fanout_celery import Event
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

POOLS_APP = "tests.apps.pools_app"


def run_id_of(function: str, event_id: str) -> str:
    return derived_id(function, event_id)


def waits_at(fanout, run_id: str, step_id: str) -> bool:
    """Whether the run is parked on its wait ``step_id``."""
    run = fanout.get_run(run_id)
    return run is not None and run.status == "waiting" and any(
        s.id == step_id for s in run.steps)


def count(client, step: str) -> int:
    return int(client.get(f"pools:count:{step}") or 0)


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo", "gevent"])
def test_each_pool_runs_steps_sleeps_waits_parallel_steps_fan_out_and_cancels(
        pool, redis_url, redis_client, fanout):
    with worker_process(redis_url, app=POOLS_APP, pool=pool, concurrency=3) as worker:
        [start] = fanout.send(Event(name="pools/start", data={"key": "k1"}))
        [hold] = fanout.send(Event(name="pools/hold", data={}))
        flow_id = run_id_of("pools-flow", start)
        held_id = run_id_of("pools-cancelled", hold)

        wait_for(lambda: waits_at(fanout, flow_id, "go"), 30, "the flow to wait for go")
        fanout.send(Event(name="pools/go", data={"key": "k1", "answer": 42}))
        wait_for(lambda: waits_at(fanout, held_id, "never"), 30, "the held run to wait")
        fanout.cancel(held_id, reason="by the test")

        done = fanout.wait_for_run(flow_id, timeout=60)
        cancelled = fanout.wait_for_run(held_id, timeout=30)
        tree = fanout.run_tree(flow_id)
        fan = [fanout.wait_for_run(node.run.id, timeout=30) for node in tree.children["fan"]]
        assert worker.alive()

    assert done.status == "completed", done.error
    assert done.output == {"go": 42, "branches": [0, 10, 20]}
    assert {s.id for s in done.steps} >= {"first", "nap", "go", "group", "fan", "last"}
    assert sorted((r.function_id, r.status, r.output) for r in fan) == [
        ("pools-fan-a", "completed", "a:k1"), ("pools-fan-b", "completed", "b:k1")]
    assert cancelled.status == "cancelled"
    # each checkpointed step ran once
    for step in ("first", "last", "branch0", "branch1", "branch2", "fan-a", "fan-b", "held"):
        assert count(redis_client, step) == 1, step
    assert count(redis_client, "held-after") == 0


def test_a_worker_on_the_eventlet_pool_refuses_to_start_and_says_why(redis_url):
    env = {**os.environ, "FANOUT_TEST_REDIS_URL": redis_url,
           "FANOUT_TEST_WORKER_TOKEN": "eventlet", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", POOLS_APP, "worker", "--pool=eventlet",
         "-l", "warning", "--without-mingle", "--without-gossip"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        "fanout_celery does not support the eventlet pool (deprecated upstream): start "
        "this worker with --pool prefork, threads, solo or gevent")
    assert "Traceback" not in done.stderr + done.stdout
