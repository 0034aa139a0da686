"""A run whose task message the broker lost before the run started is published again.

The Redis broker can lose a message: a worker takes it off the queue with ``BRPOP`` and
records it as unacknowledged only afterwards, so a Redis restart in between loses it.
Until the run starts, the pump keeps it covered and publishes it again after
``fanout_redispatch_seconds``, as it does for a timer it claimed.
"""

from __future__ import annotations

import pytest
import redis
from celery import Celery

from fanout_celery import Event, Fanout

pytestmark = pytest.mark.integration


def test_a_run_whose_message_was_lost_before_it_started_is_published_again(
        app: Celery, fanout: Fanout, worker, redis_client: redis.Redis) -> None:
    app.conf.fanout_redispatch_seconds = 1
    calls = []

    @fanout.function("lost-message", event="app/lost")
    def lost(ctx):
        return ctx.step.run("only", lambda: calls.append(1) or len(calls))

    [event_id] = fanout.send(Event(name="app/lost"))
    [run] = fanout.runs_for_event(event_id)
    assert redis_client.llen("celery") == 1
    redis_client.delete("celery")  # the broker loses the run's only message

    with worker(app):
        done = fanout.wait_for_run(run.id, timeout=15)

    assert done.status == "completed"
    assert calls == [1]
    # Started: no longer covered, so nothing publishes it again.
    assert fanout.store.indexes_of(run.id)["dispatch"] is None
