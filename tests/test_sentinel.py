"""fanout's state behind Redis Sentinel: a real primary, replica and three Sentinels
(``tests/sentinel.py``), real worker subprocesses, and a failover (the primary's process
SIGKILLed, the Sentinels promoting the replica) while runs execute."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from procs import wait_for, worker_process
from sentinel import SERVICE, SentinelSetup, sentinel_setup

from fanout_celery import Fanout
from fanout_celery.model.events import derived_id
from fanout_celery.model.records import FINAL

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

APP = "tests.apps.sentinel_app"
STEPS = ("s1", "s2", "s3", "s4")


@pytest.fixture
def sentinels(redis_server: str) -> Iterator[SentinelSetup]:
    with sentinel_setup() as setup:
        yield setup


def sender_for(broker: str, setup: SentinelSetup, **options: Any) -> Fanout:
    app = Celery("sentinel-sender", broker=broker, set_as_current=False)
    app.conf.update(result_backend=None, fanout_redis_url=setup.url,
                    fanout_redis_options={"service_name": SERVICE, **options})
    return Fanout(app)


def state_env(setup: SentinelSetup, **options: Any) -> dict[str, str]:
    return {"FANOUT_TEST_STATE_URL": setup.url,
            "FANOUT_TEST_STATE_OPTIONS": json.dumps({"service_name": SERVICE, **options})}


def test_runs_execute_with_their_state_behind_sentinel(redis_url, sentinels):
    sender = sender_for(redis_url, sentinels)
    with worker_process(redis_url, app=APP, env=state_env(sentinels)):
        event_ids = sender.send([{"name": "sentinel/go"} for _ in range(5)])
        runs = [sender.wait_for_run(derived_id("sentinel-steps", e), timeout=30)
                for e in event_ids]
    assert [r.status for r in runs] == ["completed"] * 5
    # The state is on the Sentinels' primary, not on the broker's Redis.
    primary = redis.Redis(port=sentinels.master_port(), decode_responses=True)
    assert primary.exists(f"fanout:{{{runs[0].id}}}:run")
    assert not redis.Redis.from_url(redis_url).exists(f"fanout:{{{runs[0].id}}}:run")
    primary.close()
    sender.app.close()


@pytest.mark.parametrize("options", [{}, {"wait_replicas": 1, "wait_timeout": 1.0}],
                         ids=["async-replication", "wait-replicas"])
def test_a_sentinel_failover_while_runs_execute_loses_no_run(redis_url, redis_client,
                                                             sentinels, options):
    sender = sender_for(redis_url, sentinels, **options)
    env = state_env(sentinels, **options)
    with worker_process(redis_url, app=APP, env=env, concurrency=8), \
            worker_process(redis_url, app=APP, env=env, concurrency=8):
        event_ids = sender.send([{"name": "sentinel/go"} for _ in range(80)])
        run_ids = [derived_id("sentinel-steps", e) for e in event_ids]
        wait_for(lambda: len(redis_client.keys("sentinel:acked:*:s2")) >= 20, 30,
                 "a quarter of the runs to pass s2")
        killed = sentinels.kill_primary()
        killed_at = time.monotonic()
        # The Sentinels promote the replica; the old primary comes back as its replica,
        # so a write can be confirmed by a replica again (wait_replicas).
        wait_for(lambda: sentinels.master_port() != killed.port, 30, "a new primary")
        promoted_after = time.monotonic() - killed_at
        killed.restart()

        seen: list[Any] = []

        def all_final() -> bool:
            try:
                seen[:] = sender.store.statuses(run_ids)
            except redis.RedisError:
                return False
            return all(s in FINAL for s in seen)

        try:
            wait_for(all_final, 90, "every run to end")
        except AssertionError:
            stuck = [(rid, st) for rid, st in zip(run_ids, seen, strict=True)
                     if st not in FINAL]
            details = [f"{rid} {st} {sender.store.inspect_run(rid)}" for rid, st in stuck[:5]]
            raise AssertionError(f"{len(stuck)} runs not final: {Counter(seen)}\n"
                                 + "\n".join(details)) from None
    runs = [sender.get_run(rid) for rid in run_ids]
    lost = [rid for rid, run in zip(run_ids, runs, strict=True)
            if run is None or run.status != "completed"]
    repeated = [key for key in redis_client.keys("sentinel:acked:*")
                if redis_client.scard(key) > 1]
    reexecuted = sum(max(redis_client.llen(key) - 1, 0)
                     for key in redis_client.keys("sentinel:exec:*"))
    print(f"\nsentinel failover ({'+'.join(options) or 'async replication'}): runs=80 "
          f"lost={len(lost)} acknowledged-steps-repeated={len(repeated)} "
          f"step-bodies-re-executed={reexecuted} promoted-after={promoted_after:.1f}s")
    assert lost == []
    if options.get("wait_replicas"):
        # Every acknowledged checkpoint was on the replica that became the primary.
        assert repeated == []
    sender.app.close()
