"""A deploy while a run is parked: the run sleeps on version 1 of its app module, wakes on
version 2 (real worker subprocesses, one after the other), and each step it completed
runs exactly once; ``ctx.step.patched`` sends it down the old path where it had gone past
a change, and a new run down the new one. What each kind of change does is in
``docs/guide/deploys.md``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery
from procs import wait_for, worker_process

from fanout_celery import Fanout
from fanout_celery.model.events import derived_id

pytestmark = pytest.mark.integration

APP = "tests.apps.deploy_app"


def counts(client: Any, run_id: str) -> dict[str, int]:
    prefix = f"deploy:{run_id}:"
    return {k[len(prefix):]: int(client.get(k)) for k in client.scan_iter(prefix + "*")}


def test_a_run_parked_across_a_deploy_runs_each_completed_step_once(
        redis_url: str, redis_client: Any) -> None:
    sender_app = Celery("deploy-sender", broker=redis_url, set_as_current=False)
    sender_app.conf.update(result_backend=None, task_default_queue="celery")
    sender = Fanout(sender_app)
    try:
        with worker_process(redis_url, app=APP, env={"FANOUT_TEST_DEPLOY_VERSION": "1"}):
            [old] = sender.send({"name": "deploy/start", "data": {"seconds": 3}})
            old_run = derived_id("deploy", old)
            wait_for(lambda: getattr(sender.get_run(old_run), "status", None) == "sleeping",
                     20, "the run to sleep on version 1")
        with worker_process(redis_url, app=APP, env={"FANOUT_TEST_DEPLOY_VERSION": "2"}):
            [new] = sender.send({"name": "deploy/start", "data": {"seconds": 0.1}})
            resumed = sender.wait_for_run(old_run, 30)
            fresh = sender.wait_for_run(derived_id("deploy", new), 30)
    finally:
        sender_app.close()

    assert resumed.status == "completed", resumed.error
    assert resumed.executions == 2  # parked on version 1, resumed on version 2
    ran = counts(redis_client, old_run)
    # Completed on version 1, replayed on version 2 (in another order, c before b): once.
    assert ran["a"] == ran["b"] == ran["c"] == ran["removed"] == ran["d"] == 1
    # A step added before completed ones runs, once, when the run reaches it.
    assert ran["added"] == 1
    # A renamed step is a new step: its body runs again under its new name.
    assert ran["d2"] == 1
    # patched: the run had gone past "b-v2" on version 1 (old path: b, replayed), and
    # reached "new-pricing" first on version 2 (new path).
    assert "b2" not in ran and ran.get("price-v1") is None and ran["price-v2"] == 1
    assert resumed.output["b"] == "b@v1" and resumed.output["price"] == "price-v2@v2"
    patches = {s.id: s.output for s in resumed.steps if s.kind == "patch"}
    assert patches == {"patched:b-v2": False, "patched:new-pricing": True}
    # The step removed by version 2 keeps its record; nothing reads it.
    assert "removed" in {s.id for s in resumed.steps}

    assert fresh.status == "completed"
    assert fresh.output["b"] == "b2@v2" and fresh.output["price"] == "price-v2@v2"
    assert counts(redis_client, fresh.id) == {"added": 1, "a": 1, "c": 1, "b2": 1, "d2": 1,
                                              "price-v2": 1}


EARLIER_NAMES = {"status", "output", "attempts", "started_at", "ended_at", "seq"}


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "earlier-format"])
def test_records_are_written_in_the_layout_the_setting_names(
        app: Celery, fanout: Fanout, worker: Any, state_client: Any, compact: bool) -> None:
    """During a rolling upgrade from 0.1 (``fanout_compact_records = False``), every
    run and step record is written in the layout that workers of 0.1 read: the run's
    static fields in "meta", its events in "events", steps under their full names."""
    app.conf.fanout_compact_records = compact
    fanout.reload_settings()

    @fanout.function("formats", event="app/formats")
    def formats(ctx: Any) -> int:
        a = ctx.step.run("a", lambda: 1)
        ctx.step.sleep("nap", 0.05)
        both = ctx.step.parallel("both", [lambda: a + 1, lambda: a + 2])
        return int(ctx.step.run("b", lambda: sum(both)))

    with worker(app):
        [event_id] = fanout.send({"name": "app/formats"})
        run_id = derived_id("formats", event_id)
        assert fanout.wait_for_run(run_id, 20).output == 5
    stored = state_client.hgetall(fanout.store.keys.steps(run_id))
    assert set(stored) >= {"a", "nap", "both", "both[0]", "both[1]", "b"}
    for key, raw in stored.items():
        names = set(json.loads(raw))
        if compact:
            assert not names & EARLIER_NAMES, (key, raw)
        else:
            assert "status" in names and names <= EARLIER_NAMES | {
                "kind", "wake_at", "branches", "branch"}, (key, raw)
    runs = [run_id, *(derived_id(run_id, "both", str(i)) for i in range(2))]  # + branches
    for rid in runs:
        fields = set(state_client.hkeys(fanout.store.keys.run(rid)))
        if compact:
            assert {"function", "queue"} <= fields and "meta" not in fields, fields
        else:
            assert {"meta", "events"} <= fields and "function" not in fields, fields
    listed = state_client.type(fanout.store.keys.event_runs(event_id))
    assert listed == ("hash" if compact else "set")
    # Read the same either way.
    run = fanout.get_run(run_id)
    assert [s.status for s in run.steps].count("completed") >= 5
    assert run.function_id == "formats" and run.events[0]["id"] == event_id
