"""The Celery app of the Sentinel tests (``tests/test_sentinel.py``): fanout's state on a
Redis behind Sentinels (``FANOUT_TEST_STATE_URL``, ``FANOUT_TEST_STATE_OPTIONS`` as JSON),
the broker and the test's bookkeeping on the session's plain Redis.

Each step body appends a token ``<pid>-<ms>-<random>`` to ``sentinel:exec:<run>:<step>``;
after the step returns (its checkpoint acknowledged) the handler adds the token it got
to ``sentinel:acked:<run>:<step>``. A replay returns the same token: two tokens in one
``acked`` set mean a step whose checkpoint had been acknowledged ran again.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from fanout_celery import RetryPolicy

from .base import worker_app

app, fanout, r = worker_app(
    "sentinel_app",
    fanout_redis_url=os.environ["FANOUT_TEST_STATE_URL"],
    fanout_redis_options=json.loads(os.environ.get("FANOUT_TEST_STATE_OPTIONS", "{}")),
    fanout_lease_seconds=3,
)

STEPS = ("s1", "s2", "s3", "s4")


def body(run_id: str, step: str) -> str:
    token = f"{os.getpid()}-{int(time.time() * 1000)}-{uuid.uuid4().hex[:6]}"
    r.rpush(f"sentinel:exec:{run_id}:{step}", token)
    time.sleep(0.02)
    return token


@fanout.function("sentinel-steps", event="sentinel/go",
                 retries=RetryPolicy(max_retries=30, backoff=0.1, backoff_max=1.0,
                                     jitter=False))
def steps(ctx: Any) -> list[str]:
    out = []
    for step in STEPS:
        token = ctx.step.run(step, body, ctx.run_id, step)
        r.sadd(f"sentinel:acked:{ctx.run_id}:{step}", token)
        out.append(token)
    return out
