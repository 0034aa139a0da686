"""A process that declares no functions (a web app) still reaches every subscriber."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from celery import Celery
from procs import REPO_ROOT, wait_for

from fanout_celery import Fanout

pytestmark = pytest.mark.integration

SENDER = textwrap.dedent("""
    import sys

    from celery import Celery

    from fanout_celery import Event, Fanout

    app = Celery("web", broker=sys.argv[1])
    if len(sys.argv) > 2:  # the state is elsewhere (FANOUT_TEST_STATE=cluster)
        app.conf.fanout_redis_url = sys.argv[2]
    fanout = Fanout(app)
    assert not fanout.functions and not any(t.startswith("fanout.") for t in app.tasks)
    [event_id] = fanout.send(Event(name="app/order.created", data={"order_id": 7}))
    print(event_id)
""")


def test_a_sender_without_handlers_starts_every_subscribed_function(
        app: Celery, fanout: Fanout, worker, redis_url: str) -> None:
    @fanout.function("order-email", event="app/order.created")
    def email(ctx):
        return {"emailed": ctx.event.data["order_id"]}

    @fanout.function("order-invoice", event="app/order.created")
    def invoice(ctx):
        return {"invoiced": ctx.event.data["order_id"]}

    with worker(app):
        wait_for(lambda: {"order-email", "order-invoice"}
                 <= set(fanout.store.load_subscriptions()),
                 10, "the worker's pump to publish its subscriptions")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        state = [os.environ["FANOUT_TEST_STATE_URL"]] \
            if os.environ.get("FANOUT_TEST_STATE_URL") else []
        sender = subprocess.run([sys.executable, "-c", SENDER, redis_url, *state], cwd=REPO_ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
        assert sender.returncode == 0, sender.stderr
        event_id = sender.stdout.strip()
        runs = fanout.runs_for_event(event_id)
        assert sorted(r.function_id for r in runs) == ["order-email", "order-invoice"]
        done = {r.function_id: fanout.wait_for_run(r.id, timeout=20) for r in runs}

    assert {fid: (r.status, r.output, r.event_ids) for fid, r in done.items()} == {
        "order-email": ("completed", {"emailed": 7}, [event_id]),
        "order-invoice": ("completed", {"invoiced": 7}, [event_id]),
    }
