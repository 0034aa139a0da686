"""Killed workers: a run resumes from its last checkpoint in another process.

The workers are real ``celery worker`` subprocesses of ``tests/apps/crash_app.py``
(lease 2 s, pump every 0.05 s, broker visibility timeout 1 h), so a run can only come
back through its fanout lease expiring and a pump re-enqueueing it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
from procs import IN_S3, RELEASE, STEPS, count_key, wait_for, worker_process

from fanout_celery import Fanout

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

# Far below the broker's 1 h visibility timeout: only lease expiry + pump can be this fast.
RESUME_WITHIN = 30.0


def executions(client: redis.Redis) -> dict[str, int]:
    return {step: int(client.get(count_key(step)) or 0) for step in STEPS}


def test_a_run_resumes_from_its_last_checkpoint_after_its_worker_is_sigkilled(
        redis_url: str, redis_client: redis.Redis, fanout: Fanout) -> None:
    with worker_process(redis_url, pool="threads", concurrency=4) as first:
        run_id = fanout.invoke("crash-steps")
        in_s3 = wait_for(lambda: redis_client.get(IN_S3), 20, "the run to reach s3")
        assert int(in_s3) == first.pid
        first.kill()
        killed_at = time.monotonic()
    assert not first.alive()
    stranded = fanout.get_run(run_id)
    assert stranded is not None and stranded.status == "running"
    assert [s.id for s in stranded.steps] == ["s1", "s2"]

    with worker_process(redis_url, pool="threads", concurrency=4) as second:
        redis_client.set(RELEASE, 1)
        done = fanout.wait_for_run(run_id, timeout=RESUME_WITHIN)
        elapsed = time.monotonic() - killed_at

    assert done.status == "completed"
    assert elapsed < RESUME_WITHIN
    counts = executions(redis_client)
    # Checkpointed bodies never ran again; s3 was executing (not checkpointed) when killed.
    assert counts["s1"] == counts["s2"] == 1
    assert counts["s3"] <= 2
    assert counts["s4"] == counts["s5"] == 1
    # s1 and s2 were replayed from their memo: their outputs still name the dead worker.
    assert done.output == {"s1": first.pid, "s2": first.pid, "s3": second.pid,
                           "s4": second.pid, "s5": second.pid}
    assert [s.id for s in done.steps] == list(STEPS)
    assert all(s.status == "completed" and s.attempts == 1 for s in done.steps)


def test_a_run_resumes_after_its_prefork_pool_process_is_sigkilled(
        redis_url: str, redis_client: redis.Redis, fanout: Fanout) -> None:
    with worker_process(redis_url, pool="prefork", concurrency=2) as worker:
        run_id = fanout.invoke("crash-steps")
        child = int(wait_for(lambda: redis_client.get(IN_S3), 20, "the run to reach s3"))
        assert child != worker.pid  # the step runs in a pool process, not the main one
        redis_client.delete(IN_S3)
        os.kill(child, signal.SIGKILL)
        killed_at = time.monotonic()

        resumed = int(wait_for(lambda: redis_client.get(IN_S3), RESUME_WITHIN,
                               "another pool process to resume the run at s3"))
        assert resumed not in (child, worker.pid)
        redis_client.set(RELEASE, 1)
        done = fanout.wait_for_run(run_id, timeout=RESUME_WITHIN)
        elapsed = time.monotonic() - killed_at
        assert worker.alive()

    assert done.status == "completed"
    assert elapsed < RESUME_WITHIN
    counts = executions(redis_client)
    assert counts["s1"] == counts["s2"] == 1
    assert counts["s3"] == 2  # once in the killed process, once after the resume
    assert counts["s4"] == counts["s5"] == 1
    assert done.output["s1"] == done.output["s2"] == child
    assert done.output["s3"] == done.output["s5"] == resumed
