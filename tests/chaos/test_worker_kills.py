"""SIGKILLed pool processes and restarted workers lose no run and repeat no checkpoint.

Two prefork workers of ``tests/apps/chaos_app.py`` (lease 2 s, pump 0.05 s) run a fan-out:
each parent event starts a run of three steps that also sends two child events with
``step.send_event``; each child run has two steps. While the events are being sent, the
test SIGKILLs random pool processes and restarts whole workers (hard: SIGKILL of the
process group; warm: SIGTERM). Afterwards every run must be completed exactly once, and
a step body may have run twice only if the process that ran it first was killed.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

import pytest
import redis
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

from fanout_celery import Fanout

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RATE = 8.0  # parent events sent per second
CONCURRENCY = 3
REDISPATCH = 10  # fanout_redispatch_seconds of tests/apps/chaos_app.py


# Buffered checkpoints: the most step.run checkpoints one attempt holds unwritten (the
# parent's p1 and p2 before its send_event; a child's c1 and c2 before it ends).
BUFFERED_AT_MOST = 2


@pytest.mark.timeout(int(300 + 200 * scale()))
@pytest.mark.parametrize("checkpoints", ["durable", "buffered"])
def test_killed_pool_processes_and_restarted_workers_lose_no_run_and_repeat_no_checkpoint(
        redis_url: str, redis_client: redis.Redis, fanout: Fanout, chaos_report,
        monkeypatch: pytest.MonkeyPatch, checkpoints: str) -> None:
    monkeypatch.setenv("FANOUT_TEST_CHECKPOINTS", checkpoints)  # for the workers
    # Also the sender's: it sets when a new run is published again if it has not started.
    fanout.app.conf.fanout_redispatch_seconds = REDISPATCH
    parents = scaled(200)
    restarts = scaled(3)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    events = parent_events("kill", parents)
    sent: list[str] = []
    failure: list[BaseException] = []

    def send() -> None:
        try:
            start = time.monotonic()
            for i in range(0, parents, 4):
                time.sleep(max(0.0, start + i / RATE - time.monotonic()))
                sent.extend(fanout.send(events[i:i + 4]))
        except BaseException as exc:  # reported by the test thread
            failure.append(exc)

    with contextlib.ExitStack() as stack:
        pool = WorkerPool(redis_url, stack, count=2, concurrency=CONCURRENCY)
        sender = threading.Thread(target=send, name="chaos-sender", daemon=True)
        t0 = time.monotonic()
        sender.start()
        # Restarts are spread over the events sent (not the clock, which a loaded host
        # stretches); kills come every 0.2-0.8 s until the last event is sent.
        restart_after = [parents * (k + 1) // (restarts + 1) for k in range(restarts)]
        next_kill = t0 + rng.uniform(0.2, 0.8)
        while sender.is_alive() or restart_after:
            now = time.monotonic()
            if restart_after and len(sent) >= restart_after[0]:
                restart_after.pop(0)
                pool.restart(rng.randrange(len(pool.workers)),
                             hard=(pool.hard_restarts <= pool.warm_restarts))
            elif now >= next_kill:
                pool.kill_child(rng)
                next_kill = now + rng.uniform(0.2, 0.8)
            time.sleep(0.02)
        sender.join()
        chaos_seconds = time.monotonic() - t0
        assert not failure, f"sending failed: {failure[0]!r}"
        drained = wait_until_final(
            redis_client, fanout,
            {PARENT_FUNCTION: parents, CHILD_FUNCTION: parents * CHILDREN},
            timeout=60 + 10 * scale())
        assert pool.alive()

    found = audit(fanout, redis_client, sent)
    pool_kills = pool.child_kills + pool.hard_restarts * CONCURRENCY
    delays = found.resume_delays()
    resumed = (f"resumed within {delays[len(delays) // 2]:.1f}s (median), "
               f"{delays[-1]:.1f}s (max)" if delays else "nothing to resume")
    chaos_report(
        f"checkpoints={checkpoints} seed={seed} runs={found.runs} steps={found.steps} "
        f"step-body executions={found.executions} kills={pool.child_kills} pool processes "
        f"+ {pool.hard_restarts} whole workers ({pool_kills} pool processes in all) "
        f"restarts={pool.hard_restarts + pool.warm_restarts} ({pool.warm_restarts} warm) "
        f"re-executions={found.reexecutions} ({resumed}) late starts={found.late_starts} "
        f"lost=0 duplicated=0 "
        f"(chaos {chaos_seconds:.0f}s, all final {drained:.1f}s later)")
    assert len(sent) == parents
    assert not found.problems, "\n".join(found.problems[:20])
    assert found.runs == parents * (1 + CHILDREN)
    # A body runs again only if a kill fell between its execution and its checkpoint,
    # and each pool process executes one step body at a time; with buffered
    # checkpoints, a kill re-executes at most the steps it held unwritten.
    assert found.reexecutions <= pool_kills * (
        BUFFERED_AT_MOST if checkpoints == "buffered" else 1)
    assert not found.unexplained(pool.killed), "\n".join(found.unexplained(pool.killed))
