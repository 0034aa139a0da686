"""History that outlives Redis: every finished run reaches the history sink (from the
pump of a real worker), a sink that fails gets the same runs again, and ``get_run`` of a
run that expired from Redis reads it from the sink."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from support import wait_until

from example_project.history_sql import SqlSink
from fanout_celery import ConfigurationError, Event, Fanout
from fanout_celery.model.events import derived_id
from fanout_celery.sinks import JsonLinesSink

pytestmark = pytest.mark.integration


def declare(fanout: Fanout) -> None:
    @fanout.function("parent", event="app/parent")
    def parent(ctx: Any) -> int:
        n = ctx.step.run("count", lambda: 2)
        ctx.step.send_event("fan", [{"name": "app/child", "data": {"i": i}} for i in range(n)])
        return n

    @fanout.function("child", event="app/child", retries=0)
    def child(ctx: Any) -> int:
        if ctx.event.data["i"] == 1:
            raise ValueError("child 1 fails")
        return ctx.step.run("work", lambda: 7)

    @fanout.function("napper", event="app/nap")
    def napper(ctx: Any) -> None:
        ctx.step.sleep("nap", "1h")


def expire(fanout: Fanout, run_id: str) -> None:
    """What the retention does to a run: its keys leave Redis."""
    keys = fanout.store.keys
    fanout.store.client.delete(keys.run(run_id), keys.steps(run_id))


@pytest.mark.parametrize("kind", ["jsonl", "sql"])
def test_every_finished_run_reaches_the_sink_and_reads_back_after_it_expired(
        app: Any, worker: Any, tmp_path: Path, kind: str) -> None:
    sink = JsonLinesSink(tmp_path / "runs.jsonl") if kind == "jsonl" else \
        SqlSink(str(tmp_path / "runs.sqlite3"))
    app.conf.fanout_history_sink = sink
    fanout = Fanout(app)
    declare(fanout)
    with worker(app):
        [event_id] = fanout.send(Event(name="app/parent"))
        parent = fanout.wait_for_run(derived_id("parent", event_id), 20)
        kids = [fanout.wait_for_run(derived_id("child", e), 20) for e in parent.steps[1].output]
        [nap] = fanout.send(Event(name="app/nap"))
        nap_id = derived_id("napper", nap)
        wait_until(lambda: fanout.get_run(nap_id).status == "sleeping")
        fanout.cancel(nap_id)  # a run cancelled while parked is archived too
        ids = [parent.id, *(k.id for k in kids), nap_id]
        wait_until(lambda: all(sink.get(rid) for rid in ids), 20)
    record = sink.get(parent.id)
    assert record["status"] == "completed" and record["output"] == 2
    assert sorted(record["children"]) == sorted(k.id for k in kids)
    assert [s["id"] for s in record["steps"]] == ["count", "fan"]
    assert sink.get(kids[1].id)["error"]["message"] == "child 1 fails"
    assert sink.get(nap_id)["status"] == "cancelled"
    assert fanout.store.claim_archive(2**62, 2**62, 100) == []  # all handed over

    expire(fanout, parent.id)
    again = fanout.get_run(parent.id)
    assert again is not None and again.archived
    assert (again.status, again.output, [s.id for s in again.steps]) == \
        ("completed", 2, ["count", "fan"])
    assert fanout.get_run(kids[0].id).archived is False  # still in Redis


def test_a_failing_sink_gets_the_same_runs_again(app: Any, worker: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[str] = []
    failures = [1]

    def hook(runs: list[dict[str, Any]]) -> None:
        if failures:
            failures.pop()
            raise ConnectionError("the archive database is down")
        received.extend(r["id"] for r in runs)

    app.conf.fanout_history_sink = hook
    fanout = Fanout(app)
    declare(fanout)
    monkeypatch.setattr("fanout_celery.engine.archive.RETRY_MS", 200)
    with worker(app):
        [event_id] = fanout.send(Event(name="app/nap"))
        run_id = derived_id("napper", event_id)
        wait_until(lambda: fanout.get_run(run_id).status == "sleeping")
        fanout.cancel(run_id)
        wait_until(lambda: run_id in received, 20)
    assert not failures and received.count(run_id) == 1


def test_a_sink_that_cannot_be_a_sink_is_refused(app: Any) -> None:
    from fanout_celery.model.history import CallableSink
    from fanout_celery.model.settings import Settings

    for bad, message in ((42, "must have a write"), ("nomodule", "package.module:name"),
                         ("no.such.module:x", "cannot be imported")):
        app.conf.fanout_history_sink = bad
        with pytest.raises(ConfigurationError, match=message):
            Settings.from_app(app)
    app.conf.fanout_history_sink = "json:dumps"  # an import path to a callable
    assert isinstance(Settings.from_app(app).history_sink, CallableSink)
